"""Each thread's name (/proc/PID/task/TID/comm, at most 15 bytes), set back with
prctl(PR_SET_NAME) by each thread itself. The main thread's is the process's command name
(what ps shows): restored as the program had it, also when it renamed itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import GreedyBytes, Int8ul, Int32ul, Prefixed, PrefixedArray, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.live import syscalls as sc
from binfmt_img.state import Kind
from binfmt_img.state._proc import printable

if TYPE_CHECKING:
    from binfmt_img.formats.model import Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

PR_SET_NAME = 15
NAME_MAX = 15  # TASK_COMM_LEN less the terminating zero
Entry = Struct("tid" / Int32ul, "name" / Prefixed(Int8ul, GreedyBytes))
Record = Struct("threads" / PrefixedArray(Int32ul, Entry))


def dump(plan: DumpPlan) -> dict:
    threads = []
    for thread in plan.threads:
        try:
            with open(f"/proc/{plan.pid}/task/{thread.tid}/comm", "rb") as f:
                name = f.read().removesuffix(b"\n")
        except OSError:
            continue  # gone: it is not in the image either
        threads.append({"tid": thread.tid, "name": name[:NAME_MAX]})
    return {"threads": threads}


def check(_plan: RestorePlan, value) -> None:
    for entry in value.threads:
        if len(entry.name) > NAME_MAX or b"\0" in entry.name:
            raise RestoreError(f"the image's name of thread {entry.tid} is not a thread name")


def restore_thread(plan: RestorePlan, value, thread: Thread) -> None:
    entry = next((e for e in value.threads if e.tid == thread.tid), None)
    if entry is None:
        return
    name = plan.injector.put(bytes(entry.name) + b"\0", 1)
    plan.injector.call(sc.PRCTL, PR_SET_NAME, name, 0, 0, 0,
                       step=f"naming thread {thread.tid} {printable(entry.name)!r}")


def describe(value) -> str:
    return ", ".join(f"{e.tid} {printable(e.name)!r}" for e in value.threads)


KIND = Kind(id=35, name="thread-names", record=Record, dump=dump, check=check,
            restore_thread=restore_thread, describe=describe)
