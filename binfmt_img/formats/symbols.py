"""Names for code addresses of an image, from the ELF symbol tables of its mapped files as
they are on disk (img-info's disassembly: `call 0x555555555030 <puts@plt>`)."""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from binfmt_img.formats.elfcore import ELF_DAMAGE  # a file pyelftools cannot read has no names
from binfmt_img.formats.model import PAGE_SIZE, Image, Vma
from binfmt_img.safeio import open_regular_file

PLT_SECTIONS = (".plt", ".plt.sec", ".plt.got")
JMP_RIP = b"\xff\x25"  # jmp *disp32(%rip): a PLT stub's jump through its GOT slot
SYMBOL_TYPES = ("STT_FUNC", "STT_OBJECT", "STT_GNU_IFUNC")


@dataclass
class _Table:
    """One file's symbols at their link-time addresses, sorted by address."""

    starts: list[int] = field(default_factory=list)
    entries: list[tuple[int, int, str]] = field(default_factory=list)  # start, size, name

    def add_all(self, found: list[tuple[int, int, str]]) -> None:
        self.entries = sorted(set(found))
        self.starts = [start for start, _, _ in self.entries]

    def name(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        while i >= 0:
            start, size, name = self.entries[i]
            if addr == start or addr < start + size:
                return name if addr == start else f"{name}+{addr - start}"
            if i > 0 and self.starts[i - 1] == start:
                i -= 1  # another symbol at the same address may be the sized one
                continue
            return None
        return None


class Symbols:
    """Address to "name+offset" over an image's mapped ELF files, each read when first
    needed; files gone, changed since the image or not ELF give no names."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.tables: dict[str, tuple[int, _Table] | None] = {}

    def name(self, addr: int) -> str | None:
        vma = next((v for v in self.image.vmas if v.start <= addr < v.end and v.path), None)
        if vma is None or vma.path is None:
            return None
        if vma.path not in self.tables:
            self.tables[vma.path] = self._load(vma.path)
        loaded = self.tables[vma.path]
        if loaded is None:
            return None
        bias, table = loaded
        return table.name(addr - bias)

    def _load(self, path: str) -> tuple[int, _Table] | None:
        mapped = [v for v in self.image.vmas if v.path == path]
        if not unchanged(path, mapped[0]):
            return None
        try:
            with open_regular_file(path) as f:
                elf = ELFFile(f)
                bias = _bias(elf, mapped)
                if bias is None:
                    return None
                table = _Table()
                table.add_all(_symbols(elf) + _plt_stubs(elf))
                return bias, table
        except ELF_DAMAGE:
            return None


def unchanged(path: str, vma: Vma) -> bool:
    """The file is there and, where the image recorded its identity, is the same one."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return vma.file is None or not vma.file.changes(st)


def _bias(elf: ELFFile, mapped: list[Vma]) -> int | None:
    """Where the file was loaded: memory address minus link-time address, from a VMA's file
    offset and the PT_LOAD segment holding it."""
    loads = [s.header for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    for vma in mapped:
        offset = vma.pgoff * PAGE_SIZE
        for h in loads:
            if h["p_offset"] & ~(PAGE_SIZE - 1) <= offset < h["p_offset"] + max(h["p_filesz"], 1):
                return vma.start - offset - (h["p_vaddr"] - h["p_offset"])
    return None


def _symbols(elf: ELFFile) -> list[tuple[int, int, str]]:
    found = []
    for section in elf.iter_sections():
        if not isinstance(section, SymbolTableSection):
            continue
        for symbol in section.iter_symbols():
            if (symbol["st_info"]["type"] in SYMBOL_TYPES and symbol["st_value"]
                    and symbol["st_shndx"] != "SHN_UNDEF" and symbol.name):
                found.append((symbol["st_value"], symbol["st_size"], symbol.name))
    return found


def _plt_stubs(elf: ELFFile) -> list[tuple[int, int, str]]:
    """"name@plt" for each PLT stub (lazy .plt, .plt.sec of IBT builds, .plt.got): the stub
    jumps through a GOT slot, and a dynamic relocation names the symbol that slot holds."""
    slots = _got_slots(elf)
    found = []
    for name in PLT_SECTIONS:
        section = elf.get_section_by_name(name)
        if section is None:
            continue
        size = section["sh_entsize"] or 16
        data, base = section.data(), section["sh_addr"]
        for at in range(0, len(data) - size + 1, size):
            jump = data.find(JMP_RIP, at, at + size)
            if jump < 0 or jump + 6 > len(data):
                continue
            (disp,) = struct.unpack_from("<i", data, jump + 2)
            slot = base + jump + 6 + disp
            if slot in slots:
                found.append((base + at, size, f"{slots[slot]}@plt"))
    return found


def _got_slots(elf: ELFFile) -> dict[int, str]:
    """GOT slot address to the symbol a dynamic relocation puts there."""
    slots = {}
    for section in elf.iter_sections():
        if not isinstance(section, RelocationSection) or section["sh_link"] == 0:
            continue
        symtab = elf.get_section(section["sh_link"])
        if not isinstance(symtab, SymbolTableSection):
            continue
        for relocation in section.iter_relocations():
            index = relocation["r_info_sym"]
            if index:
                name = symtab.get_symbol(index).name
                if name:
                    slots[relocation["r_offset"]] = name
    return slots
