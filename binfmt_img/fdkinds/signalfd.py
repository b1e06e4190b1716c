"""signalfd: its signal mask (fdinfo "sigmask", hexadecimal), made again by signalfd4."""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import Int64ul, Struct

from binfmt_img.fdkinds import Entry, FdKind, Restorer, Seen
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan

ID = 5
SIGNALFD4 = 289
Record = Struct("mask" / Int64ul)


def _dump(_plan: DumpPlan, seen: Seen) -> dict:
    return {"mask": seen.number("sigmask", 16)}


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    for entry in entries:
        ctx.inj.reset_data()
        mask = ctx.inj.put(entry.value.mask.to_bytes(8, "little"))
        fd = ctx.call(SIGNALFD4, -1, mask, 8, sc.O_CLOEXEC,
                      step=f"making the signalfd of fd {entry.fd}")
        ctx.place([(fd, entry)])


FDKIND = FdKind(id=ID, name="signalfd", record=Record, dump=_dump, restore=_restore,
                matches=lambda seen: seen.link == "anon_inode:[signalfd]",
                describe=lambda e: f"mask {e.value.mask:#x}")
