"""Global and static variables of the mapped ELF files at their run-time addresses (the
files' symbol tables plus the load bias, as img-info names code), and their values: typed by
the debugger when it knows the type, else shown from the bytes."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from binfmt_img.formats.elfcore import ELF_DAMAGE
from binfmt_img.formats.model import Vma
from binfmt_img.formats.symbols import _bias, unchanged
from binfmt_img.safeio import open_regular_file

SHOWN_BYTES = 32  # an untyped value longer than this is shown cut


class Values(Protocol):
    """The debugger's hook: a variable's value formatted from raw bytes, with its type
    name; None when it knows no variable of that name and size."""

    def format_value(self, name: str, path: str, data: bytes) -> tuple[str, str] | None: ...


@dataclass(frozen=True)
class Variable:
    address: int
    size: int
    name: str
    path: str  # the file whose symbol table names it


class Variables:
    """The object symbols of some mapped files, sorted by address."""

    def __init__(self, vmas: list[Vma], paths: set[str]) -> None:
        found: set[Variable] = set()
        for path in sorted(paths):
            found.update(_file_variables(path, [v for v in vmas if v.path == path]))
        self.items = sorted(found, key=lambda v: (v.address, v.name))
        self.starts = [v.address for v in self.items]

    def overlapping(self, start: int, end: int) -> list[Variable]:
        """Variables sharing a byte with [start, end)."""
        i = bisect.bisect_left(self.starts, start)
        while i > 0 and self.items[i - 1].address + self.items[i - 1].size > start:
            i -= 1
        out = []
        while i < len(self.items) and self.items[i].address < end:
            item = self.items[i]
            if item.address + item.size > start:
                out.append(item)
            i += 1
        return out


def _file_variables(path: str, mapped: list[Vma]) -> list[Variable]:
    if not mapped or not unchanged(path, mapped[0]):
        return []
    try:
        with open_regular_file(path) as f:
            elf = ELFFile(f)
            bias = _bias(elf, mapped)
            if bias is None:
                return []
            out = []
            for section in elf.iter_sections():
                if not isinstance(section, SymbolTableSection):
                    continue
                for symbol in section.iter_symbols():
                    if (symbol["st_info"]["type"] == "STT_OBJECT" and symbol["st_size"]
                            and symbol["st_shndx"] != "SHN_UNDEF" and symbol.name):
                        out.append(Variable(symbol["st_value"] + bias, symbol["st_size"],
                                            symbol.name, path))
            return out
    except (*ELF_DAMAGE, OSError):
        return []


def plain_value(data: bytes) -> str:
    """A value of unknown type: an integer when it has an integer's size, else its bytes."""
    if len(data) in (1, 2, 4, 8):
        number = int.from_bytes(data, "little", signed=True)
        return str(number) if -4096 < number < 1 << 16 else hex(number & (1 << 8 * len(data)) - 1)
    shown = data[:SHOWN_BYTES].hex(" ")
    return shown + (f" ... ({len(data)} bytes)" if len(data) > SHOWN_BYTES else "")


def plain_values(old: bytes, new: bytes) -> tuple[str, str]:
    """Old and new values of unknown type; of a long one, the bytes from its first change."""
    if len(old) <= SHOWN_BYTES or len(old) != len(new):
        return plain_value(old), plain_value(new)
    first = next(i for i in range(len(old)) if old[i] != new[i])
    at = first - first % 8
    changed = sum(a != b for a, b in zip(old, new, strict=True))

    def shown(data: bytes) -> str:
        return (f"+{at:#x}: {data[at:at + 16].hex(' ')} ... ({changed} of {len(data)} bytes "
                "changed)")
    return shown(old), shown(new)
