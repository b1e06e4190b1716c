"""The file mode creation mask: read with umask() and set straight back at the dump (the
call both sets and returns), set at the restore."""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import Int32ul, Struct

from binfmt_img.state import Kind

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

UMASK = 95
Record = Struct("mask" / Int32ul)


def dump(plan: DumpPlan) -> dict:
    old = plan.injector.call(UMASK, 0o022, step="reading the umask")
    plan.injector.call(UMASK, old, step="putting the umask back")
    return {"mask": old & 0o777}


def restore(plan: RestorePlan, value) -> None:
    plan.injector.call(UMASK, value.mask & 0o777, step="setting the umask")


KIND = Kind(id=1, name="umask", record=Record, dump=dump, restore=restore,
            describe=lambda value: f"{value.mask:04o}")
