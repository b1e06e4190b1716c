"""ptrace requests the dump makes itself, when the debugger's own process is the tracer.

GDB's Python runs in the thread that traces the inferior, so ptrace(2) called from it with
ctypes works on the stopped inferior; LLDB's tracer is lldb-server, another process, where
the same calls fail with ESRCH. The core asks the adapter (Target.ptrace_available) first.
"""

from __future__ import annotations

import ctypes
import os
import struct
from functools import lru_cache

from binfmt_img.live.target import Target

PTRACE_PEEKSIGINFO = 0x4209
PTRACE_PEEKSIGINFO_SHARED = 1
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
SIGINFO_SIZE = 128
PEEK_BATCH = 32


@lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    """libc with ptrace's prototype (the GDB adapter's native steps use it too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    return libc


class Unavailable(Exception):
    """ptrace does not reach the inferior from here: the caller takes its other way."""


def available(target: Target) -> bool:
    method = getattr(target, "ptrace_available", None)
    return bool(method is not None and method())


def _ptrace(request: int, tid: int, addr: object, data: object, what: str) -> int:
    """One request; a failure (ESRCH: this process is not the tracer after all, EIO: a
    kernel without the request) raises Unavailable."""
    result = libc().ptrace(request, tid, addr, data)
    if result < 0:
        code = ctypes.get_errno()
        raise Unavailable(f"{what} of thread {tid}: ptrace failed: {os.strerror(code)}")
    return result


def peek_siginfo(tid: int, shared: bool) -> list[bytes]:
    """The siginfo of every signal queued for thread `tid` (or, `shared`, for its process),
    in queue order, left queued."""
    out: list[bytes] = []
    buffer = ctypes.create_string_buffer(SIGINFO_SIZE * PEEK_BATCH)
    while True:
        args = struct.pack("<QIi", len(out), PTRACE_PEEKSIGINFO_SHARED if shared else 0,
                           PEEK_BATCH)
        got = _ptrace(PTRACE_PEEKSIGINFO, tid, ctypes.c_char_p(args), buffer,
                      "reading the pending signals")
        out += [buffer.raw[i * SIGINFO_SIZE:(i + 1) * SIGINFO_SIZE] for i in range(got)]
        if got < PEEK_BATCH:
            return out


def rseq_configuration(tid: int) -> tuple[int, int, int, int]:
    """(area, length, signature, flags) of the thread's rseq registration; area 0: none."""
    buffer = ctypes.create_string_buffer(24)
    got = _ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.c_void_p(24), buffer,
                  "reading the rseq registration")
    area, length, signature, flags = struct.unpack_from("<QIII", buffer.raw)
    if got < 20:
        flags = 0
    return area, length, signature, flags
