"""timerfd: clock, remaining value and interval (fdinfo "it_value", "it_interval": the time
left, whatever flags set it), and expirations not read yet ("ticks"). Made again by
timerfd_create and timerfd_settime, relative: the time left counts from the restore. Ticks go
back with TFD_IOC_SET_TICKS (a kernel built with CONFIG_CHECKPOINT_RESTORE), else a warning."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from construct import Int32sl, Int32ul, Int64ul, Struct

from binfmt_img.fdkinds import IOCTL, Entry, FdKind, Restorer, Seen, lose
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 3
TIMERFD_CREATE, TIMERFD_SETTIME = 283, 286
TFD_IOC_SET_TICKS = 0x40085400
TFD_TIMER_CANCEL_ON_SET = 2
CLOCKS = {0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 7: "CLOCK_BOOTTIME",
          8: "CLOCK_REALTIME_ALARM", 9: "CLOCK_BOOTTIME_ALARM"}
Record = Struct("clock" / Int32sl, "settime_flags" / Int32ul, "ticks" / Int64ul,
                "value_sec" / Int64ul, "value_nsec" / Int64ul,
                "interval_sec" / Int64ul, "interval_nsec" / Int64ul)


def _pair(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"\s*\((\d+),\s*(\d+)\)\s*", text)
    if not found:
        raise ValueError(f"timerfd fdinfo: {text!r}")
    return int(found[1]), int(found[2])


def _dump(_plan: DumpPlan, seen: Seen) -> dict:
    value, interval = _pair(seen.info["it_value"]), _pair(seen.info["it_interval"])
    return {"clock": seen.number("clockid"), "settime_flags": seen.number("settime flags", 8),
            "ticks": seen.number("ticks"), "value_sec": value[0], "value_nsec": value[1],
            "interval_sec": interval[0], "interval_nsec": interval[1]}


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    for entry in entries:
        v = entry.value
        if v.clock not in CLOCKS or v.value_nsec >= 10**9 or v.interval_nsec >= 10**9:
            lose(plan, entry, f"a timerfd the image records wrongly: clock {v.clock}")
        elif v.settime_flags & TFD_TIMER_CANCEL_ON_SET:
            plan.report.warnings.append(f"fd {entry.fd}: the timerfd is no longer cancelled "
                                        "when the clock is set")


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    for entry in entries:
        v = entry.value
        step = f"making the timerfd of fd {entry.fd}"
        fd = ctx.call(TIMERFD_CREATE, v.clock, sc.O_CLOEXEC, step=step)
        ctx.inj.reset_data()
        value = (v.value_sec, v.value_nsec)
        if value == (0, 0) and v.ticks:
            # A periodic timer that expired is moved on only when read: 0 left until then.
            value = (v.interval_sec, v.interval_nsec)
        if value != (0, 0):
            spec = b"".join(n.to_bytes(8, "little") for n in (
                v.interval_sec, v.interval_nsec, *value))
            ctx.call(TIMERFD_SETTIME, fd, 0, ctx.inj.put(spec), 0, step=step)
        if v.ticks:
            result = ctx.inj.raw(IOCTL, fd, TFD_IOC_SET_TICKS,
                                 ctx.inj.put(v.ticks.to_bytes(8, "little")))
            if sc.is_error(result):
                ctx.warn(f"fd {entry.fd}: the timerfd's {v.ticks} unread expirations are lost: "
                         f"{sc.errno_text(result)}")
        ctx.place([(fd, entry)])


def _describe(entry: Entry) -> str:
    v = entry.value
    return (f"{CLOCKS.get(v.clock, v.clock)}, {v.value_sec}.{v.value_nsec:09d}s left, "
            f"every {v.interval_sec}.{v.interval_nsec:09d}s, {v.ticks} unread")


FDKIND = FdKind(id=ID, name="timerfd", record=Record, dump=_dump, check=_check,
                restore=_restore, matches=lambda seen: seen.link == "anon_inode:[timerfd]",
                describe=_describe)
