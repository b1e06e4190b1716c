"""The restorer: a table of system calls the inferior runs in one resume (docs/RESTORER.md).

Each step of a restore used to be one single-step of the debugger, and each stop costs
(lldb-server re-reads the process's smaps at every one). The restorer is a few position
independent instructions, written into the scratch code page, that walk a table of entries:

    entry (ENTRY bytes, qwords): nr, flags, imm[6], ref[6]
    argument i = imm[i] + *ref[i]    (ref[i] points at an earlier result, or at a zero)
    result i  -> results[i]          (rax as the kernel left it)

It starts with rbx = the table, r12 = the number of entries, r14 = the results array, and
stops with int3: at END when every entry ran (r13 = count), at FAILED when an entry without
MAY_FAIL returned an error (r13 = its index). Three entry numbers are not system calls but
pseudo-calls the program runs itself: XRSTOR and XSAVE (the FPU and vector registers from or
into an xsave area, so that a thread's whole state goes in one table) and STORE (an earlier
result copied into the table's data, e.g. an fd into a struct passed by pointer). The bytes
below are hand-assembled; the text beside each line is its source (tests/test_restorer.py
checks them against GNU as).
"""

from __future__ import annotations

import struct

ENTRY = 112  # bytes: 14 qwords
MAY_FAIL = 1  # flags bit 0: an error result does not stop the table
SPIN_CHILD = 2  # flags bit 1: a clone whose child (result 0) waits at SPIN, not going on

# Pseudo-calls: entry numbers from PSEUDO up are not system calls but run by the program.
PSEUDO = 0x1000
XRSTOR = 0x1000  # xrstor64 [arg0], features arg1 (low 32 bits) and arg2 (high): result 0
STORE = 0x1001  # qword [arg1] = arg0 (an earlier result put into data, e.g. into a struct)
XSAVE = 0x1002  # xsave64 [arg0], features as XRSTOR's: result 0

