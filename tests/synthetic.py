"""A small but realistic process image for the tests, in either on-disk version."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

from binfmt_img.formats import v0, v1
from binfmt_img.formats.model import (
    ALL_REGISTERS,
    MAP_ANONYMOUS,
    MAP_GROWSDOWN,
    MAP_PRIVATE,
    MAP_SHARED,
    MM_FIELDS,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    AltStack,
    FileIdentity,
    Image,
    SigAction,
    Thread,
    Vma,
    Xsave,
)

Pages = list[tuple[int, bytes]]

EXE = "/usr/bin/demo"
TEXT, DATA = 0x400000, 0x402000
HEAP, ANON = 0x600000, 0x7F0000000000
SHM = 0x7FFFF7FD0000
VDSO = 0x7FFFF7FC1000
STACK_START, STACK_END = 0x7FFFFFFDE000, 0x7FFFFFFFF000
RIP = 0x401020
TLS_SELECTOR = (12 << 3) | 3  # GDT TLS entry 0, as glibc never uses it but a program may

# push rbp; mov rbp, rsp; sub rsp, 0x10; mov [rbp-4], edi; xor eax, eax; mov rax, [rbp-8];
# leave; ret
CODE = bytes.fromhex("55 4889e5 4883ec10 897dfc 31c0 488b45f8 c9 c3")


def page(tag: int) -> bytes:
    """A page of recognisable, non-zero bytes."""
    return (f"page {tag:#x} ".encode() * (PAGE_SIZE // 8))[:PAGE_SIZE]


def code_page() -> bytes:
    offset = RIP - (RIP & ~(PAGE_SIZE - 1))
    body = bytearray(b"\xcc" * PAGE_SIZE)  # int3 around the code, as padding in .text
    body[offset:offset + len(CODE)] = CODE
    return bytes(body)


def registers(rip: int = RIP, rsp: int = 0x7FFFFFFFE3A8) -> dict[str, int]:
    regs = {name: 0x1000 + i for i, name in enumerate(ALL_REGISTERS)}
    regs.update(rip=rip, rsp=rsp, rbp=rsp + 0x30, eflags=0x246, orig_rax=0xFFFFFFFFFFFFFFFF,
                fs_base=0x7FFFF7D8A740, gs_base=0, cs=0x33, ss=0x2B, ds=0, es=0, fs=0,
                gs=TLS_SELECTOR)
    return regs


def mm() -> dict[str, int]:
    values = dict.fromkeys(MM_FIELDS, 0)
    values.update(flags=0x8D, start_code=TEXT, end_code=TEXT + 0x1F00, start_data=DATA,
                  end_data=DATA + 0x800, start_brk=HEAP, brk=HEAP + 0x4000,
                  start_stack=0x7FFFFFFFE3A0, arg_start=0x7FFFFFFFE6A0,
                  arg_end=0x7FFFFFFFE6B0, env_start=0x7FFFFFFFE6B0, env_end=0x7FFFFFFFEFE0)
    return values


def vmas(fmt: str) -> list[Vma]:
    """Text and data of the executable, heap, an anonymous area, a shared file, vdso, stack."""
    ident = FileIdentity(size=0x5000, mtime_ns=1_700_000_000_123_456_789, inode=131, device=0x803)
    rw, private_anon = PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
    areas = [
        Vma(TEXT, TEXT + 0x2000, PROT_READ | PROT_EXEC, MAP_PRIVATE, 0, EXE, None, ident),
        Vma(DATA, DATA + 0x1000, rw, MAP_PRIVATE, 2, EXE, None, ident),
        Vma(HEAP, HEAP + 0x4000, rw, private_anon, 0, None, "[heap]"),
        Vma(ANON, ANON + 0x4000, rw, private_anon),
        Vma(VDSO, VDSO + 0x2000, PROT_READ | PROT_EXEC, MAP_PRIVATE, 0, None, "[vdso]"),
        Vma(SHM, SHM + 0x1000, PROT_READ, MAP_SHARED, 0, "/dev/shm/demo", None),
        Vma(STACK_START, STACK_END, rw, private_anon | MAP_GROWSDOWN, 0, None, "[stack]"),
    ]
    if fmt == "v0":  # the seed keeps no names, paths or file identities
        for vma in areas:
            vma.path = vma.name = vma.file = None
    return areas


def pages() -> Pages:
    """Stored pages in address order; one zero heap page, and neighbours given as separate
    chunks so that the v1 writer has to merge them into one run."""
    return [
        (TEXT, page(TEXT)),
        (TEXT + PAGE_SIZE, code_page()),
        (DATA, page(DATA)),
        (HEAP, page(HEAP) + bytes(PAGE_SIZE) + page(HEAP + 0x2000)),
        (HEAP + 0x3000, page(HEAP + 0x3000)),
        (ANON, page(ANON)),
        (ANON + PAGE_SIZE, page(ANON + PAGE_SIZE)),
        (VDSO, page(VDSO)),
        (STACK_END - 2 * PAGE_SIZE, page(STACK_END - 2 * PAGE_SIZE) + page(STACK_END - 4096)),
    ]


def xsave() -> Xsave:
    """A standard-format XSAVE area with x87, SSE and AVX state (832 bytes)."""
    data = bytearray(832)
    data[0:2] = (0x037F).to_bytes(2, "little")  # FCW
    data[24:28] = (0x1F80).to_bytes(4, "little")  # MXCSR
    data[160:176] = bytes(range(1, 17))  # xmm0
    data[512:520] = (0x7).to_bytes(8, "little")  # XSTATE_BV
    data[576:592] = bytes(range(17, 33))  # ymm0 high half
    return Xsave(features=0x7, data=bytes(data))


def threads(fmt: str) -> list[Thread]:
    tls = [0x00CFF3000000FFFF, 0, 0x0040F5000000FFFF]
    main = Thread(tid=4242, registers=registers(), tls=tls)
    if fmt == "v0":
        return [main]
    main.xsave = xsave()
    main.sigmask = 1 << (10 - 1)  # SIGUSR1 blocked
    main.altstack = AltStack(sp=ANON + 0x2000, flags=0, size=0x2000)
    main.clear_child_tid = 0x7FFFF7D8AA10
    main.robust_list, main.robust_list_len = 0x7FFFF7D8AA20, 24
    worker = Thread(tid=4243, registers=registers(rip=RIP + 1, rsp=ANON + 0x3F00), tls=tls,
                    xsave=xsave())
    return [main, worker]


def sigactions() -> list[SigAction]:
    actions = [SigAction() for _ in range(64)]
    sa_restorer, sa_restart = 0x04000000, 0x10000000
    actions[2 - 1] = SigAction(TEXT + 0x1100, sa_restorer | sa_restart, TEXT + 0x1200, 1 << 14)
    actions[13 - 1] = SigAction(handler=1)  # SIGPIPE ignored
    return actions


def make_image(fmt: str = "v1") -> Image:
    """The model of the synthetic process, restricted to what `fmt` can hold."""
    image = Image(format=fmt, threads=threads(fmt), mm=mm(), vmas=vmas(fmt))
    if fmt == "v1":
        image.exe_path = EXE
        image.auxv = [(3, TEXT + 0x40), (6, PAGE_SIZE), (9, TEXT + 0x1000), (33, VDSO), (0, 0)]
        image.sigactions = sigactions()
    return image


def encode(image: Image, fmt: str, chunks: Pages | None = None) -> bytes:
    """The bytes of an image file, written in memory."""
    out = io.BytesIO()
    (v0 if fmt == "v0" else v1).write(out, image, pages() if chunks is None else chunks)
    return out.getvalue()


def image_bytes(fmt: str = "v1") -> bytes:
    return encode(make_image(fmt), fmt)


# --- editing v1 files at the byte level, keeping their checksums right ---------------------

V1_HEADER = struct.Struct("<IIII")  # magic, version, section count, table crc32
V1_ENTRY = struct.Struct("<IIQQ")  # type, crc32, offset, length


def sections(data: bytes) -> list[list[int]]:
    """The section table as [type, crc, offset, length] lists."""
    count = V1_HEADER.unpack_from(data)[2]
    return [list(V1_ENTRY.unpack_from(data, V1_HEADER.size + i * V1_ENTRY.size))
            for i in range(count)]


def with_table(data: bytes, table: list[list[int]]) -> bytes:
    """`data` with its section table (same number of entries) and table crc replaced."""
    packed = b"".join(V1_ENTRY.pack(*entry) for entry in table)
    magic, version, count, _ = V1_HEADER.unpack_from(data)
    assert count == len(table)
    header = V1_HEADER.pack(magic, version, count, zlib.crc32(packed))
    return header + packed + data[len(header) + len(packed):]


def section(data: bytes, kind: int) -> tuple[int, bytes]:
    """The first section of type `kind`: its offset and payload."""
    entry = next(e for e in sections(data) if e[0] == kind)
    return entry[2], data[entry[2]:entry[2] + entry[3]]


def patch_section(data: bytes, kind: int, edit: Callable[[bytes], bytes]) -> bytes:
    """Replace the payload of the first section of type `kind` and fix the checksums; a
    payload that changes length moves to the end of the file."""
    table = sections(data)
    entry = next(e for e in table if e[0] == kind)
    old = data[entry[2]:entry[2] + entry[3]]
    new = edit(old)
    if len(new) == len(old):
        data = data[:entry[2]] + new + data[entry[2] + len(new):]
    else:
        entry[2] = len(data)
        data += new
    entry[1], entry[3] = zlib.crc32(new), len(new)
    return with_table(data, table)


def add_section(data: bytes, kind: int, payload: bytes) -> bytes:
    """Append a section of type `kind`; everything after the table moves one page down so that
    page data stays page aligned, and the page runs follow it."""
    table = sections(data)
    table_end = V1_HEADER.size + len(table) * V1_ENTRY.size
    shifted = bytes(PAGE_SIZE - V1_ENTRY.size) + data[table_end:]
    for entry in table:
        entry[2] += PAGE_SIZE
    table.append([kind, zlib.crc32(payload), table_end + V1_ENTRY.size + len(shifted),
                  len(payload)])
    packed = b"".join(V1_ENTRY.pack(*entry) for entry in table)
    magic, version, _, _ = V1_HEADER.unpack_from(data)
    header = V1_HEADER.pack(magic, version, len(table), zlib.crc32(packed))
    moved = header + packed + shifted + payload

    def move_runs(runs: bytes) -> bytes:
        records = bytearray(runs)
        for at in range(4, len(records), 32):
            struct.pack_into("<Q", records, at + 16,
                             struct.unpack_from("<Q", records, at + 16)[0] + PAGE_SIZE)
        return bytes(records)
    return patch_section(moved, v1.SECTION_PAGE_RUNS, move_runs)
