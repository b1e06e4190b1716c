"""The seed's layout: decoded as the seed's handler does, and written back byte for byte."""

from __future__ import annotations

import struct

import pytest
import synthetic

from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file, v0
from binfmt_img.formats.model import MM_FIELDS, PAGE_SIZE, Image

# The seed's binfmt_regs_image field order (pt_regs names).
SEED_GP = ("r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8", "ax", "orig_ax", "bx", "cx",
           "dx", "si", "di", "ip", "flags", "bp", "sp")
GDB_NAME = {"ax": "rax", "orig_ax": "orig_rax", "bx": "rbx", "cx": "rcx", "dx": "rdx",
            "si": "rsi", "di": "rdi", "ip": "rip", "flags": "eflags", "bp": "rbp", "sp": "rsp"}


def seed_decode_segment(code: int) -> int:
    """decode_segment() of the seed's handler, transcribed (u16 result)."""
    fixed = {0: 0, 3: 0x33, 4: 0x2B, 1: 0x23, 2: 0x2B}
    if code in fixed:
        return fixed[code]
    if code & 0x4000:
        return (((12 + (code & ~0x4000)) << 3) | 3) & 0xFFFF
    if code & 0x8000:
        return (((code & ~0x8000) << 3) | 7) & 0xFFFF
    raise AssertionError("BUG()")


def pack_v0(gp: list[int], gs: int, fs: int, tls: list[int], segments: list[int],
            mm: list[int], exe_fd: int, vmas: list[tuple[int, ...]],
            pages: list[tuple[int, bytes]]) -> bytes:
    """A v0 image packed with struct straight from docs/FORMAT-v0 (no project code)."""
    out = struct.pack("<II", 0xA75B8D43, 0x100)
    out += struct.pack("<19Q", *gp) + struct.pack("<QQ3Q6H4x", gs, fs, *tls, *segments)
    out += struct.pack("<13QI4x", *mm, exe_fd)
    for prot, flags, fd, start, end, pgoff in vmas:
        out += struct.pack("<IIIIQQQ", prot, flags, 0, fd, start, end, pgoff)
    out += bytes(40)
    for vaddr, data in pages:
        out += struct.pack("<Q", vaddr) + data
    return out + bytes(8)


IN_ORDER = [(0x400000, synthetic.page(1)), (0x401000, synthetic.code_page()),
            (0x600000, bytes(PAGE_SIZE)), (0x602000, synthetic.page(2))]


def hand_built(segments: list[int], tls: list[int] | None = None,
               pages: list[tuple[int, bytes]] = IN_ORDER) -> tuple[bytes, dict]:
    fields = {
        "gp": [0x1111_0000 + i for i in range(19)], "gs": 0x7F00_0000_1000,
        "fs": 0x7F00_0000_2000,
        "tls": tls or [0x0000FFFF_00CFF300, 0x12345678_9ABCDEF0, 0],
        "segments": segments, "mm": [0x100 * (i + 1) for i in range(13)], "exe_fd": 7,
        "vmas": [(5, 0x2, 0, 0x400000, 0x402000, 0), (3, 0x22, 9, 0x600000, 0x603000, 0x10)],
        "pages": pages,
    }
    return pack_v0(**fields), fields


SEGMENT_SETS = [  # gsindex fsindex cs ss ds es
    [0, 0, 3, 4, 0, 0],
    [0x4000, 0, 3, 4, 4, 4],
    [0, 0x4002, 1, 4, 0, 0],
    [0x8000, 0x8005, 3, 4, 0, 0x4001],
    [0x8FFF, 0x4000, 1, 4, 4, 0],
]


@pytest.mark.parametrize("segments", SEGMENT_SETS)
def test_hand_built_decodes_as_the_seed(segments: list[int]) -> None:
    data, f = hand_built(segments, pages=[IN_ORDER[i] for i in (3, 0, 2, 1)])  # any order
    image = image_file.parse(memoryview(data))
    regs = image.registers
    for name, value in zip(SEED_GP, f["gp"]):
        assert regs[GDB_NAME.get(name, name)] == value, name
    assert regs["gs_base"] == f["gs"] and regs["fs_base"] == f["fs"]  # gs @152, fs @160
    for name, code in zip(("gs", "fs", "cs", "ss", "ds", "es"), segments):
        assert regs[name] == seed_decode_segment(code), name
    for stored, descriptor in zip(f["tls"], image.main.tls):
        # decode_tls: d->a (the low word) = val >> 32, d->b = val & 0xffffffff
        assert descriptor & 0xFFFFFFFF == stored >> 32
        assert descriptor >> 32 == stored & 0xFFFFFFFF
    assert image.mm == dict(zip(MM_FIELDS, f["mm"])) and image.exe_fd == 7
    got = [(v.prot, v.flags, v.fd, v.start, v.end, v.pgoff) for v in image.vmas]
    assert got == f["vmas"]
    for vaddr, page in f["pages"]:
        assert image.read(vaddr, PAGE_SIZE) == page
    assert image.page_count == 4 and all(run.stride == 8 + PAGE_SIZE for run in image.runs)


