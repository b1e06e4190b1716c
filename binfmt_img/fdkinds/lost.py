"""A descriptor that cannot come back (a pipe to another process, a TCP connection, a
terminal, an anon_inode nobody here knows): recorded with what it was and why. The restore
names it in `plan.losses` (refused unless --accept-loss); accepted, it is replaced by a pipe
end whose other end is closed, so that the program sees it fail: reads give end of file,
writes EPIPE (and SIGPIPE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import PascalString, Struct, VarInt

from binfmt_img.fdkinds import O_WRONLY, Entry, FdKind, Restorer, Seen, lose
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 0
Record = Struct("what" / PascalString(VarInt, "utf8"))


def _dump(_plan: DumpPlan, seen: Seen) -> dict:
    return {"what": seen.link}


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    for entry in entries:
        lose(plan, entry, entry.value.what)


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    for entry in entries:
        read_end, write_end = ctx.pipe()
        keep, drop = (write_end, read_end) if entry.access == O_WRONLY else (read_end, write_end)
        ctx.inj.raw(sc.CLOSE, drop)
        ctx.place([(keep, entry)])  # the loss's own warning ("not restored: fd 5 ...") says it


FDKIND = FdKind(id=ID, name="lost", record=Record, matches=lambda _seen: False, dump=_dump,
                check=_check, restore=_restore, describe=lambda entry: entry.value.what)
