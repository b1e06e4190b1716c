"""Pipes and FIFOs whose ends this process holds, with the bytes buffered in them.

The dump reads the buffered bytes without taking them: the debugger opens /proc/PID/fd/N (the
same pipe) and tee()s its contents into a pipe of its own. The restore makes a pipe (a FIFO is
opened again by its path, first read-write so that no open blocks), writes the bytes back, and
places every end at its number. A pipe one of whose ends is held by another process cannot
come back (Lost); one whose other end was closed comes back with that end closed again.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat
import termios
from typing import TYPE_CHECKING

from construct import GreedyBytes, Int32ul, PascalString, Prefixed, Struct, VarInt

from binfmt_img.errors import RestoreError
from binfmt_img.fdkinds import (
    FCNTL,
    O_NONBLOCK,
    O_RDWR,
    O_WRONLY,
    Entry,
    FdKind,
    Lost,
    Restorer,
    Seen,
    lose,
)
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 1
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
DEFAULT_SIZE = 65536
SPLICE_F_NONBLOCK = 2
Record = Struct(
    "inode" / Int32ul,
    "size" / Int32ul,  # the pipe's capacity (F_GETPIPE_SZ)
    "path" / PascalString(VarInt, "utf8"),  # a FIFO's; "" for a pipe
    "data" / Prefixed(VarInt, GreedyBytes),  # buffered bytes, kept by the group's first fd
)


def _matches(seen: Seen) -> bool:
    return seen.link.startswith("pipe:[") or stat.S_ISFIFO(seen.mode)


def buffered(pid: int, fd: int) -> tuple[int, bytes]:
    """(capacity, bytes buffered) of the inferior's pipe at fd, left where they are."""
    ours = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    copy_r, copy_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        size = fcntl.fcntl(ours, F_GETPIPE_SZ)
        fcntl.fcntl(copy_w, F_SETPIPE_SZ, size)
        waiting = int.from_bytes(fcntl.ioctl(ours, termios.FIONREAD, bytes(4)), "little")
        if not waiting:
            return size, b""
        libc = ctypes.CDLL(None, use_errno=True)
        copied = libc.tee(ours, copy_w, ctypes.c_size_t(waiting), SPLICE_F_NONBLOCK)
        if copied < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        data = os.read(copy_r, copied)
        if len(data) != waiting:
            raise RestoreError(f"fd {fd}: read {len(data)} of the {waiting} bytes buffered "
                               "in the pipe")
        return size, data
    finally:
        for fd_ in (ours, copy_r, copy_w):
            os.close(fd_)


def _dump(plan: DumpPlan, seen: Seen) -> dict:
    ends = {s.flags & 3 for s in seen.group}
    fifo = not seen.link.startswith("pipe:[")
    both = O_RDWR in ends or {0, O_WRONLY} <= ends
    if seen.elsewhere and not both:
        missing = "write" if seen.flags & 3 == 0 else "read"
        raise Lost(f"{seen.link}, a {'FIFO' if fifo else 'pipe'} whose {missing} end is in "
                   f"{seen.elsewhere}")
    if seen.elsewhere:
        raise Lost(f"{seen.link}, also open in {seen.elsewhere}")
    first = seen is seen.group[0]
    try:
        size, data = buffered(plan.pid, seen.fd) if first else (DEFAULT_SIZE, b"")
    except OSError as error:
        raise RestoreError(f"fd {seen.fd}: reading what {seen.link} holds: "
                           f"{error.strerror}") from None
    return {"inode": seen.ino & 0xFFFFFFFF, "size": size, "path": seen.link if fifo else "",
            "data": data}


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    for entry in entries:
        path = entry.value.path
        if path and not stat.S_ISFIFO(_mode(path)):
            lose(plan, entry, f"the FIFO {path}, gone")


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _groups(entries: list[Entry]) -> dict[tuple[str, int], list[Entry]]:
    groups: dict[tuple[str, int], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.value.path, entry.value.inode), []).append(entry)
    return groups


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    for (path, _), group in _groups(entries).items():
        data = b"".join(entry.value.data for entry in group)
        size = max(entry.value.size for entry in group)
        if path:
            _fifo(ctx, path, group, size, data)
        else:
            _pipe(ctx, group, size, data)


def _set_size(ctx: Restorer, fd: int, size: int, group: list[Entry]) -> None:
    if size != DEFAULT_SIZE:
        result = ctx.inj.raw(FCNTL, fd, F_SETPIPE_SZ, size)
        if sc.is_error(result):
            ctx.warn(f"fd {group[0].fd}: pipe size {size} not set: {sc.errno_text(result)}")


def _pipe(ctx: Restorer, group: list[Entry], size: int, data: bytes) -> None:
    read_end, write_end = ctx.pipe()
    _set_size(ctx, read_end, size, group)
    ctx.write_into(write_end, data, f"fd {group[0].fd}: the pipe's buffered bytes")
    readers = [e for e in group if e.access != O_WRONLY]
    writers = [e for e in group if e.access == O_WRONLY]
    made = ([(read_end, readers[0])] if readers else []) + (
        [(write_end, writers[0])] if writers else [])
    if not readers:
        ctx.inj.raw(sc.CLOSE, read_end)
    if not writers:
        ctx.inj.raw(sc.CLOSE, write_end)
    ctx.place(made)
    for first, rest in ((readers[:1], readers[1:]), (writers[:1], writers[1:])):
        if first:
            ctx.dup_to(first[0].fd, rest)


def _fifo(ctx: Restorer, path: str, group: list[Entry], size: int, data: bytes) -> None:
    inj = ctx.inj
    step = f"opening the FIFO {path}"
    keeper = ctx.aside(ctx.call(sc.OPEN, inj.put_string(path), O_RDWR | O_NONBLOCK | sc.O_CLOEXEC,
                                0, step=step), step)
    _set_size(ctx, keeper, size, group)
    ctx.write_into(keeper, data, f"fd {group[0].fd}: the FIFO's buffered bytes")
    for entry in group:
        fd = ctx.call(sc.OPEN, inj.put_string(path), entry.access | O_NONBLOCK | sc.O_CLOEXEC,
                      0, step=f"opening the FIFO {path} for fd {entry.fd}")
        ctx.place([(fd, entry)])
    inj.raw(sc.CLOSE, keeper)


FDKIND = FdKind(id=ID, name="pipe", record=Record, matches=_matches, dump=_dump, check=_check,
                restore=_restore,
                describe=lambda e: f"{e.value.path or 'pipe'}, {len(e.value.data)} bytes")
