"""The standard streams (fds 0, 1, 2) at a restore: what the user expects.

- A stream that was a regular file (or /dev/null) at the checkpoint is that file again, at
  its offset: an input file is read on from where the program was, an output file is
  written on after what the program wrote, never truncated (it is opened again with the
  flags it had, O_APPEND included, minus O_TRUNC/O_CREAT).
- Unless the user redirected that stream in the debugger for this run (`run < in`,
  `set args > out`): the live stream is then a regular file, and the user's choice is kept
  (a live /dev/null is what a debugger without a terminal gives: not taken as a choice).
  The very file of the checkpoint is moved to the checkpoint's offset (a `> out` that
  emptied it is named in a warning); another file stays as given, with a warning naming
  the stream.
- A terminal stays the debugger's (the user's terminal now). A pipe or socket stays the
  debugger's when the debugger gives one too (the same plumbing), else a warning names it.
- Any other difference (the file gone or replaced, a stream closed at the checkpoint but
  open now) is a warning naming the stream; none is refused.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from binfmt_img.formats.model import FD_DEVICE, FD_FILE, OpenFile
from binfmt_img.live import syscalls as sc
from binfmt_img.live.files import DEVICES

if TYPE_CHECKING:
    from binfmt_img.live.restore import RestorePlan

NAMES = ("stdin", "stdout", "stderr")
OPEN_ONLY = 0o100 | 0o200 | 0o400 | 0o1000  # O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC
O_APPEND = 0o2000
SEEK_SET = 0


@dataclass
class Reopen:
    fd: int
    path: str
    flags: int
    pos: int  # -1: keep the offset the open gives
    seek_only: bool = False  # the live stream is already this file: only move its offset


def _sort(link: str | None, mode: int) -> str:
    if link is None:
        return "closed"
    if stat.S_ISREG(mode):
        return "file"
    if link.startswith(("/dev/pts/", "/dev/tty", "/dev/console")):
        return "terminal"
    if link.startswith("pipe:["):
        return "pipe"
    if link.startswith("socket:["):
        return "socket"
    return "device" if stat.S_ISCHR(mode) else "other"


def _live(pid: int, fd: int) -> tuple[str | None, os.stat_result | None]:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}"), os.stat(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None, None


def check(plan: RestorePlan) -> None:
    """Decide, before any change, what happens to each stream (plan.stdio_reopen)."""
    plan.stdio_reopen = []
    if plan.image.files is None:
        return
    recorded = {f.fd: f for f in plan.image.files if f.fd < len(NAMES)}
    for fd, name in enumerate(NAMES):
        note = _decide(plan, fd, recorded.get(fd))
        if note:
            plan.report.warnings.append(f"{name}: {note}")


def _decide(plan: RestorePlan, fd: int, f: OpenFile | None) -> str | None:
    link, st = _live(plan.pid, fd)
    live = _sort(link, st.st_mode if st else 0)
    if f is None:
        return None if live == "closed" else f"closed at the checkpoint, now the debugger's {link}"
    if f.kind not in (FD_FILE, FD_DEVICE):
        was = _sort(f.path, 0)
        if was in ("terminal", live) or (was == "other" and live == "terminal"):
            return None
        if live == "file":
            return f"kept as the debugger was told ({link}); at the checkpoint it was {f.path}"
        return f"was {f.path} at the checkpoint, which cannot be opened again; it is {link}"
    where = f"{f.path}" + (f" at offset {f.pos}" if f.kind == FD_FILE else "")
    try:
        now = os.stat(f.path)
    except OSError as error:
        return f"{where} at the checkpoint is gone ({error.strerror}); it stays {link}"
    same_file = f.file is None or (now.st_ino, now.st_dev) == (f.file.inode, f.file.device)
    if f.kind == FD_DEVICE and f.path not in DEVICES:
        return f"{f.path} is not a device the restore opens; it stays {link}"
    if live == "file" and st is not None:
        if (st.st_ino, st.st_dev) != (now.st_ino, now.st_dev):
            return f"kept as the debugger was told ({link}); at the checkpoint it was {where}"
        if f.kind == FD_FILE and same_file:
            return _same(plan, fd, f, now)
        return None
    if not same_file:
        return f"{where} was replaced since the checkpoint; it stays the debugger's {link}"
    note = None
    if f.kind == FD_FILE and f.flags & 3 and now.st_size < f.pos:
        note = (f"{f.path} holds {now.st_size} bytes, fewer than the {f.pos} written at the "
                "checkpoint: reopened, written on at the checkpoint's offset")
    plan.stdio_reopen.append(Reopen(fd, f.path, f.flags & ~OPEN_ONLY,
                                    f.pos if f.kind == FD_FILE else -1))
    return note


def _same(plan: RestorePlan, fd: int, f: OpenFile, now: os.stat_result) -> str | None:
    """The user redirected the stream to the checkpoint's own file: on from its offset."""
    if f.flags & 3 and now.st_size < f.pos:
        return (f"{f.path} holds {now.st_size} bytes, fewer than the {f.pos} written at the "
                "checkpoint (emptied by the debugger's redirection?): written on from its end")
    plan.stdio_reopen.append(Reopen(fd, f.path, f.flags, f.pos, seek_only=True))
    return None


def restore(plan: RestorePlan) -> None:
    inj = plan.injector
    for r in getattr(plan, "stdio_reopen", []):
        name = NAMES[r.fd]
        if not r.seek_only:
            inj.reset_data()
            temp = inj.call(sc.OPEN, inj.put_string(r.path), r.flags | sc.O_CLOEXEC, 0,
                            step=f"reopening {name} ({r.path})")
            inj.call(sc.DUP3, temp, r.fd, 0, step=f"reopening {name} ({r.path})")
            inj.raw(sc.CLOSE, temp)
        if r.pos >= 0 and not r.flags & O_APPEND:
            result = inj.raw(sc.LSEEK, r.fd, r.pos, SEEK_SET)
            if sc.is_error(result):
                plan.report.warnings.append(f"{name}: offset {r.pos} in {r.path} not "
                                            f"restored: {sc.errno_text(result)}")
