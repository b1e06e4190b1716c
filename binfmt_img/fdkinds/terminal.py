"""A terminal open above fd 2 (/dev/tty, /dev/pts/N, a console): opened again by its path
when that is still the same terminal (the same device number and creation time; /dev/tty
is whatever controlling terminal the restored process has), else Lost ("a terminal that is gone").
O_NOCTTY always: the restore never changes which terminal controls the process."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from construct import Int64ul, PascalString, Struct, VarInt

from binfmt_img.fdkinds import Entry, FdKind, Restorer, Seen, lose
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 9
PATHS = ("/dev/pts/", "/dev/tty", "/dev/console")
CONTROLLING = "/dev/tty"
O_NOCTTY = 0o400
OPEN_ONLY = 0o100 | 0o200 | 0o1000  # O_CREAT, O_EXCL, O_TRUNC
# A pty's number is reused as soon as it is free: its creation time (ctime, which writes
# leave alone) tells a new terminal at the old number from the same one.
Record = Struct("path" / PascalString(VarInt, "utf8"), "rdev" / Int64ul, "ctime_ns" / Int64ul)


def _matches(seen: Seen) -> bool:
    return stat.S_ISCHR(seen.mode) and seen.link.startswith(PATHS)


def _dump(plan: DumpPlan, seen: Seen) -> dict:
    try:
        ctime = os.stat(f"/proc/{plan.pid}/fd/{seen.fd}").st_ctime_ns
    except OSError:
        ctime = 0
    return {"path": seen.link, "rdev": seen.rdev, "ctime_ns": ctime}


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    for entry in entries:
        path = entry.value.path
        try:
            st = os.stat(path)
        except OSError:
            st = None
        v = entry.value
        same = st is not None and stat.S_ISCHR(st.st_mode) and (path == CONTROLLING or (
            st.st_rdev == v.rdev and st.st_ctime_ns == v.ctime_ns))
        if not path.startswith(PATHS) or not same:
            lose(plan, entry, f"the terminal {path}, gone")


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    for entry in entries:
        ctx.inj.reset_data()
        flags = (entry.flags & ~OPEN_ONLY & ~sc.O_CLOEXEC) | O_NOCTTY | sc.O_CLOEXEC
        fd = ctx.call(sc.OPEN, ctx.inj.put_string(entry.value.path), flags, 0,
                      step=f"opening the terminal {entry.value.path} for fd {entry.fd}")
        ctx.place([(fd, entry)])


FDKIND = FdKind(id=ID, name="terminal", record=Record, matches=_matches, dump=_dump,
                check=_check, restore=_restore, describe=lambda e: e.value.path)
