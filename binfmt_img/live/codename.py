"""A name for the injected code: a tiny ELF image that tells a debugger what the scratch code
page is, so that a stop there is not a stop "nowhere".

At every stop LLDB unwinds the stopped thread's frame 0; when its pc has no symbol, it asks
lldb-server whether that memory is executable (qMemoryRegionInfo), and lldb-server answers
by reading /proc/PID/smaps afresh: 0.15 s for a process of 30,000 VMAs, at each of the
restore's stops. With a symbol for the pc it does not ask. This module builds an ELF file of
one section, the scratch code page, and one function symbol covering it; the Injector writes
it into the code page and a Target that wants it (Target.name_code) loads it from there as a
module read from memory.

Everything lies in the first NAME_SIZE bytes (a debugger reads that much of an in-memory
image's header), and every section is SHF_ALLOC at its address in the inferior, so that its
contents are read from memory wherever the debugger looks for them.
"""

from __future__ import annotations

import struct

NAME_SIZE = 512
SYMBOL = "binfmt_img_injected"
_SHSTRTAB = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # 64 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")  # 64 bytes
_SYM = struct.Struct("<IBBHQQ")  # 24 bytes
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 1, 2, 3
SHF_ALLOC, SHF_EXECINSTR = 2, 4
STT_FUNC, STB_GLOBAL = 2, 1


def image(header: int, code: int, size: int) -> bytes:
    """The ELF image to place at `header` in the inferior, naming `size` bytes of code at
    `code` as function SYMBOL."""
    strtab = b"\0" + SYMBOL.encode() + b"\0"
    symtab_at = _EHDR.size + 5 * _SHDR.size
    strtab_at = symtab_at + 2 * _SYM.size
    shstrtab_at = strtab_at + len(strtab)
    end = shstrtab_at + len(_SHSTRTAB)
    assert end <= NAME_SIZE
    ident = b"\x7fELF\x02\x01\x01".ljust(16, b"\0")
    ehdr = _EHDR.pack(ident, 3, 62, 1, 0, 0, _EHDR.size, 0, _EHDR.size, 56, 0, _SHDR.size,
                      5, 4)
    name = {n: _SHSTRTAB.index(n.encode() + b"\0") for n in
            (".text", ".symtab", ".strtab", ".shstrtab")}
    sections = [
        bytes(_SHDR.size),
        # Its bytes are the inferior's at `code` (read from memory: the section is loaded).
        _SHDR.pack(name[".text"], SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, code, 0, size,
                   0, 0, 16, 0),
        _SHDR.pack(name[".symtab"], SHT_SYMTAB, SHF_ALLOC, header + symtab_at, symtab_at,
                   2 * _SYM.size, 3, 1, 8, _SYM.size),
        _SHDR.pack(name[".strtab"], SHT_STRTAB, SHF_ALLOC, header + strtab_at, strtab_at,
                   len(strtab), 0, 0, 1, 0),
        _SHDR.pack(name[".shstrtab"], SHT_STRTAB, 0, 0, shstrtab_at, len(_SHSTRTAB),
                   0, 0, 1, 0),
    ]
    symbols = bytes(_SYM.size) + _SYM.pack(1, STB_GLOBAL << 4 | STT_FUNC, 0, 1, code, size)
    return ehdr + b"".join(sections) + symbols + strtab + _SHSTRTAB
