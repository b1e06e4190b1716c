"""The checkpoint's pid for a process LLDB launches.

GDB forks the inferior itself, so the next pid the kernel hands out is the inferior's
(pids.ask_next_pid). LLDB does not: it starts lldb-server, which starts threads and runs
`lsb_release` through a shell twice (some thirty short-lived tasks) before it forks the
inferior; how many depends on the system, and other processes create tasks meanwhile. So
rather than set the kernel's last pid once and count on a number of tasks, a helper holds it
while LLDB launches: a shell loop writes it to ns_last_pid over and over (`echo` is a
builtin: no task of its own). Each task created meanwhile gets the lowest free pid above the
held value. The short-lived ones are gone again by the time lldb-server forks the inferior
(each is waited for); what stays are a few threads LLDB and lldb-server start during the
launch (3 with lldb-19), which take the pids just below the checkpoint's when the held value
leaves that many free pids below it. The fork then gets the checkpoint's pid, however many
short-lived tasks came before. Still, every task created on the system while the pid is held
goes there too: on a busy system a launch can miss; it is then killed and tried again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from binfmt_img.live.pids import NS_LAST_PID

T = TypeVar("T")
_LOOP = 'while :; do echo "$0" > ' + NS_LAST_PID + "; done"


class _Threads:
    """Tasks a launch leaves alive below the inferior (LLDB's and lldb-server's threads:
    3 with lldb-19, measured with the helper holding pid - 1)."""

    count = 3


def _free_below(pid: int, count: int) -> int | None:
    """The lowest of the `count` free pids just below `pid` (pid itself when count is 0)."""
    at, free = pid, 0
    while free < count:
        at -= 1
        if at < 2:
            return None
        free += not os.path.exists(f"/proc/{at}")
    return at


@contextmanager
def pid_held(pid: int, below: int = 0) -> Iterator[bool]:
    """While the block runs, a task created gets the lowest free pid from `below` free pids
    under `pid` up; yields False when that cannot be arranged (pid taken or out of range,
    no privilege)."""
    start = _free_below(pid, below)
    if start is None or not pid < _pid_max() or os.path.exists(f"/proc/{pid}"):
        yield False
        return
    # Started before any write: the holder's own task must not take the pid.
    holder = subprocess.Popen(["/bin/sh", "-c", _LOOP, str(start - 1)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, close_fds=True)
    try:
        yield _holding(start - 1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22


def _holding(last: int, wait: float = 0.5) -> bool:
    """Whether the holder's writes take (they fail without CAP_SYS_ADMIN or
    CAP_CHECKPOINT_RESTORE, or out of range)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open(NS_LAST_PID) as f:
                if int(f.read()) == last:
                    return True
        except (OSError, ValueError):
            return False
        time.sleep(0.002)
    return False


def _free_soon(pid: int, wait: float = 0.5) -> bool:
    """Whether `pid` is free, or soon: a task of a launch just killed may linger, and a
    thread of LLDB's own for the killed process ends when the next launch replaces it."""
    deadline = time.monotonic() + wait
    while os.path.exists(f"/proc/{pid}") and not os.path.exists(f"/proc/self/task/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def launch_with_pid(launch: Callable[[], T], pid_of: Callable[[T], int],
                    kill: Callable[[T], bool], pid: int | None, tries: int = 4) -> T:
    """launch() with `pid` held (pid_held); a process that got another pid is killed and
    launched again, a few times; the last one is kept whatever its pid (the restore then
    warns that the pid differs)."""
    for attempt in range(tries):
        if not pid or not _free_soon(pid):
            return launch()
        with pid_held(pid, _Threads.count) as held:
            process = launch()
        if not held or pid_of(process) == pid or attempt == tries - 1:
            return process
        # Another task took it meanwhile (a busy system: every task created while the pid
        # is held goes there); the thread count is LLDB's own and stays.
        if not kill(process):
            return process
    raise AssertionError("unreachable")
