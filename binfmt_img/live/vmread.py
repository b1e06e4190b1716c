"""Reading a local inferior's memory with process_vm_readv(2): the kernel copies the pages once,
straight into our buffer (a read of /proc/PID/mem copies each page twice, through a page of
its own), and the call runs without the GIL (ctypes releases it). The same permission as
/proc/PID/mem (ptrace access to the process). What it cannot read (a mapping without
PROT_READ, which /proc/PID/mem reads by force; a kernel without the call) is left to the
caller's other way: read_into returns False."""

from __future__ import annotations

import ctypes
import ctypes.util


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _libc_call() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.process_vm_readv
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                     ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
    call.restype = ctypes.c_ssize_t
    return call


_CALL = _libc_call()


def _address(view: memoryview) -> int | None:
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # read-only or not contiguous
        return None


def read_into(pid: int, addr: int, view: memoryview) -> bool:
    """Fill `view` with the process's bytes at `addr`; False if not all could be read."""
    if _CALL is None or not len(view):
        return _CALL is not None
    base = _address(view)
    if base is None:
        return False
    done = 0
    while done < len(view):
        local = _Iovec(base + done, len(view) - done)
        remote = _Iovec(addr + done, len(view) - done)
        got = _CALL(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got <= 0:
            return False
        done += got
    return True
