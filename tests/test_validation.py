"""Each class of damage is refused with its own message and the byte offset of the culprit."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

import pytest
import synthetic

from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file, v1
from binfmt_img.formats.model import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, Image, Vma

V0_VMAS = 8 + 208 + 112  # where the seed's VMA list starts
V0_PAGES = V0_VMAS + 40 * (len(synthetic.vmas("v0")) + 1)
RW = 3


def refuse(data: bytes) -> ImageError:
    with pytest.raises(ImageError) as caught:
        image_file.parse(memoryview(data))
    return caught.value


def with_vma(fmt: str, index: int, vma: Vma) -> bytes:
    """The synthetic image with VMA `index` replaced (its pages stay where they were)."""
    image = synthetic.make_image(fmt)
    image.vmas[index] = vma
    return synthetic.encode(image, fmt)


def v1_vma_offset(data: bytes, index: int) -> int:
    at, payload = synthetic.section(data, v1.SECTION_VMAS)
    offset = 4
    for _ in range(index):
        path_len = struct.unpack_from("<I", payload, offset + 65)[0]
        name_len = struct.unpack_from("<I", payload, offset + 69 + path_len)[0]
        offset += 73 + path_len + name_len
    return at + offset


def vma_offset(fmt: str, data: bytes, index: int) -> int:
    return V0_VMAS + 40 * index if fmt == "v0" else v1_vma_offset(data, index)


def v1_run_offset(data: bytes, index: int) -> int:
    return synthetic.section(data, v1.SECTION_PAGE_RUNS)[0] + 4 + 32 * index


# --- header -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["v0", "v1"])
def test_bad_magic(fmt: str) -> None:
    error = refuse(b"\x7fELF" + synthetic.image_bytes(fmt)[4:])
    assert error.offset == 0 and "not an image: magic 0x464c457f" in str(error)


def test_unknown_version() -> None:
    error = refuse(struct.pack("<II", 0xA75B8D43, 0x300) + bytes(400))
    assert error.offset == 4 and "unknown image version 0x300" in str(error)


# --- truncation -----------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "size", "pattern", "offset"), [
    ("v0", 0, r"truncated header", 0),
    ("v0", 6, r"truncated header", 0),
    ("v1", 12, r"truncated header", 0),
    ("v0", 8 + 100, r"truncated registers", 8),
    ("v0", 8 + 208 + 50, r"truncated mm fields", 216),
    ("v0", V0_VMAS + 40 * 2 + 10, r"truncated VMA record", V0_VMAS + 80),
    ("v0", V0_PAGES + 8 + 100, r"truncated page 0x400000", V0_PAGES),
    ("v0", V0_PAGES + 4, r"truncated page list", V0_PAGES),
    ("v1", 16 + 24 * 3, r"truncated section table", 16),
])
def test_truncation(fmt: str, size: int, pattern: str, offset: int) -> None:
    error = refuse(synthetic.image_bytes(fmt)[:size])
    assert re.search(pattern, str(error)) and error.offset == offset, str(error)


def test_truncated_v0_page_list() -> None:
    data = synthetic.image_bytes("v0")
    error = refuse(data[:-8])  # all pages, no terminator
    assert "no terminator" in str(error) and error.offset == len(data) - 8


def test_truncated_v1_section() -> None:
    data = synthetic.image_bytes("v1")
    runs_at = synthetic.section(data, v1.SECTION_PAGE_RUNS)[0]
    error = refuse(data[:-10])
    assert "truncated page runs section" in str(error) and error.offset == runs_at
    mm_at = synthetic.section(data, v1.SECTION_MM)[0]
    error = refuse(data[:mm_at + 20])
    assert "truncated mm section" in str(error) and error.offset == mm_at


def test_v1_pages_overrun_the_file() -> None:
    data = synthetic.image_bytes("v1")

    def longer(runs: bytes) -> bytes:  # the last run claims 1000 pages
        return runs[:-32 + 8] + struct.pack("<Q", 1000) + runs[-32 + 16:]
    error = refuse(synthetic.patch_section(data, v1.SECTION_PAGE_RUNS, longer))
    assert re.search(r"page run 0x7fffffffd000: 1000 pages at 0x\w+ overrun the file",
                     str(error))
    assert error.offset == v1_run_offset(data, 5)


def test_v1_unaligned_page_data() -> None:
    data = synthetic.image_bytes("v1")

    def shifted(runs: bytes) -> bytes:
        offset = struct.unpack_from("<Q", runs, 4 + 16)[0]
        return runs[:4 + 16] + struct.pack("<Q", offset + 8) + runs[4 + 24:]
    error = refuse(synthetic.patch_section(data, v1.SECTION_PAGE_RUNS, shifted))
    assert "data offset" in str(error) and "not page aligned" in str(error)
    assert error.offset == v1_run_offset(data, 0)


# --- VMAs -----------------------------------------------------------------------------------

ANON = MAP_PRIVATE | MAP_ANONYMOUS
TOP = 0x00FFFFFFFFFFF000


@pytest.mark.parametrize("fmt", ["v0", "v1"])
@pytest.mark.parametrize(("index", "vma", "pattern"), [
    (3, Vma(synthetic.ANON + 8, synthetic.ANON + 0x4000, RW, ANON), r"is not page aligned"),
    (3, Vma(synthetic.ANON, synthetic.ANON + 0x4100, RW, ANON), r"is not page aligned"),
    (3, Vma(0x601000, synthetic.ANON + 0x4000, RW, ANON), r"overlaps VMA 0x600000-0x604000"),
    (3, Vma(0x5000, 0x5000, RW, ANON), r"0x5000-0x5000 is empty"),
    (3, Vma(0x9000, 0x5000, RW, ANON), r"is inverted \(end before start\)"),
    (3, Vma(TOP, TOP + 0x2000, RW, ANON), r"outside the canonical user address range"),
    (3, Vma(0xFFFF800000000000, 0xFFFF800000001000, RW, ANON), r"outside the canonical user"),
])
def test_bad_vma(fmt: str, index: int, vma: Vma, pattern: str) -> None:
    data = with_vma(fmt, index, vma)
    error = refuse(data)
    assert re.search(r"^VMA .*" + pattern, str(error)), str(error)
    assert error.offset == vma_offset(fmt, data, index)


@pytest.mark.parametrize("fmt", ["v0", "v1"])
def test_vsyscall_is_the_one_vma_above_user_space(fmt: str) -> None:
    image = synthetic.make_image(fmt)
    image.vmas.append(Vma(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, 4, MAP_PRIVATE, 0, None,
                          "[vsyscall]" if fmt == "v1" else None))
    assert len(image_file.parse(memoryview(synthetic.encode(image, fmt))).vmas) == 8


# --- pages ----------------------------------------------------------------------------------

def pages_with(extra: list[tuple[int, bytes]]) -> synthetic.Pages:
    return synthetic.pages() + extra


def test_v0_page_unaligned() -> None:
    data = synthetic.encode(synthetic.make_image("v0"), "v0",
                            pages_with([(synthetic.ANON + 0x3008, synthetic.page(7))]))
    error = refuse(data)
    assert "page address 0x7f0000003008 is not page aligned" in str(error)
    assert error.offset == len(data) - 8 - 8 - PAGE_SIZE


def test_v1_page_unaligned() -> None:
    data = synthetic.image_bytes("v1")

    def unaligned(runs: bytes) -> bytes:
        vaddr = struct.unpack_from("<Q", runs, 4 + 32 * 3)[0]
        return runs[:4 + 32 * 3] + struct.pack("<Q", vaddr + 0x10) + runs[4 + 32 * 3 + 8:]
    error = refuse(synthetic.patch_section(data, v1.SECTION_PAGE_RUNS, unaligned))
    assert re.search(r"^page 0x7f0000000010 is not page aligned", str(error))
    assert error.offset == v1_run_offset(data, 3)


@pytest.mark.parametrize("fmt", ["v0", "v1"])
def test_page_duplicated(fmt: str) -> None:
    extra = [(synthetic.ANON + PAGE_SIZE, synthetic.page(8))]
    data = synthetic.encode(synthetic.make_image(fmt), fmt, pages_with(extra))
    error = refuse(data)
    assert re.search(r"^page 0x7f0000001000 is stored twice", str(error)), str(error)
    if fmt == "v0":
        assert error.offset == len(data) - 8 - 8 - PAGE_SIZE
    else:
        assert error.offset == v1_run_offset(data, 6)


@pytest.mark.parametrize("fmt", ["v0", "v1"])
@pytest.mark.parametrize("vaddr", [0x1000, synthetic.ANON + 0x4000, synthetic.STACK_END])
def test_page_outside_every_vma(fmt: str, vaddr: int) -> None:
    data = synthetic.encode(synthetic.make_image(fmt), fmt, [(vaddr, synthetic.page(9))])
    error = refuse(data)
    assert re.search(rf"^page {vaddr:#x} lies outside every VMA", str(error)), str(error)
    assert error.offset == (V0_PAGES if fmt == "v0" else v1_run_offset(data, 0))


def test_run_across_a_gap_between_vmas() -> None:
    """A run may span adjacent VMAs (text + data) but not a hole after them."""
    chunk = synthetic.page(1) * 4  # 0x400000..0x404000: the last page is in no VMA
    data = synthetic.encode(synthetic.make_image("v1"), "v1", [(synthetic.TEXT, chunk)])
    error = refuse(data)
    assert "page 0x403000 lies outside every VMA" in str(error)


def test_page_in_shared_file_mapping() -> None:
    data = synthetic.encode(synthetic.make_image("v1"), "v1",
                            pages_with([(synthetic.SHM, synthetic.page(10))]))
    error = refuse(data)
    assert re.search(r"^page 0x7ffff7fd0000 would land in shared file mapping /dev/shm/demo",
                     str(error)), str(error)
    assert error.offset == v1_run_offset(data, 6)  # the run table follows the pages' order


def test_page_in_shared_anonymous_mapping_is_fine() -> None:
    image = synthetic.make_image("v1")
    image.vmas[5] = Vma(synthetic.SHM, synthetic.SHM + PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    data = synthetic.encode(image, "v1", pages_with([(synthetic.SHM, synthetic.page(11))]))
    assert image_file.parse(memoryview(data)).page_count == 12


# --- v1 metadata ------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "name"), [(v1.SECTION_MM, "mm"), (v1.SECTION_VMAS, "vmas"),
                                            (v1.SECTION_THREAD, "thread"),
                                            (v1.SECTION_SIGNALS, "signals"),
                                            (v1.SECTION_PAGE_RUNS, "page runs")])
def test_v1_metadata_checksum(kind: int, name: str) -> None:
    data = bytearray(synthetic.image_bytes("v1"))
    at, _ = synthetic.section(bytes(data), kind)
    data[at + 5] ^= 0x40
    error = refuse(bytes(data))
    assert f"checksum mismatch in {name} section" in str(error) and error.offset == at


def test_v1_section_table_checksum() -> None:
    data = bytearray(synthetic.image_bytes("v1"))
    data[16 + 24 + 9] ^= 1
    error = refuse(bytes(data))
    assert "checksum mismatch in section table" in str(error) and error.offset == 16


def test_v1_malformed_section() -> None:
    data = synthetic.patch_section(synthetic.image_bytes("v1"), v1.SECTION_MM,
                                   lambda mm: mm[:-3])
    error = refuse(data)
    assert "malformed mm section" in str(error)
    assert error.offset == synthetic.section(data, v1.SECTION_MM)[0]


@pytest.mark.parametrize(("kind", "name"), [(v1.SECTION_MM, "mm"), (v1.SECTION_VMAS, "vmas"),
                                            (v1.SECTION_THREAD, "thread"),
                                            (v1.SECTION_PAGE_RUNS, "page runs")])
def test_v1_required_section_missing(kind: int, name: str) -> None:
    data = synthetic.image_bytes("v1")
    table = synthetic.sections(data)
    for entry in table:
        if entry[0] == kind:
            entry[0] = 0x4242
    error = refuse(synthetic.with_table(data, table))
    assert f"no {name} section" in str(error)


def test_v1_second_mm_section() -> None:
    data = synthetic.image_bytes("v1")
    table = synthetic.sections(data)
    table[4][0] = v1.SECTION_MM  # signals claims to be mm
    error = refuse(synthetic.with_table(data, table))
    assert "second mm section" in str(error) and error.offset == 16 + 4 * 24


def test_v0_unknown_segment_code() -> None:
    data = bytearray(synthetic.image_bytes("v0"))
    struct.pack_into("<H", data, 8 + 192 + 4, 7)  # cs
    error = refuse(bytes(data))
    assert "register cs: unknown segment code 0x7" in str(error) and error.offset == 200


def test_v0_bytes_after_the_terminator() -> None:
    data = synthetic.image_bytes("v0")
    error = refuse(data + bytes(3))
    assert "3 bytes after the page terminator" in str(error) and error.offset == len(data)


def test_messages_differ_per_class() -> None:
    """Every kind of damage above names itself differently (numbers aside)."""
    damaged: list[Callable[[], bytes]] = [
        lambda: b"\x7fELF" + bytes(100),
        lambda: struct.pack("<II", 0xA75B8D43, 0x300),
        lambda: synthetic.image_bytes("v0")[:100],
        lambda: synthetic.image_bytes("v0")[:V0_VMAS + 20],
        lambda: with_vma("v1", 3, Vma(8, 0x4000, RW, ANON)),
        lambda: with_vma("v1", 3, Vma(0x601000, 0x603000, RW, ANON)),
        lambda: with_vma("v1", 3, Vma(0x5000, 0x5000, RW, ANON)),
        lambda: with_vma("v1", 3, Vma(0x9000, 0x5000, RW, ANON)),
        lambda: with_vma("v1", 3, Vma(TOP, TOP + 0x2000, RW, ANON)),
        lambda: synthetic.encode(synthetic.make_image("v1"), "v1", pages_with(
            [(synthetic.ANON, synthetic.page(1))])),
        lambda: synthetic.encode(synthetic.make_image("v1"), "v1", [(0x1000, synthetic.page(1))]),
        lambda: synthetic.encode(synthetic.make_image("v1"), "v1", pages_with(
            [(synthetic.SHM, synthetic.page(1))])),
    ]
    kinds = []
    for make in damaged:
        message = str(refuse(make()))
        kinds.append(re.sub(r"0x[0-9a-f]+|\d+", "N", message.split(" (at byte")[0]))
    assert len(set(kinds)) == len(kinds), kinds


def test_an_image_without_threads_is_refused() -> None:
    with pytest.raises(ImageError, match="no thread"):
        image_file.parse(memoryview(synthetic.encode(Image(threads=[]), "v1", [])))
