"""Where glibc keeps a thread's rseq area, found from ld.so's exported symbols.

glibc (2.35+) registers a restartable-sequences area per thread; the kernel writes the current
CPU into it on every return to user space, and kills the task with SIGSEGV when that memory is
gone. A restore must unregister the live process's area before it unmaps memory, and register
the image's afterwards. The area is at fs_base + __rseq_offset, __rseq_size bytes long; both
symbols are ld.so's, whose load address is the auxv's AT_BASE.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from binfmt_img.safeio import open_regular_file

RSEQ = 334  # the system call
RSEQ_FLAG_UNREGISTER = 1
RSEQ_SIG = 0x53053053  # glibc's signature on x86
AT_BASE = 7


@lru_cache(maxsize=8)
def _symbols(ld_path: str) -> tuple[int, int] | None:
    """Offsets of __rseq_offset and __rseq_size in an ld.so file."""
    try:
        with open_regular_file(ld_path) as f:
            dynsym = ELFFile(f).get_section_by_name(".dynsym")
            if dynsym is None:
                return None
            found = [dynsym.get_symbol_by_name(n) for n in ("__rseq_offset", "__rseq_size")]
    except (OSError, ELFError):
        return None
    if not all(found):
        return None
    return found[0][0]["st_value"], found[1][0]["st_value"]


def rseq_area(read_memory: Callable[[int, int], bytes], auxv: list[tuple[int, int]],
              ld_path: str | None, fs_base: int) -> tuple[int, int] | None:
    """(address, length) of the thread's rseq area, or None when glibc registers none."""
    base = dict(auxv).get(AT_BASE)
    if not base or not ld_path or not fs_base:
        return None
    symbols = _symbols(ld_path)
    if symbols is None:
        return None
    try:
        (offset,) = struct.unpack("<q", read_memory(base + symbols[0], 8))
        (size,) = struct.unpack("<I", read_memory(base + symbols[1], 4))
    except Exception:  # noqa: BLE001 - unreadable: the debugger's own error type varies
        return None
    if size == 0:
        return None  # rseq disabled (glibc.pthread.rseq=0)
    return (fs_base + offset) & 0xFFFFFFFFFFFFFFFF, 32 if size < 32 else size
