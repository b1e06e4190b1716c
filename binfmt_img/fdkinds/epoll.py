"""epoll: every registered descriptor with its events and data (fdinfo "tfd: N events: E
data: D"), added again with epoll_ctl once every other descriptor is back (order 1; an epoll
watching another epoll comes after it). What is ready is the kernel's to find again: an
edge-triggered descriptor that was ready reports once more after the restore."""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING

from construct import Int32sl, Int32ul, Int64ul, PrefixedArray, Struct, VarInt

from binfmt_img.fdkinds import Entry, FdKind, Restorer, Seen
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 4
EPOLL_CREATE1, EPOLL_CTL = 291, 233
EPOLL_CTL_ADD = 1
Watch = Struct("fd" / Int32sl, "events" / Int32ul, "data" / Int64ul)
Record = Struct("watches" / PrefixedArray(VarInt, Watch))
LINE = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)")


def _dump(_plan: DumpPlan, seen: Seen) -> dict:
    watches = []
    for line in seen.lines:
        found = LINE.match(line)
        if found:
            watches.append({"fd": int(found[1]), "events": int(found[2], 16),
                            "data": int(found[3], 16)})
    return {"watches": watches}


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    recorded = {f.fd for f in plan.image.files or []}
    for entry in entries:
        for watch in entry.value.watches:
            if watch.fd not in recorded:
                plan.report.warnings.append(f"fd {entry.fd}: the epoll's watch of fd "
                                            f"{watch.fd}, no longer open at the dump, is left out")


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    made = {}
    for entry in entries:
        made[entry.fd] = ctx.call(EPOLL_CREATE1, sc.O_CLOEXEC,
                                  step=f"making the epoll of fd {entry.fd}")
    ctx.place([(made[e.fd], e) for e in entries])
    epolls = {e.fd for e in entries}
    # Plain descriptors first, then the epolls this one watches (nested epolls, rare).
    pending = [(e, w) for e in entries for w in e.value.watches]
    pending.sort(key=lambda item: item[1].fd in epolls)
    for entry, watch in pending:
        if watch.fd not in ctx.placed and watch.fd not in ctx.files:
            continue  # warned about at the check
        ctx.inj.reset_data()
        event = ctx.inj.put(struct.pack("<IQ", watch.events, watch.data))
        result = ctx.inj.raw(EPOLL_CTL, entry.fd, EPOLL_CTL_ADD, watch.fd, event)
        if sc.is_error(result):
            ctx.warn(f"fd {entry.fd}: the epoll's watch of fd {watch.fd} was not added "
                     f"again: {sc.errno_text(result)}")


FDKIND = FdKind(id=ID, name="epoll", record=Record, dump=_dump, check=_check, restore=_restore,
                order=1, matches=lambda seen: seen.link == "anon_inode:[eventpoll]",
                describe=lambda e: ", ".join(f"fd {w.fd} events {w.events:#x} data {w.data:#x}"
                                             for w in e.value.watches) or "nothing watched")
