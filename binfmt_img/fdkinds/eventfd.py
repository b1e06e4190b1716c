"""eventfd: its counter and EFD_SEMAPHORE (fdinfo "eventfd-count", hexadecimal, and
"eventfd-semaphore"); made again by eventfd2, the count written in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import Flag, Int64ul, Struct

from .. import syscalls as sc
from . import Entry, FdKind, Restorer, Seen

if TYPE_CHECKING:
    from ..dump import DumpPlan

ID = 2
EVENTFD2 = 290
EFD_SEMAPHORE = 1
Record = Struct("count" / Int64ul, "semaphore" / Flag)


def _dump(_plan: DumpPlan, seen: Seen) -> dict:
    semaphore = seen.info.get("eventfd-semaphore", "0").strip() == "1"
    return {"count": seen.number("eventfd-count", 16), "semaphore": semaphore}


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    for entry in entries:
        flags = sc.O_CLOEXEC | (EFD_SEMAPHORE if entry.value.semaphore else 0)
        fd = ctx.call(EVENTFD2, 0, flags, step=f"making the eventfd of fd {entry.fd}")
        if entry.value.count:
            ctx.inj.reset_data()
            ctx.call(sc.WRITE, fd, ctx.inj.put(entry.value.count.to_bytes(8, "little")), 8,
                     step=f"setting the count of the eventfd of fd {entry.fd}")
        ctx.place([(fd, entry)])


FDKIND = FdKind(id=ID, name="eventfd", record=Record, dump=_dump, restore=_restore,
                matches=lambda seen: seen.link == "anon_inode:[eventfd]",
                describe=lambda e: f"count {e.value.count}"
                + (", semaphore" if e.value.semaphore else ""))
