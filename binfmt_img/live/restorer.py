"""The restorer: a table of system calls the inferior runs in one resume (docs/RESTORER.md).

Each step of a restore used to be one single-step of the debugger, and each stop costs
(lldb-server re-reads the process's smaps at every one). The restorer is a few position
independent instructions, written into the scratch code page, that walk a table of entries:

    entry (ENTRY bytes, qwords): nr, flags, imm[6], ref[6]
    argument i = imm[i] + *ref[i]    (ref[i] points at an earlier result, or at a zero)
    result i  -> results[i]          (rax as the kernel left it)

It starts with rbx = the table, r12 = the number of entries, r14 = the results array, and
stops with int3: at END when every entry ran (r13 = count), at FAILED when an entry without
MAY_FAIL returned an error (r13 = its index). The bytes below are hand-assembled; the text
beside each line is its source (tests/test_restorer.py checks them against GNU as).
"""

from __future__ import annotations

import struct

ENTRY = 112  # bytes: 14 qwords
MAY_FAIL = 1  # flags bit 0: an error result does not stop the table

# (bytes, source) in order; offsets in the comments are from the start of the program.
LISTING: tuple[tuple[str, str], ...] = (
    ("45 31 ed", "xor r13d, r13d"),  # 0x00: index
    ("4d 39 e5", "cmp r13, r12"),  # 0x03: loop
    ("73 66", "jae .+0x68"),  # 0x06: -> 0x6e end
    ("48 8b 7b 10", "mov rdi, [rbx+16]"),
    ("48 8b 43 40", "mov rax, [rbx+64]"),
    ("48 03 38", "add rdi, [rax]"),
    ("48 8b 73 18", "mov rsi, [rbx+24]"),
    ("48 8b 43 48", "mov rax, [rbx+72]"),
    ("48 03 30", "add rsi, [rax]"),
    ("48 8b 53 20", "mov rdx, [rbx+32]"),
    ("48 8b 43 50", "mov rax, [rbx+80]"),
    ("48 03 10", "add rdx, [rax]"),
    ("4c 8b 53 28", "mov r10, [rbx+40]"),
    ("48 8b 43 58", "mov rax, [rbx+88]"),
    ("4c 03 10", "add r10, [rax]"),
    ("4c 8b 43 30", "mov r8, [rbx+48]"),
    ("48 8b 43 60", "mov rax, [rbx+96]"),
    ("4c 03 00", "add r8, [rax]"),
    ("4c 8b 4b 38", "mov r9, [rbx+56]"),
    ("48 8b 43 68", "mov rax, [rbx+104]"),
    ("4c 03 08", "add r9, [rax]"),
    ("48 8b 03", "mov rax, [rbx]"),  # 0x4a: nr
    ("0f 05", "syscall"),
    ("49 89 06", "mov [r14], rax"),  # 0x4f
    ("48 3d 01 f0 ff ff", "cmp rax, -4095"),  # 0x52
    ("72 06", "jb .+8"),  # 0x58: success -> 0x60 next
    ("f6 43 08 01", "test byte ptr [rbx+8], 1"),  # 0x5a: MAY_FAIL?
    ("74 0d", "je .+0xf"),  # 0x5e: -> 0x6d failed
    ("48 83 eb 90", "sub rbx, -112"),  # 0x60: next entry
    ("49 83 c6 08", "add r14, 8"),
    ("49 ff c5", "inc r13"),
    ("eb 96", "jmp .-0x68"),  # 0x6b: -> 0x03 loop
    ("cc", "int3"),  # 0x6d: failed, r13 = the entry's index
    ("cc", "int3"),  # 0x6e: end, r13 = count
)

CODE = b"".join(bytes.fromhex(h) for h, _ in LISTING)
FAILED = 0x6E  # rip after the int3 of a failed entry, from the program's start
END = 0x6F  # rip after the final int3
assert len(CODE) == END


def source() -> str:
    """The program as GNU as (Intel syntax) reads it."""
    return ".intel_syntax noprefix\n" + "".join(f"{text}\n" for _, text in LISTING)


# ---- the table, built by the Python side ----

class Ref:
    """An argument known only when the table runs: an earlier entry's result ("result", its
    index), or an address in the batch's data ("data", its offset); plus a constant."""

    __slots__ = ("kind", "at", "add")

    def __init__(self, kind: str, at: int, add: int = 0) -> None:
        self.kind, self.at, self.add = kind, at, add

    def __add__(self, other: int) -> Ref:
        return Ref(self.kind, self.at, self.add + other)

    def __repr__(self) -> str:
        return f"Ref({self.kind}, {self.at}, {self.add:+#x})"


class Layout:
    """Where a table of `count` entries and `data` bytes of data go from `base`: a zero
    qword (what an argument without a reference adds), the entries, the results, the data."""

    def __init__(self, base: int, count: int, data: int) -> None:
        self.base, self.count = base, count
        self.zero = base
        self.table = base + 16
        self.results = self.table + count * ENTRY
        self.data = -(-(self.results + count * 8) // 64) * 64  # xsave areas need 64
        self.end = self.data + data

    @property
    def size(self) -> int:
        return self.end - self.base

    def resolve(self, arg: int | Ref) -> tuple[int, int]:
        """(immediate, address of the qword added to it)."""
        if isinstance(arg, int):
            return arg & MASK, self.zero
        if arg.kind == "result":
            return arg.add & MASK, self.results + 8 * arg.at
        return (self.data + arg.at + arg.add) & MASK, self.zero


MASK = (1 << 64) - 1


def build(layout: Layout, entries: list[tuple[int, tuple[int | Ref, ...], bool]],
          data: bytes) -> bytes:
    """The bytes from layout.base to layout.end: entries are (nr, args, may_fail)."""
    out = bytearray(16)
    pack, zero = struct.Struct("<14Q").pack, layout.zero
    for nr, args, may_fail in entries:
        imms, refs = [0] * 6, [zero] * 6
        for i, arg in enumerate(args):
            if isinstance(arg, int):
                imms[i] = arg & MASK
            else:
                imms[i], refs[i] = layout.resolve(arg)
        out += pack(nr, MAY_FAIL if may_fail else 0, *imms, *refs)
    out += bytes(layout.data - layout.results)
    out += data
    assert len(out) == layout.size
    return bytes(out)
