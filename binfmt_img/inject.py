"""Runs system calls and a few instructions inside the inferior, one single-step each."""

from __future__ import annotations

import struct

from . import syscalls as sc
from .errors import RestoreError
from .model import USER_TOP
from .target import Target

SCRATCH_SIZE = 0x10000  # code on the first page, data on the rest
SYSCALL = b"\x0f\x05"
CODE = SYSCALL + b"\xcc" * 2  # syscall at +0; the int3s are never reached
XRSTOR64_RDI = b"\x48\x0f\xae\x2f"  # xrstor64 [rdi], features in edx:eax
XSAVE64_RDI = b"\x48\x0f\xae\x27"  # xsave64 [rdi]
SPIN = b"\xeb\xfe"  # jmp . : holds the inferior still while no debugger is attached
XRSTOR_AT, XSAVE_AT = 8, 16
DATA_AT = 0x1000
ARG_REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
# Registers an injected step may change; saved before and put back after a dump.
SAVED_REGISTERS = ("rip", "rax", "rdi", "rsi", "rdx", "r10", "r8", "r9", "rcx", "r11",
                   "eflags", "orig_rax")


ENOSYS = (1 << 64) - 38


def check_not_in_syscall_entry(target: Target) -> None:
    """At a system call's entry stop (`catch syscall`), the kernel runs the pending call with
    whatever registers the next resume finds: an injected call would be lost and the
    program's own call run with our arguments. Refuse before any change."""
    regs = target.read_registers(("rax", "orig_rax"))
    if regs.get("rax") == ENOSYS and regs.get("orig_rax", -1) not in (-1, (1 << 64) - 1):
        raise RestoreError(f"the inferior is stopped at the entry of system call "
                           f"{regs['orig_rax']} (catch syscall): `stepi` or `continue` to "
                           "its return first")


def free_area(taken: list[tuple[int, int]], size: int) -> int:
    """An address range of `size` bytes clear of every range in `taken`, for the scratch
    area: tried at 256 MiB steps from 256 MiB up."""
    step = 0x10000000
    for candidate in range(step, USER_TOP - size, step):
        if not any(candidate < end and start < candidate + size for start, end in taken):
            return candidate
    raise RestoreError("no free address range for the scratch area")


def _unsigned(value: int) -> int:
    return value & 0xFFFFFFFFFFFFFFFF


class Injector:
    """Executes system calls in the inferior from a scratch area that the image does not use."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.scratch: int | None = None
        self._data_used = 0

    def open_scratch(self, address: int, code: int | None = None) -> None:
        """Map the scratch area, borrowing two bytes of mapped code for that one syscall: at
        `code` when given (rip may point nowhere), else at the current rip."""
        rip = code if code is not None else self.target.read_registers(("rip",))["rip"]
        saved = self.target.read_memory(rip, len(SYSCALL))
        self.target.write_memory(rip, SYSCALL)
        try:
            result = self._run(rip, sc.MMAP, address, SCRATCH_SIZE, 7,
                               0x22 | sc.MAP_FIXED_NOREPLACE, -1, 0)
        finally:
            self.target.write_memory(rip, saved)
        if sc.is_error(result) or result != address:
            detail = sc.errno_text(result) if sc.is_error(result) else f"got {result:#x}"
            raise RestoreError(f"mapping the scratch area at {address:#x} failed: {detail}")
        self.scratch = address
        code = CODE.ljust(XRSTOR_AT, b"\xcc") + XRSTOR64_RDI.ljust(8, b"\xcc") + XSAVE64_RDI
        self.target.write_memory(address, code + b"\xcc" * 4)

    def close_scratch(self) -> None:
        """Unmap the scratch area; the single-step stops before the next fetch from it."""
        assert self.scratch is not None
        self.call(sc.MUNMAP, self.scratch, SCRATCH_SIZE, step="unmapping the scratch area")
        self.scratch = None

    def _run(self, at: int, nr: int, *args: int) -> int:
        regs = {"rip": at, "rax": nr}
        regs.update({name: _unsigned(value) for name, value in zip(ARG_REGISTERS, args)})
        self.target.write_registers(regs)
        self.target.step_instruction()
        after = self.target.read_registers(("rax", "rip"))
        if after.get("rip", at + len(SYSCALL)) != at + len(SYSCALL):
            # A signal the thread does not block was delivered by that step (the debugger
            # passed it on): its handler or restart moved rip, and the call did not happen.
            raise RestoreError(f"system call {sc.NAMES.get(nr, nr)}: a signal arrived during "
                               f"the injected step (rip {after['rip']:#x}, not "
                               f"{at + len(SYSCALL):#x})")
        return after["rax"]

    def raw(self, nr: int, *args: int) -> int:
        """One system call; returns rax as the kernel left it (an error is -errno)."""
        assert self.scratch is not None, "no scratch area"
        return self._run(self.scratch, nr, *args)

    def call(self, nr: int, *args: int, step: str, address: int | None = None) -> int:
        """One system call that must succeed; a failure names the step, address and errno."""
        result = self.raw(nr, *args)
        if sc.is_error(result):
            where = f" at {address:#x}" if address is not None else ""
            raise RestoreError(f"{step}{where}: {sc.NAMES.get(nr, nr)} failed: "
                               f"{sc.errno_text(result)}")
        return result

    def call_at(self, at: int, nr: int, *args: int, step: str) -> int:
        """Like call, from a `syscall` instruction of the caller's own at `at` (clone needs
        one followed by a loop for the new thread)."""
        result = self._run(at, nr, *args)
        if sc.is_error(result):
            raise RestoreError(f"{step}: {sc.NAMES.get(nr, nr)} failed: {sc.errno_text(result)}")
        return result

    # Data passed by pointer lives in the scratch area's data pages.
    def reset_data(self) -> None:
        self._data_used = 0

    def put(self, data: bytes, align: int = 16) -> int:
        assert self.scratch is not None
        at = -(-self._data_used // align) * align
        if DATA_AT + at + len(data) > SCRATCH_SIZE:
            self._data_used = at = 0
        self.target.write_memory(self.scratch + DATA_AT + at, data)
        self._data_used = at + len(data)
        return self.scratch + DATA_AT + at

    def reserve(self, size: int, align: int = 16) -> int:
        return self.put(bytes(size), align)

    def put_string(self, text: str) -> int:
        return self.put(text.encode() + b"\0", 1)

    def xrstor(self, area: bytes, features: int) -> None:
        self._xstate(XRSTOR_AT, self.put(area, 64), features)

    def xsave(self, size: int, features: int) -> bytes:
        addr = self.reserve(size, 64)
        self._xstate(XSAVE_AT, addr, features)
        return self.target.read_memory(addr, size)


    def _xstate(self, at: int, area: int, features: int) -> None:
        """One xsave64/xrstor64 on the 64-byte aligned `area`, features in edx:eax."""
        assert self.scratch is not None
        self.target.write_registers({"rip": self.scratch + at, "rdi": area,
                                     "rax": features & 0xFFFFFFFF, "rdx": features >> 32})
        self.target.step_instruction()


def pack_u64(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *(_unsigned(v) for v in values))
