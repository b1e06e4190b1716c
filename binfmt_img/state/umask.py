"""The file mode creation mask: read with umask() and set straight back at the dump (the
call both sets and returns), set at the restore."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from construct import Int32ul, Struct

from binfmt_img.state import Kind

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

UMASK = 95
Record = Struct("mask" / Int32ul)


def dump(plan: DumpPlan) -> Generator[None, None, dict]:
    reads = plan.reads()  # calls the process makes in the dump's next round (live/rounds.py)
    old = reads.call(UMASK, 0o022, step="reading the umask")
    reads.call(UMASK, old, step="putting the umask back")  # the answer, as the argument
    yield  # the round runs
    return {"mask": reads.value(old) & 0o777}


def restore(plan: RestorePlan, value) -> None:
    plan.injector.call(UMASK, value.mask & 0o777, step="setting the umask")


KIND = Kind(id=1, name="umask", record=Record, dump=dump, restore=restore,
            describe=lambda value: f"{value.mask:04o}")
