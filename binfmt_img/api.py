"""The Python API for scripts: load an image (or an ELF core), walk its VMAs and threads,
read its memory, name code addresses, compare two images. docs/API.md shows it in use.

    from binfmt_img import api
    image = api.load("prog.img")
    for vma in image.vmas: print(hex(vma.start), hex(vma.end), vma.perms, vma.label)
    api.read(image, image.registers["rsp"], 64)
    print("\\n".join(api.diff(image, api.load("later.img")).summary()))

Everything here only reads: an Image is a picture of a process, and nothing in this module
needs a debugger.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from binfmt_img import report
from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file, symbols
from binfmt_img.formats.model import PAGE_SIZE, Image, PageRun, Thread, Vma, prot_text

__all__ = ["Image", "ImageDiff", "ImageError", "PageRun", "Thread", "Vma", "diff",
           "disassemble", "load", "pages", "perms", "read", "read_u64", "save", "symbol",
           "vma_at"]


def load(path: str, warn: Callable[[str], None] | None = None) -> Image:
    """An image file (v0 or v1) or an ELF core (the kernel's or gcore's), checked. A file
    that cannot be used raises ImageError with a one-line reason; a core's remarks (files
    changed since it was written) go to `warn`."""
    return image_file.load_any(path, warn=warn)


def save(path: str, image: Image, fmt: str = "v1") -> None:
    """Write `image` to `path` (atomically: a whole file or none), as v1 or v0."""
    image_file.save(path, image, fmt)


def vma_at(image: Image, addr: int) -> Vma | None:
    """The VMA holding `addr`, or None."""
    return next((vma for vma in image.vmas if vma.start <= addr < vma.end), None)


def perms(vma: Vma) -> str:
    """"r-x" and the like, as /proc/PID/maps shows a VMA's protection."""
    return prot_text(vma.prot)


def read(image: Image, addr: int, size: int) -> bytes:
    """`size` bytes of the process's memory at `addr`: stored pages, zero pages of anonymous
    memory the image left out, and pages of mapped files the image did not store (read
    from the file when it is the one the image mapped). ImageError names what is missing."""
    data = image.read(addr, size)
    if data is not None:
        return data
    out = bytearray()
    while len(out) < size:
        at = addr + len(out)
        found = report.read_code(image, at, min(size - len(out), PAGE_SIZE - at % PAGE_SIZE))
        if found is None or not found[0]:
            vma = vma_at(image, at)
            why = "no VMA holds it" if vma is None else (
                f"{vma.path} is gone or changed" if vma.path else "the page is not stored")
            raise ImageError(f"cannot read {size} bytes at {addr:#x}: {at:#x}: {why}")
        out += found[0]
    return bytes(out)


def read_u64(image: Image, addr: int) -> int:
    """The little-endian 64-bit word at `addr`."""
    return struct.unpack("<Q", read(image, addr, 8))[0]


def symbol(image: Image, addr: int) -> str | None:
    """"main+12" or "puts@plt" for a code address, from the symbols of the mapped ELF file
    (as it is on disk), or None. For many look-ups keep one symbols.Symbols(image)."""
    return symbols.Symbols(image).name(addr)


def disassemble(image: Image, addr: int, count: int = 8) -> list[str]:
    """`count` instructions at `addr`, GDB-like: "0x401136 <main+4>: call 0x401030 <puts@plt>"."""
    lines = report.disassemble(image, addr, count, symbols.Symbols(image))
    if lines is None:
        raise ImageError(f"no code at {addr:#x}: the page is neither stored nor in a file")
    return lines


def pages(image: Image) -> Iterator[tuple[int, bytes]]:
    """Every stored page as (address, 4096 bytes), in address order."""
    for addr, data in image.iter_pages():
        yield addr, bytes(data)


