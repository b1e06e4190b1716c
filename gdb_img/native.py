"""Single steps and register access for a local native inferior, made with ptrace(2) from
GDB's own thread (GDB's Python runs in the tracer thread), invisible to GDB.

A restore makes hundreds of injected steps. Through `stepi` each one is a GDB resume: a
`*running`/`*stopped` pair under MI (and the command answering `^running`), stop reports,
and most of a restore's fixed cost. Here a step is PTRACE_SINGLESTEP plus waitpid on the one
thread; GDB's register and memory caches are flushed once it looks again (GdbTarget).
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct

from binfmt_img.errors import RestoreError
from binfmt_img.live.ptrace import libc

PTRACE_CONT, PTRACE_SINGLESTEP = 7, 9
PTRACE_GETREGS, PTRACE_SETREGS = 12, 13
PTRACE_GETSIGINFO, PTRACE_SETSIGINFO = 0x4202, 0x4203
PTRACE_GETSIGMASK, PTRACE_SETSIGMASK = 0x420A, 0x420B
WALL = 0x40000000
SIGINFO_SIZE = 128
# struct user_regs_struct, in the kernel's order.
USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax",
             "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
             "fs_base", "gs_base", "ds", "es", "fs", "gs")
_REGS = struct.Struct(f"<{len(USER_REGS)}Q")
# Every signal blocked during a step but SIGKILL and SIGSTOP (which cannot be) and SIGTRAP
# (the step's own, which the kernel unblocks to raise it).
_ALL_BLOCKED = ((1 << 64) - 1) & ~sum(1 << (s - 1) for s in (signal.SIGKILL, signal.SIGSTOP,
                                                             signal.SIGTRAP))


def _ptrace(request: int, tid: int, addr: int | None, data: object) -> None:
    if libc().ptrace(request, tid, addr, data) < 0:
        code = ctypes.get_errno()
        raise RestoreError(f"ptrace request {request:#x} on thread {tid}: {os.strerror(code)}")


def get_regs(tid: int) -> dict[str, int]:
    buffer = ctypes.create_string_buffer(_REGS.size)
    _ptrace(PTRACE_GETREGS, tid, None, buffer)
    return dict(zip(USER_REGS, _REGS.unpack(buffer.raw)))


def set_regs(tid: int, regs: dict[str, int]) -> None:
    buffer = ctypes.create_string_buffer(_REGS.pack(*(regs[n] for n in USER_REGS)), _REGS.size)
    _ptrace(PTRACE_SETREGS, tid, None, buffer)


def get_sigmask(tid: int) -> int:
    mask = ctypes.c_uint64()
    _ptrace(PTRACE_GETSIGMASK, tid, 8, ctypes.byref(mask))
    return mask.value


def set_sigmask(tid: int, mask: int) -> None:
    _ptrace(PTRACE_SETSIGMASK, tid, 8, ctypes.byref(ctypes.c_uint64(mask)))


def get_siginfo(tid: int) -> bytes:
    buffer = ctypes.create_string_buffer(SIGINFO_SIZE)
    _ptrace(PTRACE_GETSIGINFO, tid, None, buffer)
    return buffer.raw


def set_siginfo(tid: int, info: bytes) -> None:
    buffer = ctypes.create_string_buffer(bytes(info).ljust(SIGINFO_SIZE, b"\0"), SIGINFO_SIZE)
    _ptrace(PTRACE_SETSIGINFO, tid, None, buffer)


def _wait(tid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(tid, WALL)
            return status
        except InterruptedError:
            continue
        except ChildProcessError:
            raise RestoreError(f"thread {tid} is gone (waitpid: no such child)") from None


def single_step(tid: int) -> None:
    """One instruction of thread `tid`, the others staying in their ptrace stops.

    Asynchronous signals stay pending rather than being delivered mid-restore: every signal
    is blocked for the step (PTRACE_SETSIGMASK), and the mask put back afterwards unless the
    stepped instruction set it (an injected rt_sigprocmask). A SIGSTOP that arrives anyway
    (it cannot be blocked) is dropped and the step made again; a synchronous signal raised
    by the instruction itself (a fault) is left undelivered, with rip at the instruction, and
    the caller sees the step did not happen. The process dying ends the restore."""
    saved = get_sigmask(tid)
    set_sigmask(tid, _ALL_BLOCKED)
    try:
        while True:
            _ptrace(PTRACE_SINGLESTEP, tid, None, None)
            status = _wait(tid)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise RestoreError(f"thread {tid} ended during an injected step "
                                   f"(wait status {status:#x})")
            if os.WSTOPSIG(status) != signal.SIGSTOP or status >> 16:
                return  # the step's SIGTRAP, or a fault the caller will notice
    finally:
        _unblock(tid, saved)


def _unblock(tid: int, saved: int) -> None:
    """Put back the mask a held step or table replaced (unless the thread changed it since:
    a restore's own table sets the image's), if the thread still exists."""
    try:
        if get_sigmask(tid) == _ALL_BLOCKED:
            set_sigmask(tid, saved)
    except RestoreError:
        pass  # the thread is gone: nothing to put back


def run_to_trap(tid: int) -> None:
    """Thread `tid` alone runs (the others stay in their ptrace stops) until it stops: at an
    int3 of the restorer (SIGTRAP), or at a fault the caller notices by where rip is. The
    mask is left as it is: the restorer reads and sets it itself (a dump's batch reads it,
    a restore's sets it), which holding signals back as single_step does would falsify. A
    signal that arrives meanwhile is delivered as the kernel would (passed on at its stop)."""
    deliver = 0
    while True:
        _ptrace(PTRACE_CONT, tid, None, deliver or None)
        status = _wait(tid)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            raise RestoreError(f"thread {tid} ended while the restorer ran "
                               f"(wait status {status:#x})")
        number, deliver = os.WSTOPSIG(status), 0
        if number == signal.SIGTRAP or status >> 16:
            return
        if number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
            return  # a fault in the restorer: the caller sees rip away from the traps
        if number != signal.SIGSTOP:
            deliver = number


def run_threads_to_trap(tids: list[int]) -> None:
    """run_to_trap for several threads at once: each resumed, then each waited for until it
    stops at an int3 of the restorer (or a fault); the others stay in their ptrace stops."""
    for tid in tids:
        _ptrace(PTRACE_CONT, tid, None, None)
    for tid in tids:
        while True:
            status = _wait(tid)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise RestoreError(f"thread {tid} ended while the restorer ran "
                                   f"(wait status {status:#x})")
            number = os.WSTOPSIG(status)
            if number in (signal.SIGTRAP, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL,
                          signal.SIGFPE) or status >> 16:
                break  # at its trap, or a fault the caller sees by where rip is
            _ptrace(PTRACE_CONT, tid, None, None if number == signal.SIGSTOP else number)


def resume_held(tid: int) -> int:
    """Resume thread `tid` alone with every signal held back (a table that must not meet the
    image's handlers, its memory half written) and return at once; await_held(tid, mask)
    with the returned mask waits for its trap."""
    saved = get_sigmask(tid)
    set_sigmask(tid, _ALL_BLOCKED)
    try:
        _ptrace(PTRACE_CONT, tid, None, None)
    except RestoreError:
        set_sigmask(tid, saved)
        raise
    return saved


def await_held(tid: int, saved: int) -> None:
    """The other half of resume_held: wait until the thread stops at an int3 (or a fault the
    caller sees by where rip is), a SIGSTOP meanwhile dropped; then its mask put back."""
    interrupted = False
    try:
        while True:
            try:
                status = _wait(tid)
            except KeyboardInterrupt:  # the table ends by itself: not left running unseen
                interrupted = True
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise RestoreError(f"thread {tid} ended while the restorer ran "
                                   f"(wait status {status:#x})")
            if os.WSTOPSIG(status) != signal.SIGSTOP or status >> 16:
                break
            _ptrace(PTRACE_CONT, tid, None, None)
    finally:
        _unblock(tid, saved)
    if interrupted:
        raise KeyboardInterrupt
