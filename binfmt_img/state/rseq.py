"""Each thread's rseq registration as it actually was: none (the program unregistered it, or
glibc.pthread.rseq=0), glibc's area, or an area the program registered itself.

Dump: under a debugger whose Python is the tracer (GDB), PTRACE_GET_RSEQ_CONFIGURATION tells
area, length and signature. Elsewhere (LLDB) the thread probes with the rseq system call
itself, on glibc's area (or, without one, the scratch page): EBUSY means registered with
exactly that area, length and signature; 0 means it was not registered (and it is
unregistered again at once); EINVAL or EPERM mean registered with something the probe cannot
name, which the restore then refuses as a loss.

Restore: with this record present the restore registers exactly it, per thread, instead of
glibc's area whatever the process had (images without it keep that older behaviour).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import Int8ul, Int32ul, Int64ul, PrefixedArray, Struct

from binfmt_img.formats.model import USER_TOP
from binfmt_img.live import ptrace
from binfmt_img.live import syscalls as sc
from binfmt_img.live.inject import DATA_AT
from binfmt_img.live.procfs import read_auxv
from binfmt_img.live.rseq import AT_BASE, RSEQ, RSEQ_FLAG_UNREGISTER, RSEQ_SIG, rseq_area
from binfmt_img.state import Kind

if TYPE_CHECKING:
    from binfmt_img.formats.model import Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

NONE, REGISTERED, UNKNOWN = 0, 1, 2
EBUSY, EPERM, EINVAL = ((1 << 64) - n for n in (16, 1, 22))
ORIG_RSEQ_SIZE = 32
Registration = Struct("tid" / Int32ul, "state" / Int8ul, "area" / Int64ul,
                      "length" / Int32ul, "signature" / Int32ul)
Record = Struct("threads" / PrefixedArray(Int32ul, Registration))


def dump(plan: DumpPlan) -> dict:
    try:
        if not ptrace.available(plan.target):
            raise ptrace.Unavailable
        threads = [_configured(t.tid) for t in plan.threads]
    except ptrace.Unavailable:
        threads = list(plan.each_thread(lambda t: _probe(plan, t)).values())
    for entry in threads:
        if entry["state"] == UNKNOWN:
            plan.report.warnings.append(
                f"thread {entry['tid']}: an rseq area this debugger cannot read is "
                "registered (not glibc's); a restore will refuse to go on without it")
    return {"threads": threads}


def _configured(tid: int) -> dict:
    area, length, signature, _ = ptrace.rseq_configuration(tid)
    state = REGISTERED if area else NONE
    return {"tid": tid, "state": state, "area": area, "length": length,
            "signature": signature}


def _glibc_area(plan: DumpPlan, thread: Thread) -> tuple[int, int] | None:
    auxv = read_auxv(plan.pid)
    base = dict(auxv).get(AT_BASE)
    ld = next((m.path for m in plan.maps if base and m.start == base and m.is_file), None)
    return rseq_area(plan.target.read_memory, auxv, ld, thread.registers.get("fs_base", 0))


def _probe(plan: DumpPlan, thread: Thread) -> dict:
    """Ask the kernel with rseq(2) itself, run by the thread (see the module's doc)."""
    inj = plan.injector
    area = _glibc_area(plan, thread)
    if area is None:
        assert inj.scratch is not None
        area = (inj.scratch + DATA_AT, ORIG_RSEQ_SIZE)  # the data page is 32-byte aligned
        inj.reset_data()
        inj.reserve(ORIG_RSEQ_SIZE)  # keep it from other data meanwhile
    entry = {"tid": thread.tid, "state": UNKNOWN, "area": 0, "length": 0, "signature": 0}
    for length in dict.fromkeys((ORIG_RSEQ_SIZE, area[1])):
        result = inj.raw(RSEQ, area[0], length, 0, RSEQ_SIG)
        if result == EBUSY:
            entry.update(state=REGISTERED, area=area[0], length=length, signature=RSEQ_SIG)
            break
        if not sc.is_error(result):
            inj.call(RSEQ, area[0], length, RSEQ_FLAG_UNREGISTER, RSEQ_SIG,
                     step="unregistering the rseq area the probe registered")
            entry["state"] = NONE
            break
        if result != EINVAL:
            break  # EPERM: that area, another signature
    return entry


def _valid(entry) -> bool:
    return bool(entry.area and entry.area % 32 == 0 and entry.area + entry.length <= USER_TOP
                and ORIG_RSEQ_SIZE <= entry.length <= 4096)


def check(plan: RestorePlan, value) -> None:
    tids = {t.tid for t in plan.image.threads}
    for entry in value.threads:
        if entry.tid not in tids:
            continue
        if entry.state == UNKNOWN:
            plan.losses.append(f"the rseq registration of thread {entry.tid} (an area the "
                               "dump could not read)")
        elif entry.state == REGISTERED and not _valid(entry):
            plan.losses.append(f"the rseq registration of thread {entry.tid} (an invalid "
                               f"area {entry.area:#x}, {entry.length} bytes)")
        elif entry.state not in (NONE, REGISTERED):
            plan.losses.append(f"the rseq registration of thread {entry.tid} (unknown state "
                               f"{entry.state})")


def restore_thread(plan: RestorePlan, value, thread: Thread) -> None:
    entry = next((e for e in value.threads if e.tid == thread.tid), None)
    if entry is None or entry.state != REGISTERED or not _valid(entry):
        return  # none, or a loss the user accepted
    result = plan.injector.raw(RSEQ, entry.area, entry.length, 0, entry.signature)
    if sc.is_error(result):
        plan.report.warnings.append(f"thread {thread.tid}: the rseq area at {entry.area:#x} "
                                    f"was not registered: {sc.errno_text(result)}")


def describe(value) -> str:
    return ", ".join(
        f"thread {e.tid}: " + ({NONE: "none", UNKNOWN: "unknown area"}.get(e.state)
                               or f"{e.area:#x} ({e.length} bytes, signature "
                                  f"{e.signature:#x})")
        for e in value.threads) or "none"


KIND = Kind(id=23, name="rseq", record=Record, dump=dump, check=check,
            restore_thread=restore_thread, describe=describe)