@dataclass
class ImageDiff:
    """What changed from image `a` to image `b`. Threads pair up by position (the main
    thread first); pages are compared where either image stores them."""

    registers: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)  # by tid
    threads_added: list[int] = field(default_factory=list)  # tids only in b
    threads_removed: list[int] = field(default_factory=list)  # tids only in a
    vmas_added: list[Vma] = field(default_factory=list)
    vmas_removed: list[Vma] = field(default_factory=list)
    vmas_changed: list[tuple[Vma, Vma]] = field(default_factory=list)  # same start
    pages_changed: list[int] = field(default_factory=list)  # addresses, contents differ
    mm: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any((self.registers, self.threads_added, self.threads_removed, self.vmas_added,
                    self.vmas_removed, self.vmas_changed, self.pages_changed, self.mm))

    def summary(self) -> list[str]:
        """The differences as lines of text; no lines when the images are alike."""
        lines = []
        for tid, changed in self.registers.items():
            lines.append(f"thread {tid}: " + ", ".join(
                f"{name} {old:#x} -> {new:#x}" for name, (old, new) in changed.items()))
        lines += [f"thread {tid} only in the second image" for tid in self.threads_added]
        lines += [f"thread {tid} only in the first image" for tid in self.threads_removed]
        lines += [f"VMA added: {_vma_text(v)}" for v in self.vmas_added]
        lines += [f"VMA removed: {_vma_text(v)}" for v in self.vmas_removed]
        lines += [f"VMA changed: {_vma_text(a)} -> {_vma_text(b)}" for a, b in self.vmas_changed]
        if self.pages_changed:
            lines.append(f"{report.plural(len(self.pages_changed), 'page')} changed: "
                         + _ranges(self.pages_changed))
        lines += [f"mm {name}: {old:#x} -> {new:#x}" for name, (old, new) in self.mm.items()]
        return lines


def diff(a: Image, b: Image) -> ImageDiff:
    """Registers, threads, VMAs, page contents and mm fields that differ from `a` to `b`."""
    result = ImageDiff()
    _diff_threads(a.threads, b.threads, result)
    _diff_vmas(a.vmas, b.vmas, result)
    result.pages_changed = _changed_pages(a, b)
    result.mm = {name: (a.mm[name], b.mm.get(name, 0)) for name in a.mm
                 if a.mm[name] != b.mm.get(name, 0)}
    return result


def _diff_threads(a: list[Thread], b: list[Thread], result: ImageDiff) -> None:
    for old, new in zip(a, b):
        names = [n for n in old.registers if n in new.registers]
        changed = {n: (old.registers[n], new.registers[n]) for n in names
                   if old.registers[n] != new.registers[n]}
        if changed:
            result.registers[new.tid] = changed
    result.threads_removed = [t.tid for t in a[len(b):]]
    result.threads_added = [t.tid for t in b[len(a):]]


def _diff_vmas(a: list[Vma], b: list[Vma], result: ImageDiff) -> None:
    before = {v.start: v for v in a}
    after = {v.start: v for v in b}
    for start, vma in after.items():
        old = before.get(start)
        if old is None:
            result.vmas_added.append(vma)
        elif _vma_key(old) != _vma_key(vma):
            result.vmas_changed.append((old, vma))
    result.vmas_removed = [v for start, v in before.items() if start not in after]


def _vma_key(vma: Vma) -> tuple:
    return (vma.end, vma.prot, vma.flags, vma.pgoff, vma.path, vma.name)


def _changed_pages(a: Image, b: Image) -> list[int]:
    """Pages stored in either image whose contents differ (a page one image lacks reads as
    the other image's zeros when it falls in anonymous memory there, else differs)."""
    addresses = sorted({addr for image in (a, b) for run in image.runs
                        for addr in range(run.vaddr, run.end, PAGE_SIZE)})
    return [addr for addr in addresses if a.page_at(addr) != b.page_at(addr)]


def _vma_text(vma: Vma) -> str:
    return f"{vma.start:#x}-{vma.end:#x} {perms(vma)} {vma.label}".rstrip()


def _ranges(addresses: list[int]) -> str:
    """Page addresses as "0x601000-0x603000, 0x7f0000000000" (ranges of consecutive pages)."""
    parts: list[list[int]] = []
    for addr in addresses:
        if parts and parts[-1][1] == addr:
            parts[-1][1] = addr + PAGE_SIZE
        else:
            parts.append([addr, addr + PAGE_SIZE])
    return ", ".join(f"{s:#x}" if e - s == PAGE_SIZE else f"{s:#x}-{e:#x}" for s, e in parts)
