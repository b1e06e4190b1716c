"""The execution domain and its flags (personality(2)): ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC,
UNAME26... Read with personality(0xffffffff), which changes nothing. The kernel keeps it per
thread and a new thread inherits it: it is set with the main thread's own state (after the
image's mappings exist, so READ_IMPLIES_EXEC does not add PROT_EXEC to them) and again in
each thread the restore creates. GDB and LLDB start programs with ADDR_NO_RANDOMIZE by
default; the image's value wins, with or without it."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from construct import Int32ul, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.state import Kind

if TYPE_CHECKING:
    from binfmt_img.formats.model import Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

PERSONALITY = 135
QUERY = 0xFFFFFFFF
FLAGS = {0x0040000: "ADDR_NO_RANDOMIZE", 0x0400000: "READ_IMPLIES_EXEC",
         0x0020000: "UNAME26", 0x0200000: "ADDR_COMPAT_LAYOUT", 0x0100000: "MMAP_PAGE_ZERO",
         0x8000000: "ADDR_LIMIT_3GB", 0x0800000: "ADDR_LIMIT_32BIT",
         0x4000000: "STICKY_TIMEOUTS", 0x1000000: "WHOLE_SECONDS", 0x2000000: "SHORT_INODE",
         0x0080000: "FDPIC_FUNCPTRS"}
Record = Struct("persona" / Int32ul)


def dump(plan: DumpPlan) -> Generator[None, None, dict]:
    reads = plan.reads()
    persona = reads.call(PERSONALITY, QUERY, step="reading the personality")
    yield
    return {"persona": reads.value(persona)}


def check(_plan: RestorePlan, value) -> None:
    if value.persona == QUERY:
        raise RestoreError("the image's personality 0xffffffff is not one (it is the query)")


def restore_thread(plan: RestorePlan, value, thread: Thread) -> None:
    plan.injector.call(PERSONALITY, value.persona, step=f"setting the personality of thread "
                       f"{thread.tid} to {describe(value)}")


def describe(value) -> str:
    names = [name for bit, name in FLAGS.items() if value.persona & bit]
    domain = value.persona & 0xFF
    return f"{value.persona:#x}" + (f" ({' '.join(names)})" if names else "") + (
        f" domain {domain}" if domain else "")


KIND = Kind(id=33, name="personality", record=Record, dump=dump, restore_thread=restore_thread,
            check=check, describe=describe)
