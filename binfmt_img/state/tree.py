"""The process tree (binfmt_img/tree): recorded in the root's image by `img-dump --tree`.

Its check, in a process restored as part of a tree (plan.tree set by the front end), takes
back the losses the tree brings back (its children, its pipes to them) and keeps the pipes
the tree made (held at high numbers) open through files.py's closing of descriptors. Its late
restore makes those pipes in the root (once, with their bytes) and puts each process's ends
at their numbers. Restored alone (LLDB, or a front end without trees), the tree is a loss.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import TYPE_CHECKING

from binfmt_img import tree
from binfmt_img.errors import RestoreError
from binfmt_img.fdkinds import (
    F_DUPFD_CLOEXEC,
    F_SETFL,
    FCNTL,
    O_CLOEXEC,
    O_NONBLOCK,
    O_RDWR,
    O_WRONLY,
    PIPE2,
    SETFL_MASK,
    Lost,
    Restorer,
    unix,
)
from binfmt_img.live import syscalls as sc
from binfmt_img.state import Kind

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 60
F_SETPIPE_SZ = 1031
DEFAULT_SIZE = 65536


def dump(plan: DumpPlan) -> dict | None:
    """Peeks at what the tree's socket pairs hold on this process's ends; the root's dump
    also records the tree (the other processes were dumped first)."""
    for fd, sock_type, key in tree.PEEK.pop(plan.pid, []):
        try:
            tree.PEEKED[key] = unix.peek_all(plan, fd, sock_type)
        except Lost as why:
            raise RestoreError(f"fd {fd}: {why}") from None
    record = tree.PENDING.pop(plan.pid, None)
    if record is not None:
        for pair in record["sockets"]:
            pair["queued"] = [tree.PEEKED.pop((pair["inodes"][0], side), [])
                              for side in (0, 1)]
    return record


def check(plan: RestorePlan, value) -> None:  # noqa: ANN001 - the parsed record
    tree.validate(value)
    ctx = getattr(plan, "tree", None)
    if ctx is None:
        others = [p.pid for p in value.processes[1:]]
        plan.losses.append(
            f"the process tree ({len(others)} more processes: pids "
            f"{', '.join(map(str, others))}, and {len(value.pipes) + len(value.sockets)} pipes "
            "and socket pairs between them): a "
            "tree comes back only through GDB's img-restore, one inferior per process")
        return
    if ctx.root:
        for pipe in value.pipes:
            if pipe.path and not _is_fifo(pipe.path):
                plan.losses.append(f"the FIFO {pipe.path} of the process tree, gone")
    mine = {fd for _, fd, _ in ctx.my_ends()}
    children = {p.pid for p in value.processes if p.ppid == ctx.pid}
    plan.losses[:] = [loss for loss in plan.losses
                      if not _taken_back(loss, children, mine)]
    temps = set(ctx.temps())
    plan.live_fds = [fd for fd in plan.live_fds if fd not in temps]


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _taken_back(loss: str, children: set[int], fds: set[int]) -> bool:
    return any(loss.startswith(f"child process {pid} (") for pid in children) or any(
        loss.startswith(f"fd {fd} (") for fd in fds)


def restore(plan: RestorePlan, value) -> None:  # noqa: ANN001
    ctx = getattr(plan, "tree", None)
    if ctx is None:
        return
    if ctx.root:
        above = ctx.temps()[-1] + 1
        for i, pipe in enumerate(value.pipes):
            _make_pipe(plan, pipe, ctx.temp_base + 2 * i, above)
        for j, pair in enumerate(value.sockets):
            _make_pair(plan, pair, ctx.socket_temp(j), above)
    inj = plan.injector
    for temp, fd, flags in ctx.my_ends():
        step = f"placing fd {fd} (a pipe of the process tree)"
        inj.call(sc.DUP3, temp, fd, flags & O_CLOEXEC, step=step)
        inj.call(FCNTL, fd, F_SETFL, flags & SETFL_MASK, step=step)


def _make_pipe(plan: RestorePlan, pipe, temp: int, above: int) -> None:  # noqa: ANN001
    if pipe.path and _is_fifo(pipe.path):  # gone (an accepted loss): an ordinary pipe
        return _make_fifo(plan, pipe, temp, above)
    inj = plan.injector
    inj.reset_data()
    at = inj.reserve(8)
    inj.call(PIPE2, at, O_CLOEXEC, step=f"making pipe:[{pipe.inode}] of the process tree")
    ends = plan.target.read_memory(at, 8)
    made = (int.from_bytes(ends[:4], "little"), int.from_bytes(ends[4:], "little"))
    if pipe.size != DEFAULT_SIZE:
        result = inj.raw(FCNTL, made[0], F_SETPIPE_SZ, pipe.size)
        if sc.is_error(result):
            plan.report.warnings.append(f"pipe:[{pipe.inode}]: size {pipe.size} not set: "
                                        f"{sc.errno_text(result)}")
    _write(plan.pid, made[1], bytes(pipe.data), pipe.inode)
    _hold(plan, made, temp, above)


def _make_fifo(plan: RestorePlan, pipe, temp: int, above: int) -> None:  # noqa: ANN001
    """A FIFO opened again by its path: first read-write (no open blocks, and the bytes go
    back through it), then a read end and a write end to hold."""
    inj = plan.injector
    inj.reset_data()
    path = inj.put_string(pipe.path)
    step = f"opening the FIFO {pipe.path} of the process tree"
    flags = O_NONBLOCK | O_CLOEXEC | sc.O_NOBLOCK_NOTTY
    keeper = inj.call(sc.OPEN, path, O_RDWR | flags, 0, step=step)
    if pipe.size != DEFAULT_SIZE:
        result = inj.raw(FCNTL, keeper, F_SETPIPE_SZ, pipe.size)
        if sc.is_error(result):
            plan.report.warnings.append(f"{pipe.path}: size {pipe.size} not set: "
                                        f"{sc.errno_text(result)}")
    _write(plan.pid, keeper, bytes(pipe.data), pipe.inode)
    made = (inj.call(sc.OPEN, path, flags, 0, step=step),
            inj.call(sc.OPEN, path, O_WRONLY | flags, 0, step=step))
    inj.raw(sc.CLOSE, keeper)
    _hold(plan, made, temp, above)


def _make_pair(plan: RestorePlan, pair, temp: int, above: int) -> None:  # noqa: ANN001
    inj = plan.injector
    inj.reset_data()
    at = inj.reserve(8)
    step = f"making the socket pair socket:[{pair.inodes[0]}] of the process tree"
    inj.call(unix.SOCKETPAIR, socket.AF_UNIX, pair.type | sc.O_CLOEXEC, 0, at, step=step)
    ends = plan.target.read_memory(at, 8)
    made = (int.from_bytes(ends[:4], "little"), int.from_bytes(ends[4:], "little"))
    ctx = Restorer(plan, high=above)
    for side, sender in ((0, made[1]), (1, made[0])):  # each side's data sent from the other
        for message in pair.queued[side]:
            unix.send_message(ctx, sender, bytes(message), step)
    _hold(plan, made, temp, above)


def _hold(plan: RestorePlan, made: tuple[int, int], temp: int, above: int) -> None:
    """The two new descriptors made held at temp and temp + 1."""
    inj = plan.injector
    step = "holding a pipe or socket of the tree"
    # Both moved above every temporary number first: they may have landed on them.
    high = [inj.call(FCNTL, fd, F_DUPFD_CLOEXEC, above, step=step) for fd in made]
    for fd in made:
        inj.raw(sc.CLOSE, fd)
    for offset, fd in enumerate(high):
        inj.call(sc.DUP3, fd, temp + offset, O_CLOEXEC, step=step)
        inj.raw(sc.CLOSE, fd)


def _write(pid: int, fd: int, data: bytes, inode: int) -> None:
    """The buffered bytes, written through /proc/PID/fd/N by the debugger: one step."""
    if not data:
        return
    try:
        out = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
        finally:
            os.close(out)
    except OSError as error:
        raise RestoreError(f"pipe:[{inode}]: writing its {len(data)} buffered bytes back: "
                           f"{error.strerror}") from None


def describe(value) -> str:  # noqa: ANN001
    procs = ", ".join(f"{p.pid}{' (zombie)' if p.zombie else ''}" for p in value.processes)
    return (f"processes {procs}; {len(value.pipes)} shared pipes, {len(value.sockets)} "
            "shared socket pairs")


KIND = Kind(id=ID, name="tree", record=tree.Record, dump=dump, check=check, restore=restore,
            phase="late", describe=describe, order=20)