@pytest.mark.parametrize("segments", SEGMENT_SETS)
def test_hand_built_round_trips_byte_exact(segments: list[int], tmp_path) -> None:
    """Pages in address order, as the dumper writes them (the model keeps no other order)."""
    data, _ = hand_built(segments, tls=[0xFFFFFFFF_00000001, 0x1, 0x80000000_7FFFFFFF])
    path = str(tmp_path / "again.img")
    image_file.save(path, image_file.parse(memoryview(data)), "v0")
    with open(path, "rb") as f:
        assert f.read() == data


def test_synthetic_round_trips_byte_exact(tmp_path) -> None:
    data = synthetic.image_bytes("v0")
    path = str(tmp_path / "a.img")
    image_file.save(path, image_file.parse(memoryview(data)), "v0")
    with open(path, "rb") as f:
        again = f.read()
    assert again == data
    assert synthetic.encode(image_file.load(path), "v0", synthetic.pages()) == data


def test_zero_pages_are_stored() -> None:
    image = image_file.parse(memoryview(synthetic.image_bytes("v0")))
    assert image.page_count == sum(len(data) for _, data in synthetic.pages()) // PAGE_SIZE
    assert image.read(synthetic.HEAP + PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)


@pytest.mark.parametrize(("code", "selector"), [
    (0, 0), (1, 0x23), (2, 0x2B), (3, 0x33), (4, 0x2B),
    (0x4000, 0x63), (0x4001, 0x6B), (0x4002, 0x73), (0x8000, 0x7), (0x8003, 0x1F),
])
def test_segment_codes(code: int, selector: int) -> None:
    assert v0.decode_segment(code) == selector == seed_decode_segment(code)


def test_user_data_selector_always_encodes_as_user64_ds() -> None:
    """0x2b is both __USER32_DS and __USER_DS on x86-64; code 2 comes back as 4."""
    assert v0.encode_segment(0x2B) == 4
    data, _ = hand_built([0, 0, 3, 2, 2, 0])
    again = synthetic.encode(image_file.parse(memoryview(data)), "v0", IN_ORDER)
    segments = struct.unpack_from("<6H", again, 8 + 192)
    assert segments == (0, 0, 3, 4, 4, 0)


def test_tls_swap_is_its_own_inverse() -> None:
    for value in (0, 1, 0xFFFFFFFF, 0x12345678_9ABCDEF0, (1 << 64) - 1):
        assert v0.swap_halves(v0.swap_halves(value)) == value


def test_selector_without_v0_code_is_refused() -> None:
    image = synthetic.make_image("v0")
    image.registers["fs"] = 0x10  # kernel data segment: nothing in the seed encodes it
    with pytest.raises(ImageError, match="no v0 encoding"):
        synthetic.encode(image, "v0")


def test_v1_only_fields_are_dropped() -> None:
    image = synthetic.make_image("v1")
    parsed = image_file.parse(memoryview(synthetic.encode(image, "v0")))
    assert parsed.format == "v0" and len(parsed.threads) == 1
    assert all(v.path is None and v.name is None and v.file is None for v in parsed.vmas)
    assert parsed.exe_path is None and parsed.auxv == [] and parsed.sigactions == []
    assert parsed.registers == image.registers and parsed.main.tls == image.main.tls


def test_record_sizes_match_the_seed() -> None:
    assert (v0.Registers.sizeof(), v0.Mm.sizeof(), v0.VmaRecord.sizeof()) == (208, 112, 40)
    empty = synthetic.encode(Image(format="v0", threads=synthetic.threads("v0")), "v0", [])
    assert len(empty) == 8 + 208 + 112 + 40 + 8
