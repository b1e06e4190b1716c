"""Descriptors beyond regular files (binfmt_img/fdkinds/: pipes, eventfd, timerfd, epoll,
signalfd, memfd, unix socket pairs, inotify), and the standard streams' rule
(binfmt_img/fdkinds/stdio.py). One entry per descriptor above 2 that files.py cannot reopen by
path: its number, fd kind, flags (fdinfo's, O_CLOEXEC included), offset, and the kind's own
record. A descriptor no kind can bring back is recorded as lost (kind 0, with what it was):
the restore names it in plan.losses.

Restored in the "late" phase: files.py has closed the inferior's descriptors and reopened the
image's files by then, and timerfds start their remaining time as late as possible."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING

from construct import (
    GreedyBytes,
    Int16ul,
    Int32ul,
    Int64ul,
    Prefixed,
    PrefixedArray,
    Struct,
    VarInt,
)

from binfmt_img import fdkinds
from binfmt_img.errors import ImageError
from binfmt_img.fdkinds import Entry, Lost, Restorer, Seen, lost, stdio
from binfmt_img.live.files import FD_OTHER, STANDARD_FDS, read_open_files
from binfmt_img.live.procfs import holders
from binfmt_img.state import ORDER_MAKE, Kind

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 40
MAX_FD = 1 << 20  # the kernel's own ceiling on RLIMIT_NOFILE
RecordEntry = Struct("fd" / Int32ul, "kind" / Int16ul, "flags" / Int32ul, "pos" / Int64ul,
                     "data" / Prefixed(VarInt, GreedyBytes))
Record = Struct("entries" / PrefixedArray(VarInt, RecordEntry))


# ---- dump ----

def _seen(pid: int, fd: int, link: str, flags: int, pos: int) -> Seen | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            lines = f.read().splitlines()
        st = os.stat(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    info = dict(line.split(":", 1) for line in lines if ":" in line)
    return Seen(fd, link, flags, pos, info, lines, st.st_ino, st.st_dev, st.st_mode,
                st.st_rdev)


def dump(plan: DumpPlan) -> dict | None:
    if plan.fmt != "v1":
        return None
    _, files = read_open_files(plan.pid)
    seen = [s for f in files if f.kind == FD_OTHER and f.fd >= STANDARD_FDS
            for s in [_seen(plan.pid, f.fd, f.path, f.flags, f.pos)] if s is not None]
    groups: dict[tuple[int, int], list[Seen]] = defaultdict(list)
    for s in seen:
        groups[(s.dev, s.ino)].append(s)
        s.group = groups[(s.dev, s.ino)]
    elsewhere = holders({s.link for s in seen}, {plan.pid})
    entries = []
    for s in seen:
        s.elsewhere, s.everyone = elsewhere.get(s.link), seen
        entries.append(_dump_one(plan, s))
    return {"entries": entries}


def _dump_one(plan: DumpPlan, seen: Seen) -> dict:
    kind = next((k for k in fdkinds.FDKINDS if k.matches(seen)), None)
    try:
        if kind is None:
            raise Lost(seen.link)
        data = kind.record.build(kind.dump(plan, seen))
    except Lost as why:
        kind, data = lost.FDKIND, _lost(plan, seen, str(why))
    except (KeyError, ValueError) as error:  # an fdinfo this version does not understand
        kind, data = lost.FDKIND, _lost(plan, seen, f"{seen.link}, whose fdinfo was not "
                                                    f"understood ({error})")
    return {"fd": seen.fd, "kind": kind.id, "flags": seen.flags, "pos": seen.pos, "data": data}


def _lost(plan: DumpPlan, seen: Seen, what: str) -> bytes:
    plan.report.warnings.append(f"fd {seen.fd} ({what}) cannot be restored: a restore will "
                                "name it and refuse unless --accept-loss")
    return lost.Record.build({"what": what})


# ---- restore ----

def entries(value) -> list[Entry]:  # noqa: ANN001 - the parsed record
    """The recorded entries with each kind's value parsed; an unknown kind is kept as lost."""
    out = []
    for raw in value.entries:
        kind = fdkinds.BY_ID.get(raw.kind)
        if kind is None:
            parsed = lost.Record.parse(lost.Record.build(
                {"what": f"a descriptor of fd kind {raw.kind}, unknown to this version"}))
            out.append(Entry(raw.fd, lost.ID, raw.flags, raw.pos, parsed))
            continue
        try:
            parsed = kind.record.parse(raw.data)
        except Exception as error:  # construct raises many kinds
            raise ImageError(f"descriptors state: fd {raw.fd} ({kind.name}): {error}") from None
        out.append(Entry(raw.fd, raw.kind, raw.flags, raw.pos, parsed))
    return out


def _by_kind(all_entries: list[Entry]) -> dict[int, list[Entry]]:
    by: dict[int, list[Entry]] = defaultdict(list)
    for entry in all_entries:
        by[entry.kind].append(entry)
    return by


def check(plan: RestorePlan, value) -> None:  # noqa: ANN001
    stdio.check(plan)
    if plan.image.files is None:
        return  # a remote inferior: files.py said descriptors are not restored there
    all_entries = entries(value)
    taken = {f.fd for f in plan.image.files if f.kind != FD_OTHER}
    numbers = [e.fd for e in all_entries]
    for entry in all_entries:
        if not STANDARD_FDS <= entry.fd < MAX_FD or entry.fd in taken:
            raise ImageError(f"descriptors state: fd {entry.fd} cannot be restored there")
    if len(set(numbers)) != len(numbers):
        raise ImageError("descriptors state: a descriptor recorded twice")
    for f in plan.image.files:  # opened between the two reads of the fd table at the dump
        if f.kind == FD_OTHER and f.fd >= STANDARD_FDS and f.fd not in numbers:
            plan.losses.append(f"fd {f.fd} ({f.path}, not recorded)")
    for kind_id, group in _by_kind(all_entries).items():
        fdkinds.BY_ID[kind_id].check(plan, group)
    plan.descriptor_entries = [_as_lost(e) if e.lost is not None else e for e in all_entries]


def _as_lost(entry: Entry) -> Entry:
    """An entry a check found cannot come back, to be replaced as a lost one."""
    value = lost.Record.parse(lost.Record.build({"what": entry.lost}))
    return Entry(entry.fd, lost.ID, entry.flags, entry.pos, value, entry.lost)


def restore(plan: RestorePlan, value) -> None:  # noqa: ANN001
    all_entries = getattr(plan, "descriptor_entries", None)
    if all_entries is not None:
        files = {f.fd for f in plan.image.files or []}
        ctx = Restorer(plan, high=max([e.fd for e in all_entries] + [2]) + 1,
                       files=files | set(range(STANDARD_FDS)))
        by = _by_kind(all_entries)
        for kind in sorted((fdkinds.BY_ID[k] for k in by), key=lambda k: (k.order, k.id)):
            plan.injector.reset_data()
            kind.restore(ctx, by[kind.id])
    stdio.restore(plan)


def _describe(value) -> str:  # noqa: ANN001
    parts = []
    for entry in entries(value):
        kind = fdkinds.BY_ID[entry.kind]
        detail = kind.describe(entry)
        parts.append(f"fd {entry.fd} {kind.name}" + (f" ({detail})" if detail else ""))
    return "; ".join(parts) or "none beyond files"


KIND = Kind(id=ID, name="descriptors", record=Record, dump=dump, check=check, restore=restore,
            phase="late", describe=_describe,
            order=ORDER_MAKE)
