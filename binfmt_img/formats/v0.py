"""The seed's layout ("v0"), read and written byte for byte; see docs/FORMAT.md."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

from construct import Array, Bytes, Const, Int16ul, Int32ul, Int64ul, Padding, Struct

from binfmt_img.errors import ImageError
from binfmt_img.formats.model import MM_FIELDS, PAGE_SIZE, Image, PageRun, Thread, Vma

MAGIC = 0xA75B8D43
VERSION = 0x00000100

Header = Struct("magic" / Const(MAGIC, Int32ul), "version" / Const(VERSION, Int32ul))

# The seed's pt_regs order, then bases, TLS and encoded selectors.
V0_GP_ORDER = ("r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8", "rax", "orig_rax",
               "rbx", "rcx", "rdx", "rsi", "rdi", "rip", "eflags", "rbp", "rsp")
V0_SEGMENT_ORDER = ("gs", "fs", "cs", "ss", "ds", "es")
Registers = Struct(
    "gp" / Array(len(V0_GP_ORDER), Int64ul),
    "gs_base" / Int64ul,
    "fs_base" / Int64ul,
    "tls" / Array(3, Int64ul),
    "segments" / Array(len(V0_SEGMENT_ORDER), Int16ul),
    Padding(4),
)
Mm = Struct("fields" / Array(len(MM_FIELDS), Int64ul), "exe_fd" / Int32ul, Padding(4))
VmaRecord = Struct(
    "prot" / Int32ul, "flags" / Int32ul, "pad" / Bytes(4), "fd" / Int32ul,
    "start" / Int64ul, "end" / Int64ul, "pgoff" / Int64ul,
)
assert Registers.sizeof() == 208 and Mm.sizeof() == 112 and VmaRecord.sizeof() == 40

PAGE_RECORD = 8 + PAGE_SIZE
GDT_ENTRY_TLS_MIN = 12
_VADDR = struct.Struct("<Q")


def decode_segment(code: int) -> int:
    """The seed's selector code to the selector the CPU uses."""
    fixed = {0: 0, 1: 0x23, 2: 0x2B, 3: 0x33, 4: 0x2B}
    if code in fixed:
        return fixed[code]
    if code & 0x4000 and not code & 0x8000:
        return ((GDT_ENTRY_TLS_MIN + (code & 0xFFF)) << 3) | 3
    if code & 0x8000 and not code & 0x4000:
        return ((code & 0xFFF) << 3) | 7
    raise ValueError(f"unknown segment code {code:#x}")


def encode_segment(selector: int) -> int:
    """A selector to the seed's code (0x2b, both user data segments, encodes as user64 ds)."""
    fixed = {0: 0, 0x23: 1, 0x33: 3, 0x2B: 4}
    if selector in fixed:
        return fixed[selector]
    index, rpl_ti = selector >> 3, selector & 7
    if rpl_ti == 3 and GDT_ENTRY_TLS_MIN <= index < GDT_ENTRY_TLS_MIN + 3:
        return 0x4000 | (index - GDT_ENTRY_TLS_MIN)
    if rpl_ti == 7:
        return 0x8000 | index
    raise ValueError(f"selector {selector:#x} has no v0 encoding")


def swap_halves(value: int) -> int:
    """v0 keeps a TLS descriptor with its two 32-bit halves swapped; the swap is its own inverse."""
    return ((value & 0xFFFFFFFF) << 32) | (value >> 32)


def _take(buf: memoryview, offset: int, size: int, what: str) -> memoryview:
    if offset + size > len(buf):
        raise ImageError(f"truncated {what}: needs {size} bytes, {len(buf) - offset} left",
                         offset)
    return buf[offset:offset + size]


