"""x86-64 Linux system call numbers and constants the restore and dump plans use."""

from __future__ import annotations

import errno
import os

READ, WRITE, OPEN, CLOSE = 0, 1, 2, 3
MMAP, MPROTECT, MUNMAP, BRK = 9, 10, 11, 12
RT_SIGACTION, RT_SIGPROCMASK = 13, 14
MREMAP = 25
GETPID = 39
SIGALTSTACK = 131
PRCTL = 157
ARCH_PRCTL = 158
SET_THREAD_AREA, GET_THREAD_AREA = 205, 211
SET_TID_ADDRESS = 218
SET_ROBUST_LIST, GET_ROBUST_LIST = 273, 274
LSEEK, CHDIR, DUP3 = 8, 80, 292
CLONE, EXIT = 56, 60

NAMES = {v: k.lower() for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)}

PR_SET_MM, PR_SET_MM_MAP, PR_SET_MM_MAP_SIZE = 35, 14, 15
ARCH_SET_GS, ARCH_SET_FS, ARCH_GET_FS, ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
MAP_FIXED_NOREPLACE = 0x100000
SIG_SETMASK = 2
O_RDONLY, O_RDWR, O_CLOEXEC = 0, 2, 0o2000000
# Added to every open of a path the image names: should the path turn into a FIFO or a
# device after the checks, the open neither blocks the inferior nor makes it a terminal's.
O_NOBLOCK_NOTTY = 0o4000 | 0o400
SIGKILL, SIGSTOP = 9, 19
NSIG = 64


def is_error(value: int) -> bool:
    """A raw syscall return in -4095..-1, as an unsigned 64-bit register holds it."""
    return value >= (1 << 64) - 4095


def errno_text(value: int) -> str:
    code = (1 << 64) - value
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"
