"""The checkpoint's pid for the process a restore starts, where the user may arrange it.

Programs keep their pid: python's asyncio compares the pid its loop started in with
getpid() and finds no running loop in a process with another pid; lock files and logs hold
it. A restore cannot change the pid of a process, but it can ask that the process it is about
to start gets the checkpoint's: writing pid - 1 to /proc/sys/kernel/ns_last_pid makes the
kernel give `pid` to the next task it creates, when that pid is free. That needs
CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE; without them, or when something else took the pid
first, the process gets another pid and the restore says so (RestorePlan's check).
"""

from __future__ import annotations

import os

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
PID_MAX = "/proc/sys/kernel/pid_max"


def _pid_max() -> int:
    try:
        with open(PID_MAX) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22


def ask_next_pid(pid: int, before: int = 1) -> bool:
    """Arrange that the `before`-th task created from now gets `pid` (a debugger may create
    helper tasks before the inferior). False when it cannot be arranged: pid taken, out of
    range, or no privilege. Best effort: another task created meanwhile takes it."""
    if not 1 + before < pid < _pid_max() or os.path.exists(f"/proc/{pid}"):
        return False
    try:
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - before))
    except OSError:
        return False
    return True
