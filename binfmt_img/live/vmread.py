"""Reading and writing a local inferior's memory with process_vm_readv(2) and
process_vm_writev(2): the kernel copies the pages once, straight between our buffer and the
process (/proc/PID/mem copies each page twice, through a page of its own), and the calls run
without the GIL (ctypes releases it). The same permission as /proc/PID/mem (ptrace access to
the process). What they cannot do (a mapping without PROT_READ or PROT_WRITE, which
/proc/PID/mem reads and writes by force; a kernel without the calls) is left to the caller's
other way: read_into returns False, write_from how far it got."""

from __future__ import annotations

import ctypes
import ctypes.util


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _libc_call(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                     ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
    call.restype = ctypes.c_ssize_t
    return call


_READV = _libc_call("process_vm_readv")
_WRITEV = _libc_call("process_vm_writev")


def _address(view: memoryview) -> int | None:
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # read-only or not contiguous
        return None


def _transfer(call: ctypes._CFuncPtr, pid: int, addr: int,  # type: ignore[name-defined]
              view: memoryview) -> int:
    """The bytes moved between `view` and the process at `addr`, until all are or the
    kernel stops short (a page that refuses)."""
    base = _address(view)
    if base is None:
        return 0
    done = 0
    while done < len(view):
        local = _Iovec(base + done, len(view) - done)
        remote = _Iovec(addr + done, len(view) - done)
        got = call(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got <= 0:
            break
        done += got
    return done


def read_into(pid: int, addr: int, view: memoryview) -> bool:
    """Fill `view` with the process's bytes at `addr`; False if not all could be read."""
    if _READV is None or not len(view):
        return _READV is not None
    return _transfer(_READV, pid, addr, view) == len(view)


def write_from(pid: int, addr: int, view: memoryview) -> int:
    """Write `view` into the process at `addr`: the bytes written (short where a page refuses
    it), 0 when none (no call, or a read-only source buffer)."""
    if _WRITEV is None or not len(view):
        return 0
    return _transfer(_WRITEV, pid, addr, view)
