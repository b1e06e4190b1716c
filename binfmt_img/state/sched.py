"""Each thread's scheduling: policy, nice value, real-time priority, deadline parameters and
the reset-on-fork flag (sched_getattr/sched_setattr), and its CPU affinity.

Threads created by the restore inherit the main thread's settings as the inferior had them
from the debugger; each sets its own right after, and the main thread sets its own last (in
the late phase, before the limits are lowered), so that no thread has to go from a value
another thread set back to its own (a nice value going down needs CAP_SYS_NICE or
RLIMIT_NICE). What the kernel refuses for lack of a privilege is a warning naming the thread,
the value and the one kept. An affinity the kernel narrows (CPUs this machine or cpuset does
not have) is a warning too.
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from typing import TYPE_CHECKING

from construct import (
    Container,
    GreedyBytes,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64ul,
    Prefixed,
    PrefixedArray,
)
from construct import Struct as CStruct

from binfmt_img.errors import RestoreError
from binfmt_img.live import syscalls as sc
from binfmt_img.state import Kind

if TYPE_CHECKING:
    from binfmt_img.formats.model import Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

SCHED_GETATTR, SCHED_SETATTR, SCHED_GETAFFINITY, SCHED_SETAFFINITY = 315, 314, 204, 203
ATTR = struct.Struct("<IIQiIQQQ")  # size, policy, flags, nice, priority, runtime/deadline/period
ATTR_SIZE = 48  # SCHED_ATTR_SIZE_VER0: no utilisation clamps
POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE",
            6: "SCHED_DEADLINE"}
FLAGS_KEPT = 0x7  # RESET_ON_FORK, RECLAIM, DL_OVERRUN: what sched_getattr reports
AFFINITY_BYTES = 1024  # up to 8192 CPUs

Entry = CStruct("tid" / Int32ul, "policy" / Int32ul, "flags" / Int64ul, "nice" / Int32sl,
                "priority" / Int32ul, "runtime" / Int64ul, "deadline" / Int64ul,
                "period" / Int64ul, "affinity" / Prefixed(Int16ul, GreedyBytes))
Record = CStruct("threads" / PrefixedArray(Int32ul, Entry))


def _attr(data: bytes) -> dict:
    _, policy, flags, nice, priority, runtime, deadline, period = ATTR.unpack(data)
    return {"policy": policy, "flags": flags & FLAGS_KEPT, "nice": nice, "priority": priority,
            "runtime": runtime, "deadline": deadline, "period": period}


def _getattr(plan: RestorePlan, step: str) -> dict:
    out = plan.injector.reserve(64)
    plan.injector.call(SCHED_GETATTR, 0, out, ATTR_SIZE, 0, step=step)
    return _attr(plan.target.read_memory(out, ATTR.size))


def _affinity(plan: RestorePlan, step: str) -> bytes:
    out = plan.injector.reserve(AFFINITY_BYTES)
    size = plan.injector.call(SCHED_GETAFFINITY, 0, AFFINITY_BYTES, out, step=step)
    return plan.target.read_memory(out, size)


def dump(plan: DumpPlan) -> Generator[None, None, dict | None]:
    asked = []
    for thread in plan.threads:  # each thread's own, in the same round
        reads = plan.reads(thread)
        attr, mask = reads.reserve(64), reads.reserve(AFFINITY_BYTES)
        reads.call(SCHED_GETATTR, 0, attr, ATTR_SIZE, 0,
                   step=f"reading the scheduling of thread {thread.tid}")
        size = reads.call(SCHED_GETAFFINITY, 0, AFFINITY_BYTES, mask,
                          step=f"reading the CPU affinity of thread {thread.tid}")
        asked.append((thread, reads, attr, mask, size))
    try:
        yield
    except RestoreError as error:  # a sandbox that forbids the call: say so, dump the rest
        plan.report.warnings.append(f"scheduling and CPU affinity not recorded: {error}")
        return None
    return {"threads": [{"tid": thread.tid, **_attr(reads.read(attr, ATTR.size)),
                         "affinity": reads.read(mask, reads.value(size))}
                        for thread, reads, attr, mask, size in asked]}


def check(plan: RestorePlan, value) -> None:
    tids = {t.tid for t in plan.image.threads}
    for entry in value.threads:
        where = f"the image's scheduling of thread {entry.tid}"
        if entry.tid not in tids:
            raise RestoreError(f"{where}: no such thread in the image")
        if entry.policy not in POLICIES or not -20 <= entry.nice <= 19 or entry.priority > 99:
            raise RestoreError(f"{where}: policy {entry.policy}, nice {entry.nice}, priority "
                               f"{entry.priority} are not valid")
        if len(entry.affinity) > AFFINITY_BYTES or not any(entry.affinity):
            raise RestoreError(f"{where}: CPU affinity mask not valid")


def _describe_one(entry) -> str:
    text = POLICIES.get(entry.policy, str(entry.policy))
    if entry.policy in (0, 3):
        text += f" nice {entry.nice}"
    elif entry.policy in (1, 2):
        text += f" priority {entry.priority}"
    return text + (" reset-on-fork" if entry.flags & 1 else "")


def _set_thread(plan: RestorePlan, entry) -> None:
    """The selected thread's scheduling and affinity, each set only where it differs."""
    inj = plan.injector
    step = f"thread {entry.tid}"
    now = _getattr(plan, f"reading the scheduling of {step}")
    wanted = {k: entry[k] for k in now}
    if wanted["policy"] not in (0, 3):
        wanted["nice"] = now["nice"]  # only SCHED_OTHER and SCHED_BATCH use it
    if wanted != now:
        attr = ATTR.pack(ATTR_SIZE, entry.policy, entry.flags & FLAGS_KEPT, entry.nice,
                         entry.priority, entry.runtime, entry.deadline, entry.period)
        result = inj.raw(SCHED_SETATTR, 0, inj.put(attr), 0)
        if sc.is_error(result):
            plan.report.warnings.append(
                f"{step}: scheduling {_describe_one(entry)} not restored, kept "
                f"{_describe_one(Container(now))}: {sc.errno_text(result)} (raising a "
                "priority needs CAP_SYS_NICE or RLIMIT_NICE/RLIMIT_RTPRIO)")
    mask = bytes(entry.affinity)
    if _affinity(plan, f"reading the CPU affinity of {step}").rstrip(b"\0") == mask.rstrip(b"\0"):
        return
    result = inj.raw(SCHED_SETAFFINITY, 0, len(mask), inj.put(mask))
    got = _affinity(plan, f"reading the CPU affinity of {step}")
    if sc.is_error(result) or got.rstrip(b"\0") != mask.rstrip(b"\0"):
        why = f": {sc.errno_text(result)}" if sc.is_error(result) else ""
        plan.report.warnings.append(f"{step}: CPU affinity {_cpus(mask)} not restored, now "
                                    f"{_cpus(got)} (CPUs this machine does not offer){why}")


def _cpus(mask: bytes) -> str:
    cpus = [i for i in range(len(mask) * 8) if mask[i // 8] >> (i % 8) & 1]
    return ",".join(map(str, cpus[:16])) + ("..." if len(cpus) > 16 else "")


def _entry(value, thread: Thread):
    return next((e for e in value.threads if e.tid == thread.tid), None)


def restore_thread(plan: RestorePlan, value, thread: Thread) -> None:
    if thread is plan.main_thread:
        return  # last, in the late phase: the other threads start from the inferior's
    entry = _entry(value, thread)
    if entry is not None:
        _set_thread(plan, entry)


def restore(plan: RestorePlan, value) -> None:
    entry = _entry(value, plan.main_thread)
    if entry is not None:
        _set_thread(plan, entry)


def describe(value) -> str:
    return "; ".join(f"thread {e.tid}: {_describe_one(e)}, CPUs {_cpus(bytes(e.affinity))}"
                     for e in value.threads)


KIND = Kind(id=30, name="sched", record=Record, dump=dump, check=check, restore=restore,
            restore_thread=restore_thread, phase="late", describe=describe)
