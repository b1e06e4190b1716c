"""Descriptors beyond regular files, one module per kind (pipe, eventfd, epoll...).

The regular files, directories and devices of binfmt_img/live/files.py are reopened by path; what
has no path (a pipe, an eventfd, a socket pair...) is made again by the system call that made
it, at the same number, with the same status flags (O_NONBLOCK...), close-on-exec and state.
Each module here defines `FDKIND`, an `FdKind` holding side by side:
- `matches(seen)`: whether it takes a descriptor, from what /proc/PID/fd/N links to;
- `record`: a construct Struct of the kind's own data (its bytes in the entry's `data`);
- `dump(plan, seen)`: the value to record, read from /proc/PID/fdinfo/N, from /proc/PID/fd/N
  opened by the debugger, or by calls the inferior makes (`plan.injector`); it raises `Lost`
  for a descriptor that cannot come back (the dump records the loss, the restore names it);
- `check(plan, entries)`: refusals and warnings before any change;
- `restore(ctx, entries)`: every entry of the kind at once (a pipe's two ends are made by one
  call), in `order` (epoll after what it watches).
The whole fd table is one state kind, "descriptors" (binfmt_img/state/descriptors.py).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from binfmt_img.errors import RestoreError
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

FCNTL, IOCTL = 72, 16
F_DUPFD_CLOEXEC, F_SETFD, F_SETFL = 1030, 2, 4
FD_CLOEXEC = 1
O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
O_NONBLOCK, O_APPEND, O_DIRECT, O_ASYNC, O_NOATIME = 0o4000, 0o2000, 0o40000, 0o20000, 0o1000000
O_CLOEXEC = 0o2000000
SETFL_MASK = O_APPEND | O_NONBLOCK | O_DIRECT | O_ASYNC | O_NOATIME  # what F_SETFL changes
PIPE2 = 293


class Lost(Exception):
    """A descriptor that cannot come back; the message says what it is and why."""


@dataclass
class Seen:
    """One descriptor of the dumped process as /proc shows it."""

    fd: int
    link: str  # what /proc/PID/fd/N links to: "pipe:[1234]", "anon_inode:[eventfd]"
    flags: int
    pos: int
    info: dict[str, str]  # /proc/PID/fdinfo/N, "key: value" lines
    lines: list[str]  # the same, line by line (epoll's and inotify's repeat their keys)
    ino: int = 0
    dev: int = 0
    mode: int = 0
    rdev: int = 0  # a device's number
    group: list[Seen] = field(default_factory=list)  # every fd of the same file, this included
    elsewhere: str | None = None  # another process holding the same pipe or socket
    everyone: list[Seen] = field(default_factory=list)  # every descriptor seen at this dump

    def number(self, key: str, base: int = 10) -> int:
        return int(self.info[key].strip(), base)


@dataclass
class Entry:
    """One recorded descriptor: the fields every kind has, and the kind's parsed value."""

    fd: int
    kind: int
    flags: int
    pos: int
    value: Any
    lost: str | None = None  # set by a check that finds it cannot come back: what it was

    @property
    def cloexec(self) -> int:
        return self.flags & O_CLOEXEC

    @property
    def access(self) -> int:
        return self.flags & O_ACCMODE


def lose(plan: RestorePlan, entry: Entry, what: str) -> None:
    """entry cannot come back: named in plan.losses; accepted, it becomes a dead pipe end."""
    if entry.lost is not None:
        return
    entry.lost = what
    after = "writes fail (EPIPE)" if entry.access == O_WRONLY else "reads give end of file"
    plan.losses.append(f"fd {entry.fd} ({what}; if accepted, {after})")


@dataclass(frozen=True)
class FdKind:
    id: int
    name: str
    record: Any
    matches: Callable[[Seen], bool]
    dump: Callable[[DumpPlan, Seen], Any]
    restore: Callable[[Restorer, list[Entry]], None]
    check: Callable[[RestorePlan, list[Entry]], None] = lambda _plan, _entries: None
    order: int = 0  # lower first: what others refer to (epoll's watched fds) comes before
    describe: Callable[[Entry], str] = lambda entry: ""


