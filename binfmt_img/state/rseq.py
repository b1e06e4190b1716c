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

from collections.abc import Generator
from typing import TYPE_CHECKING

from construct import Int8ul, Int32ul, Int64ul, PrefixedArray, Struct

from binfmt_img.formats.model import USER_TOP
from binfmt_img.live import ptrace
from binfmt_img.live import syscalls as sc
from binfmt_img.live.procfs import read_auxv
from binfmt_img.live.rounds import PROBE_AREA
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


def dump(plan: DumpPlan) -> Generator[None, None, dict]:
    try:
        if not ptrace.available(plan.target):
            raise ptrace.Unavailable
        threads = [_configured(t.tid) for t in plan.threads]
    except ptrace.Unavailable:
        threads = yield from _probe(plan)
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


def _probe(plan: DumpPlan) -> Generator[None, None, list[dict]]:
    """Ask the kernel with rseq(2) itself, each thread for itself (see the module's doc), all
    the threads in the same rounds: a probe, then the next length to try or the unregistering
    of what the probe registered."""
    assert plan.injector.scratch is not None
    if any("fs_base" not in thread.registers for thread in plan.threads):
        yield  # a debugger that does not show it: the first round reads it (arch_prctl)
    scratch = (plan.injector.scratch + PROBE_AREA, ORIG_RSEQ_SIZE)  # the rounds leave it be
    entries, todo = {}, {}
    for thread in plan.threads:
        area = _glibc_area(plan, thread)
        if area is None:
            area = scratch
            plan.target.write_memory(area[0], bytes(ORIG_RSEQ_SIZE))  # no rseq_cs in it
        entries[thread.tid] = {"tid": thread.tid, "state": UNKNOWN, "area": 0, "length": 0,
                               "signature": 0}
        todo[thread.tid] = (thread, area[0], list(dict.fromkeys((ORIG_RSEQ_SIZE, area[1]))))
    undo: list[tuple[Thread, int, int]] = []
    while todo or undo:
        for thread, area, length in undo:
            plan.reads(thread).call(RSEQ, area, length, RSEQ_FLAG_UNREGISTER, RSEQ_SIG,
                                    step="unregistering the rseq area the probe registered")
        probes = [(thread, area, lengths, plan.reads(thread))
                  for thread, area, lengths in todo.values()]
        asked = [reads.raw(RSEQ, area, lengths[0], 0, RSEQ_SIG)
                 for thread, area, lengths, reads in probes]
        yield
        todo, undo = {}, []
        for (thread, area, lengths, reads), ref in zip(probes, asked):
            result, entry = reads.value(ref), entries[thread.tid]
            if result == EBUSY:
                entry.update(state=REGISTERED, area=area, length=lengths[0],
                             signature=RSEQ_SIG)
            elif not sc.is_error(result):
                entry["state"] = NONE  # once unregistered again, in the next round
                undo.append((thread, area, lengths[0]))
            elif result == EINVAL and len(lengths) > 1:
                todo[thread.tid] = (thread, area, lengths[1:])
            # else EPERM: that area, another signature; EINVAL at every length: unknown
    return list(entries.values())


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
