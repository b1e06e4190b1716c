"""POSIX timers (timer_create): id, clock, notification (signal and sigev_value, the thread
for SIGEV_THREAD_ID, or none) from /proc/PID/timers, remaining value and interval from an
injected timer_gettime.

The restore, in the "late" phase (every thread exists, so a SIGEV_THREAD_ID timer finds its
restored thread), deletes the inferior's own timers, then creates the image's with their very
ids: prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.15+) makes timer_create take the id from the
timer_t it is given, so that the program's timer_settime(id) keeps working. Each is then
armed with the time it had left, relative from the restore (a TIMER_ABSTIME timer on a clock
that jumped meanwhile keeps its remaining time, not its absolute expiry); a spent one-shot
timer whose signal is still pending shows none left, and its signal comes back, once, with
the pending signals. The overrun count starts again at 0. What cannot be recreated (a clock
of another process, a thread's CPU clock whose thread is unknown, a notification to a thread
not in the image) is a loss named by the timer's id.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Generator
from typing import TYPE_CHECKING

from construct import Int32sl, Int32ul, Int64sl, Int64ul, PrefixedArray, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.live import syscalls as sc
from binfmt_img.live.procfs import proc_file
from binfmt_img.state import ORDER_ARM, Kind
from binfmt_img.state.pending_signals import signal_name, stack_for_handlers

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

TIMER_CREATE, TIMER_SETTIME, TIMER_GETTIME, TIMER_DELETE = 222, 223, 224, 226
PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, RESTORE_IDS_ON = 77, 0, 1
SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID = 0, 1, 4
NOTIFY_NAMES = {"signal": SIGEV_SIGNAL, "none": SIGEV_NONE}
# Clocks a timer can be created on, by number; CPU clocks are negative (see _cpu_clock).
CLOCKS = {0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 2: "CLOCK_PROCESS_CPUTIME_ID",
          3: "CLOCK_THREAD_CPUTIME_ID", 7: "CLOCK_BOOTTIME", 8: "CLOCK_REALTIME_ALARM",
          9: "CLOCK_BOOTTIME_ALARM", 11: "CLOCK_TAI"}
ALARM_CLOCKS = (8, 9)
CPUCLOCK_PERTHREAD, CPUCLOCK_WHICH = 4, 3
SIGEVENT_SIZE = 64
NSEC = 1_000_000_000

Timer = Struct(
    "id" / Int32sl, "clock" / Int32sl, "notify" / Int32sl, "signo" / Int32sl,
    "value" / Int64ul,  # sigev_value as the kernel keeps it
    "tid" / Int32sl,  # the thread of a SIGEV_THREAD_ID timer (the image's tid), else 0
    "interval_sec" / Int64sl, "interval_nsec" / Int64sl,
    "value_sec" / Int64sl, "value_nsec" / Int64sl,
)
Record = Struct("timers" / PrefixedArray(Int32ul, Timer))


def parse_timers(text: str) -> list[dict]:
    """/proc/PID/timers: blocks of "ID:", "signal: N/VALUE", "notify: KIND/pid|tid.N",
    "ClockID:" lines."""
    timers: list[dict] = []
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        rest = rest.strip()
        if key == "ID":
            timers.append({"id": int(rest)})
        elif key == "signal" and timers:
            signo, value = rest.split("/")
            timers[-1].update(signo=int(signo), value=int(value, 16))
        elif key == "notify" and timers:
            found = re.fullmatch(r"(\w+)/(pid|tid)\.(-?\d+)", rest)
            if found is None:
                raise RestoreError(f"unexpected line in /proc/PID/timers: {line!r}")
            kind = NOTIFY_NAMES.get(found[1], -1)
            thread = found[2] == "tid"
            timers[-1].update(notify=kind | (SIGEV_THREAD_ID if thread else 0),
                              tid=int(found[3]) if thread else 0)
        elif key == "ClockID" and timers:
            timers[-1]["clock"] = int(rest)
    return timers


def dump(plan: DumpPlan) -> Generator[None, None, dict | None]:
    timers = parse_timers(proc_file(plan.target, plan.pid, "timers").decode())
    if not timers:
        return None
    reads, outs = plan.reads(), []
    for timer in timers:
        outs.append(reads.reserve(32))
        reads.call(TIMER_GETTIME, timer["id"], outs[-1],
                   step=f"reading POSIX timer {timer['id']}")
    yield
    for timer, out in zip(timers, outs):
        fields = struct.unpack("<4q", reads.read(out, 32))
        timer.update(zip(("interval_sec", "interval_nsec", "value_sec", "value_nsec"), fields))
    return {"timers": sorted(timers, key=lambda t: t["id"])}


# ---- restore ----

def _cpu_clock(clock: int) -> tuple[int, bool, int]:
    """A CPU clock's (pid or tid, per thread, which): the kernel's encoding ~pid << 3."""
    return ~(clock >> 3), bool(clock & CPUCLOCK_PERTHREAD), clock & CPUCLOCK_WHICH


def _problem(plan: RestorePlan, timer) -> str | None:
    """Why the timer cannot come back as it was, or None."""
    tids = {t.tid for t in plan.image.threads}
    several = len(tids) > 1
    if timer.id < 0:
        return "a negative id"
    if timer.notify not in (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_SIGNAL | SIGEV_THREAD_ID):
        return f"notification {timer.notify}, unknown"
    if timer.notify != SIGEV_NONE and not 1 <= timer.signo <= sc.NSIG:
        return f"signal {timer.signo}, not a signal"
    if timer.notify & SIGEV_THREAD_ID and timer.tid not in tids:
        return f"its signal goes to thread {timer.tid}, not in the image"
    if not (0 <= timer.interval_nsec < NSEC and 0 <= timer.value_nsec < NSEC
            and timer.interval_sec >= 0 and timer.value_sec >= 0):
        return "an invalid time"
    if timer.clock >= 0:
        if timer.clock not in CLOCKS:
            return f"clock {timer.clock}, unknown"
        if timer.clock == 3 and several:
            return "the CPU clock of the thread that created it, unknown in a process with " \
                   "several threads"
        return None
    pid, per_thread, which = _cpu_clock(timer.clock)
    if which == CPUCLOCK_WHICH:
        return f"clock {timer.clock}, unknown"
    if per_thread and (pid not in tids if pid else several):
        return f"the CPU clock of thread {pid or 'that created it'}, " + \
            ("not in the image" if pid else "unknown in a process with several threads")
    if not per_thread and pid not in (0, plan.image.pid):
        return f"the CPU clock of process {pid}, another process"
    return None


def check(plan: RestorePlan, value) -> None:
    for timer in value.timers:
        problem = _problem(plan, timer)
        if problem is not None:
            plan.losses.append(f"POSIX timer {timer.id} ({problem})")
        elif timer.clock in ALARM_CLOCKS:
            plan.report.warnings.append(f"POSIX timer {timer.id} is on {CLOCKS[timer.clock]}: "
                                        "creating it needs CAP_WAKE_ALARM")
    release = os.uname().release.split(".")
    if value.timers and plan.local and tuple(int(x) for x in release[:2] if x.isdigit()) \
            < (6, 15):
        plan.losses.append("POSIX timer ids (this kernel, before 6.15, cannot create a timer "
                           "with a given id)")


def _live_clock(plan: RestorePlan, clock: int) -> int:
    """The clock id in the restored process: a CPU clock naming the image's pid or one of
    its threads names the live one instead."""
    if clock >= 0:
        return clock
    pid, per_thread, which = _cpu_clock(clock)
    if pid == 0:
        return clock
    live = plan.live_tids.get(pid, plan.live_tid) if per_thread else 0
    return (~live << 3) | (CPUCLOCK_PERTHREAD if per_thread else 0) | which


def restore(plan: RestorePlan, value) -> None:
    inj = plan.injector
    for live in parse_timers(proc_file(plan.target, plan.pid, "timers").decode()):
        inj.call(TIMER_DELETE, live["id"], step=f"deleting the inferior's timer {live['id']}")
    timers = [t for t in value.timers if _problem(plan, t) is None]
    if not timers:
        return
    inj.call(sc.PRCTL, PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0,
             step="letting timer_create take the timer ids (PR_TIMER_CREATE_RESTORE_IDS)")
    try:
        for timer in timers:
            _create(plan, timer)
    finally:
        inj.raw(sc.PRCTL, PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0)
    stack_for_handlers(plan)
    for timer in timers:
        if timer.value_sec or timer.value_nsec:
            inj.reset_data()
            spec = inj.put(struct.pack("<4q", timer.interval_sec, timer.interval_nsec,
                                       timer.value_sec, timer.value_nsec))
            inj.call(TIMER_SETTIME, timer.id, 0, spec, 0, step=f"arming POSIX timer {timer.id}")


def _create(plan: RestorePlan, timer) -> None:
    inj = plan.injector
    inj.reset_data()
    tid = plan.live_tids.get(timer.tid, 0) if timer.notify & SIGEV_THREAD_ID else 0
    event = struct.pack("<QiiI", timer.value, timer.signo, timer.notify, tid)
    event_at = inj.put(event.ljust(SIGEVENT_SIZE, b"\0"))
    id_at = inj.put(struct.pack("<i", timer.id))
    clock = _live_clock(plan, timer.clock)
    inj.call(TIMER_CREATE, clock, event_at, id_at, step=f"creating POSIX timer {timer.id}")
    (got,) = struct.unpack("<i", plan.target.read_memory(id_at, 4))
    if got != timer.id:
        raise RestoreError(f"POSIX timer {timer.id} was created with id {got}")


def describe(value) -> str:
    parts = []
    for t in value.timers:
        notify = "no signal" if t.notify == SIGEV_NONE else signal_name(t.signo)
        if t.notify & SIGEV_THREAD_ID:
            notify += f" to thread {t.tid}"
        parts.append(f"{t.id} ({CLOCKS.get(t.clock, f'clock {t.clock}')}, {notify}, "
                     f"{t.value_sec}.{t.value_nsec:09d}s left)")
    return ", ".join(parts) or "none"


KIND = Kind(id=21, name="posix_timers", record=Record, dump=dump, restore=restore,
            check=check, phase="late", describe=describe,
            order=ORDER_ARM)