@dataclass
class Restorer:
    """What a kind's restore works with: the plan, and placing a new descriptor at its number."""

    plan: RestorePlan
    high: int  # a number above every recorded descriptor, for moving one out of the way
    files: set[int] = field(default_factory=set)  # fds binfmt_img/live/files.py reopened, and 0-2
    placed: set[int] = field(default_factory=set)

    @property
    def inj(self):  # noqa: ANN201 - the plan's Injector
        return self.plan.injector

    def warn(self, text: str) -> None:
        self.plan.report.warnings.append(text)

    def call(self, nr: int, *args: int, step: str) -> int:
        return self.inj.call(nr, *args, step=step)

    def place(self, made: list[tuple[int, Entry]]) -> None:
        """Move each just-made descriptor to its entry's number, with its close-on-exec and
        status flags. One of a group may have landed on another's number: moved away first."""
        targets = {entry.fd for _, entry in made}
        moved = []
        for temp, entry in made:
            if temp in targets and temp != entry.fd:
                new = self.call(FCNTL, temp, F_DUPFD_CLOEXEC, self.high,
                                step=f"moving a new descriptor for fd {entry.fd}")
                self.inj.raw(sc.CLOSE, temp)
                temp = new
            moved.append((temp, entry))
        for temp, entry in moved:
            self.put_at(temp, entry)
            if temp != entry.fd:
                self.inj.raw(sc.CLOSE, temp)

    def aside(self, fd: int, what: str) -> int:
        """A helper descriptor kept open while others are placed, moved above every number
        to be placed (where it would be overwritten, or close a placed one at its end)."""
        moved = self.call(FCNTL, fd, F_DUPFD_CLOEXEC, self.high, step=what)
        self.inj.raw(sc.CLOSE, fd)
        return moved

    def put_at(self, temp: int, entry: Entry) -> None:
        """temp (still open) is also at entry.fd afterwards, with entry's fd and status flags."""
        step = f"placing fd {entry.fd}"
        if temp != entry.fd:
            self.call(sc.DUP3, temp, entry.fd, entry.cloexec, step=step)
        else:
            self.call(FCNTL, temp, F_SETFD, FD_CLOEXEC if entry.cloexec else 0, step=step)
        self.call(FCNTL, entry.fd, F_SETFL, entry.flags & SETFL_MASK, step=step)
        self.placed.add(entry.fd)

    def dup_to(self, source: int, entries: list[Entry]) -> None:
        """More descriptors of one open file (dup'd in the program): the same file again."""
        for entry in entries:
            self.put_at(source, entry)

    def write_into(self, fd: int, data: bytes, what: str) -> None:
        """Write data through the inferior's fd (a pipe's write end, a memfd): the debugger
        opens /proc/PID/fd/N, the same file, and writes there: one step, whatever the size."""
        if not data:
            return
        where = f"/proc/{self.plan.pid}/fd/{fd}"
        try:
            out = os.open(where, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            raise RestoreError(f"{what}: opening {where}: {error.strerror}") from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
        except OSError as error:
            raise RestoreError(f"{what}: writing {len(data)} bytes back: "
                               f"{error.strerror}") from None
        finally:
            os.close(out)

    def pipe(self, flags: int = 0) -> tuple[int, int]:
        """A new pipe in the inferior: (read end, write end)."""
        at = self.inj.reserve(8)
        self.call(PIPE2, at, flags | O_CLOEXEC, step="making a pipe")
        data = self.plan.target.read_memory(at, 8)
        return int.from_bytes(data[:4], "little"), int.from_bytes(data[4:], "little")


def _discover() -> tuple[FdKind, ...]:
    kinds: dict[int, FdKind] = {}
    for module in pkgutil.iter_modules(__path__):
        kind = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FDKIND", None)
        if kind is not None:
            assert kind.id not in kinds, f"fd kind id {kind.id} used twice"
            kinds[kind.id] = kind
    return tuple(kinds[i] for i in sorted(kinds))


FDKINDS: tuple[FdKind, ...] = _discover()
BY_ID = {kind.id: kind for kind in FDKINDS}
