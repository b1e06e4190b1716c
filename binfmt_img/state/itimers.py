"""Interval timers: ITIMER_REAL (alarm), ITIMER_VIRTUAL and ITIMER_PROF, each its remaining
value and reload interval, read with getitimer at the dump and armed again with setitimer at
the restore's "late" phase, so that the time left starts counting as late as possible (an
alarm(3) taken at the checkpoint fires 3 s after the restore). All three are set, disarmed
ones too: a timer the inferior had armed before the restore does not survive it. Its kind id
is above those of the pending signals and POSIX timers so that it is armed last: a timer
that expires during the restore's remaining steps would have its signal delivered in the
middle of them (see README, "Limits today")."""

from __future__ import annotations

import struct
from collections.abc import Generator
from typing import TYPE_CHECKING

from construct import Array, Int64ul, Struct

from binfmt_img.state import ORDER_ARM, Kind
from binfmt_img.state.pending_signals import stack_for_handlers

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

GETITIMER, SETITIMER = 36, 38
NAMES = ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")
Timer = Struct("interval_sec" / Int64ul, "interval_usec" / Int64ul,
               "value_sec" / Int64ul, "value_usec" / Int64ul)
Record = Struct("timers" / Array(3, Timer))
MAX_SECONDS = 1 << 40  # far beyond any a kernel accepts; guards against a forged image


def dump(plan: DumpPlan) -> Generator[None, None, dict]:
    reads, outs = plan.reads(), []
    for which, name in enumerate(NAMES):
        outs.append(reads.reserve(32))
        reads.call(GETITIMER, which, outs[-1], step=f"reading {name}")
    yield
    timers = [dict(zip(("interval_sec", "interval_usec", "value_sec", "value_usec"),
                       struct.unpack("<4Q", reads.read(out, 32)))) for out in outs]
    return {"timers": timers}


def _valid(timer) -> bool:
    return (timer.interval_usec < 1_000_000 and timer.value_usec < 1_000_000
            and timer.interval_sec <= MAX_SECONDS and timer.value_sec <= MAX_SECONDS)


def check(plan: RestorePlan, value) -> None:
    for name, timer in zip(NAMES, value.timers):
        if not _valid(timer):
            plan.losses.append(f"{name} (the image holds an invalid time)")


def restore(plan: RestorePlan, value) -> None:
    inj = plan.injector
    stack_for_handlers(plan)
    for which, (name, timer) in enumerate(zip(NAMES, value.timers)):
        if not _valid(timer):
            timer = {"interval_sec": 0, "interval_usec": 0, "value_sec": 0, "value_usec": 0}
            timer = Timer.parse(Timer.build(timer))  # a loss the user accepted: disarmed
        elif which == 0 and not (timer.value_sec or timer.value_usec) and (
                timer.interval_sec or timer.interval_usec):
            # ITIMER_REAL expired with its SIGALRM still pending (a signal is blocked, or
            # was during the dump's steps): the kernel re-arms it when the signal is taken,
            # which setitimer with a zero value cannot say; arm it one interval ahead.
            timer = Timer.parse(Timer.build({
                "interval_sec": timer.interval_sec, "interval_usec": timer.interval_usec,
                "value_sec": timer.interval_sec, "value_usec": timer.interval_usec}))
        new = inj.put(struct.pack("<4Q", timer.interval_sec, timer.interval_usec,
                                  timer.value_sec, timer.value_usec))
        inj.call(SETITIMER, which, new, 0, step=f"arming {name}")


def describe(value) -> str:
    armed = [f"{name} {t.value_sec}.{t.value_usec:06d}s"
             + (f" every {t.interval_sec}.{t.interval_usec:06d}s"
                if t.interval_sec or t.interval_usec else "")
             for name, t in zip(NAMES, value.timers) if t.value_sec or t.value_usec]
    return ", ".join(armed) or "none armed"


KIND = Kind(id=22, name="itimers", record=Record, dump=dump, restore=restore, check=check,
            phase="late", describe=describe,
            order=ORDER_ARM + 1)