# (bytes, source) in order; offsets in the comments are from the start of the program.
LISTING: tuple[tuple[str, str], ...] = (
    ("45 31 ed", "xor r13d, r13d"),  # 0x00: index
    ("4d 39 e5", "cmp r13, r12"),  # 0x03: loop
    ("0f 83 85 00 00 00", "jae .+0x8b"),  # 0x06: -> 0x91 end
    ("48 8b 7b 10", "mov rdi, [rbx+16]"),  # 0x0c
    ("48 8b 43 40", "mov rax, [rbx+64]"),  # 0x10
    ("48 03 38", "add rdi, [rax]"),  # 0x14
    ("48 8b 73 18", "mov rsi, [rbx+24]"),  # 0x17
    ("48 8b 43 48", "mov rax, [rbx+72]"),  # 0x1b
    ("48 03 30", "add rsi, [rax]"),  # 0x1f
    ("48 8b 53 20", "mov rdx, [rbx+32]"),  # 0x22
    ("48 8b 43 50", "mov rax, [rbx+80]"),  # 0x26
    ("48 03 10", "add rdx, [rax]"),  # 0x2a
    ("4c 8b 53 28", "mov r10, [rbx+40]"),  # 0x2d
    ("48 8b 43 58", "mov rax, [rbx+88]"),  # 0x31
    ("4c 03 10", "add r10, [rax]"),  # 0x35
    ("4c 8b 43 30", "mov r8, [rbx+48]"),  # 0x38
    ("48 8b 43 60", "mov rax, [rbx+96]"),  # 0x3c
    ("4c 03 00", "add r8, [rax]"),  # 0x40
    ("4c 8b 4b 38", "mov r9, [rbx+56]"),  # 0x43
    ("48 8b 43 68", "mov rax, [rbx+104]"),  # 0x47
    ("4c 03 08", "add r9, [rax]"),  # 0x4b
    ("48 8b 03", "mov rax, [rbx]"),  # 0x4e: nr
    ("48 3d 00 10 00 00", "cmp rax, 0x1000"),  # 0x51: a pseudo-call?
    ("73 39", "jae .+0x3b"),  # 0x57: -> 0x92 pseudo
    ("0f 05", "syscall"),  # 0x59
    ("48 85 c0", "test rax, rax"),  # 0x5b: a clone's child (rax 0) of an entry with SPIN_CHILD
    ("75 0f", "jnz .+0x11"),  # 0x5e: -> 0x6f store
    ("f6 43 08 02", "test byte ptr [rbx+8], 2"),  # 0x60
    ("74 09", "jz .+0xb"),  # 0x64: -> 0x6f store
    ("b8 22 00 00 00", "mov eax, 34"),  # 0x66: spin: the child waits in pause() for the debugger
    ("0f 05", "syscall"),  # 0x6b
    ("eb f7", "jmp .-0x7"),  # 0x6d: -> 0x66 spin
    ("49 89 06", "mov [r14], rax"),  # 0x6f: store
    ("48 3d 01 f0 ff ff", "cmp rax, -4095"),  # 0x72
    ("72 06", "jb .+0x8"),  # 0x78: -> 0x80 next
    ("f6 43 08 01", "test byte ptr [rbx+8], 1"),  # 0x7a: MAY_FAIL?
    ("74 10", "je .+0x12"),  # 0x7e: -> 0x90 failed
    ("48 83 eb 90", "sub rbx, -112"),  # 0x80: next entry
    ("49 83 c6 08", "add r14, 8"),  # 0x84
    ("49 ff c5", "inc r13"),  # 0x88
    ("e9 73 ff ff ff", "jmp .-0x88"),  # 0x8b: -> 0x03 loop
    ("cc", "int3"),  # 0x90: failed, r13 = the entry's index
    ("cc", "int3"),  # 0x91: end, r13 = count
    ("3d 01 10 00 00", "cmp eax, 0x1001"),  # 0x92: pseudo: STORE?
    ("74 1a", "je .+0x1c"),  # 0x97: -> 0xb3 put
    ("89 f0", "mov eax, esi"),  # 0x99: XRSTOR or XSAVE, features in edx:eax
    ("81 3b 02 10 00 00", "cmp dword ptr [rbx], 0x1002"),  # 0x9b: XSAVE?
    ("74 08", "je .+0xa"),  # 0xa1: -> 0xab save
    ("48 0f ae 2f", "xrstor64 [rdi]"),  # 0xa3
    ("31 c0", "xor eax, eax"),  # 0xa7
    ("eb c4", "jmp .-0x3a"),  # 0xa9: -> 0x6f store
    ("48 0f ae 27", "xsave64 [rdi]"),  # 0xab: save
    ("31 c0", "xor eax, eax"),  # 0xaf
    ("eb bc", "jmp .-0x42"),  # 0xb1: -> 0x6f store
    ("48 89 3e", "mov [rsi], rdi"),  # 0xb3: put: STORE
    ("31 c0", "xor eax, eax"),  # 0xb6
    ("eb b5", "jmp .-0x49"),  # 0xb8: -> 0x6f store
)

CODE = b"".join(bytes.fromhex(h) for h, _ in LISTING)
FAILED = 0x91  # rip after the int3 of a failed entry, from the program's start
END = 0x92  # rip after the final int3
SPIN = 0x66  # where a clone's child of a SPIN_CHILD entry waits (in pause(), no CPU)
assert CODE[FAILED - 1:END] == b"\xcc\xcc" and len(CODE) == 0xBA


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
    """The bytes from layout.base to layout.end: entries are (nr, args, flags), flags a bool
    (MAY_FAIL or not) or MAY_FAIL | SPIN_CHILD bits."""
    out = bytearray(16)
    pack, zero = struct.Struct("<14Q").pack, layout.zero
    for nr, args, may_fail in entries:
        imms, refs = [0] * 6, [zero] * 6
        for i, arg in enumerate(args):
            if isinstance(arg, int):
                imms[i] = arg & MASK
            else:
                imms[i], refs[i] = layout.resolve(arg)
        out += pack(nr, int(may_fail), *imms, *refs)
    out += bytes(layout.data - layout.results)
    out += data
    assert len(out) == layout.size
    return bytes(out)
