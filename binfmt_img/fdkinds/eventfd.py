"""eventfd: its counter and EFD_SEMAPHORE (fdinfo "eventfd-count", hexadecimal, and
"eventfd-semaphore"); made again by eventfd2, the count written in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import Flag, Int64ul, Struct

from binfmt_img.fdkinds import Entry, FdKind, Restorer, Seen, lose
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 2
EVENTFD2 = 290
EFD_SEMAPHORE = 1
MAX_COUNT = (1 << 64) - 1  # the kernel's ceiling, which a count never reaches
Record = Struct("count" / Int64ul, "semaphore" / Flag)


def _dump(_plan: DumpPlan, seen: Seen) -> dict:
    semaphore = seen.info.get("eventfd-semaphore", "0").strip() == "1"
    return {"count": seen.number("eventfd-count", 16), "semaphore": semaphore}


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    for entry in entries:
        if entry.value.count >= MAX_COUNT:
            lose(plan, entry, f"an eventfd the image records wrongly: count {entry.value.count}")


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    for entry in entries:
        flags = sc.O_CLOEXEC | (EFD_SEMAPHORE if entry.value.semaphore else 0)
        fd = ctx.call(EVENTFD2, 0, flags, step=f"making the eventfd of fd {entry.fd}")
        if entry.value.count:
            ctx.inj.reset_data()
            ctx.call(sc.WRITE, fd, ctx.inj.put(entry.value.count.to_bytes(8, "little")), 8,
                     step=f"setting the count of the eventfd of fd {entry.fd}")
        ctx.place([(fd, entry)])


FDKIND = FdKind(id=ID, name="eventfd", record=Record, dump=_dump, check=_check,
                restore=_restore,
                matches=lambda seen: seen.link == "anon_inode:[eventfd]",
                describe=lambda e: f"count {e.value.count}"
                + (", semaphore" if e.value.semaphore else ""))