def read(buf: memoryview) -> tuple[Image, dict[str, list[int]]]:
    """Parse a v0 image; returns it with the byte offset of each VMA and page run record."""
    Header.parse(_take(buf, 0, 8, "header"))  # the caller has checked magic and version
    regs = Registers.parse(_take(buf, 8, 208, "registers"))
    registers = dict(zip(V0_GP_ORDER, regs.gp))
    registers["fs_base"], registers["gs_base"] = regs.fs_base, regs.gs_base
    for name, code in zip(V0_SEGMENT_ORDER, regs.segments):
        try:
            registers[name] = decode_segment(code)
        except ValueError as error:
            raise ImageError(f"register {name}: {error}", 8 + 192) from None
    thread = Thread(registers=registers, tls=[swap_halves(v) for v in regs.tls])

    mm_rec = Mm.parse(_take(buf, 216, 112, "mm fields"))
    image = Image(format="v0", threads=[thread], mm=dict(zip(MM_FIELDS, mm_rec.fields)),
                  exe_fd=mm_rec.exe_fd, source=buf)

    offsets: dict[str, list[int]] = {"vmas": [], "runs": []}
    at = 328
    while True:
        rec = VmaRecord.parse(_take(buf, at, 40, "VMA record"))
        if rec.start == 0 and rec.end == 0:
            at += 40
            break
        image.vmas.append(Vma(start=rec.start, end=rec.end, prot=rec.prot, flags=rec.flags,
                              pgoff=rec.pgoff, fd=rec.fd))
        offsets["vmas"].append(at)
        at += 40

    runs: list[PageRun] = []
    end = len(buf)
    unpack = _VADDR.unpack_from
    run_start = run_count = run_offset = 0
    while True:
        if at + 8 > end:
            raise ImageError("truncated page list: no terminator", at)
        (vaddr,) = unpack(buf, at)
        if vaddr == 0:
            break
        if vaddr & (PAGE_SIZE - 1):
            raise ImageError(f"page address {vaddr:#x} is not page aligned", at)
        if at + PAGE_RECORD > end:
            raise ImageError(f"truncated page {vaddr:#x}: needs {PAGE_RECORD} bytes", at)
        if run_count and vaddr == run_start + run_count * PAGE_SIZE:
            run_count += 1
        else:
            if run_count:
                runs.append(PageRun(run_start, run_count, run_offset, PAGE_RECORD))
                offsets["runs"].append(run_offset - 8)
            run_start, run_count, run_offset = vaddr, 1, at + 8
        at += PAGE_RECORD
    if run_count:
        runs.append(PageRun(run_start, run_count, run_offset, PAGE_RECORD))
        offsets["runs"].append(run_offset - 8)
    if at + 8 != end:
        raise ImageError(f"{end - at - 8} bytes after the page terminator", at + 8)
    image.runs = runs
    return image, offsets


def write(out: BinaryIO, image: Image, pages: Iterable[tuple[int, memoryview | bytes]]) -> None:
    """Write `image` in the seed's layout; `pages` gives (vaddr, data) chunks of whole pages."""
    regs = image.registers
    try:
        segments = [encode_segment(regs.get(name, 0)) for name in V0_SEGMENT_ORDER]
    except ValueError as error:
        raise ImageError(f"cannot write v0: {error}") from None
    out.write(Header.build({}))
    out.write(Registers.build({
        "gp": [regs.get(name, 0) for name in V0_GP_ORDER],
        "gs_base": regs.get("gs_base", 0), "fs_base": regs.get("fs_base", 0),
        "tls": [swap_halves(v) for v in (list(image.main.tls) + [0, 0, 0])[:3]],
        "segments": segments,
    }))
    out.write(Mm.build({"fields": [image.mm.get(f, 0) for f in MM_FIELDS],
                        "exe_fd": image.exe_fd}))
    for vma in image.vmas:
        out.write(VmaRecord.build({"prot": vma.prot, "flags": vma.flags, "pad": bytes(4),
                                   "fd": vma.fd, "start": vma.start, "end": vma.end,
                                   "pgoff": vma.pgoff}))
    out.write(bytes(40))
    pack = _VADDR.pack
    for vaddr, data in pages:
        for at in range(0, len(data), PAGE_SIZE):
            out.write(pack(vaddr + at))
            out.write(data[at:at + PAGE_SIZE])
    out.write(bytes(8))
