"""Resource limits (every RLIMIT_*): read with prlimit64 at the dump, set back in two steps.

The process restored into has the debugger's limits, which may be lower or higher than the
image's. Lowering a limit too early could break the rest of the restore (RLIMIT_NOFILE below
the image's fd numbers, RLIMIT_NPROC below the thread count, RLIMIT_AS below the mappings,
RLIMIT_SIGPENDING below the pending signals), and a lowered hard limit cannot be raised again
without CAP_SYS_RESOURCE. So: with the main thread's own state, before the fds and threads
come back, limits are only raised (enough for the image's fd numbers); in the late phase,
once everything else is in place, each is set to the image's value. A hard limit above the
one the process has can only come back with CAP_SYS_RESOURCE: without it the restore warns,
naming the limit and the value kept, and brings the soft limit as close as that allows.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Generator
from typing import TYPE_CHECKING

from construct import Int32ul, Int64ul, PrefixedArray, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.live import syscalls as sc
from binfmt_img.live.procfs import proc_file
from binfmt_img.state import ORDER_LIMIT, Kind
from binfmt_img.state._proc import CAP_SYS_RESOURCE, has_capability, inferior_status

if TYPE_CHECKING:
    from binfmt_img.formats.model import Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

PRLIMIT64 = 302
EPERM = (1 << 64) - 1
INFINITY = (1 << 64) - 1
NAMES = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS",
         "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME")
CPU, NOFILE = 0, 7

# The limits the process has now, per plan: read from /proc at the check, then kept up to
# date by every change, so that no injected step is spent reading them.
_NOW: weakref.WeakKeyDictionary[RestorePlan, list[tuple[int, int]]] = (
    weakref.WeakKeyDictionary())

Limit = Struct("resource" / Int32ul, "cur" / Int64ul, "max" / Int64ul)
Record = Struct("limits" / PrefixedArray(Int32ul, Limit))


def _name(resource: int) -> str:
    return f"RLIMIT_{NAMES[resource]}" if resource < len(NAMES) else f"resource {resource}"


def _text(value: int) -> str:
    return "unlimited" if value == INFINITY else str(value)


def dump(plan: DumpPlan) -> Generator[None, None, dict]:
    reads, outs = plan.reads(), []
    for resource in range(len(NAMES)):
        outs.append(reads.reserve(16))
        reads.call(PRLIMIT64, 0, resource, 0, outs[-1], step=f"reading {_name(resource)}")
    yield
    limits = []
    for resource, out in enumerate(outs):
        cur, max_ = struct.unpack("<QQ", reads.read(out, 16))
        limits.append({"resource": resource, "cur": cur, "max": max_})
    return {"limits": limits}


# ---- restore ----

def _live_limits(plan: RestorePlan) -> list[tuple[int, int]]:
    """(soft, hard) per resource from /proc/PID/limits, whose rows are in resource order."""
    rows = proc_file(plan.target, plan.pid, "limits").decode().splitlines()[1:]
    out = []
    for row in rows[:len(NAMES)]:
        soft, hard = row[26:47].strip(), row[47:68].strip()
        out.append(tuple(INFINITY if v == "unlimited" else int(v) for v in (soft, hard)))
    if len(out) != len(NAMES):
        raise RestoreError(f"/proc/{plan.pid}/limits has {len(out)} rows, not {len(NAMES)}")
    return out  # type: ignore[return-value]


def _fds_needed(plan: RestorePlan) -> int:
    """The soft RLIMIT_NOFILE the image's descriptors need while they are reopened."""
    files = plan.image.files or []
    return max((f.fd for f in files), default=-1) + 1


def check(plan: RestorePlan, value) -> None:
    seen: set[int] = set()
    for limit in value.limits:
        if limit.resource >= len(NAMES) or limit.resource in seen:
            raise RestoreError(f"the image's resource limits name {_name(limit.resource)} "
                               "twice or one this version does not know")
        if limit.cur > limit.max:
            raise RestoreError(f"the image's {_name(limit.resource)} has its soft limit "
                               f"{limit.cur} above its hard limit {limit.max}")
        seen.add(limit.resource)
    live = _NOW[plan] = _live_limits(plan)
    can_raise = has_capability(inferior_status(plan), CAP_SYS_RESOURCE)
    for limit in value.limits:
        live_max = live[limit.resource][1]
        if limit.resource == CPU and limit.cur != INFINITY:
            plan.report.warnings.append(f"RLIMIT_CPU: the soft limit of {limit.cur} s counts "
                                        "CPU time afresh from the restore")
        if limit.max <= live_max or can_raise:
            continue
        kept = f"kept at {_text(live_max)}"
        if limit.cur > live_max:
            kept += f", soft limit {_text(live_max)} instead of {_text(limit.cur)}"
        plan.report.warnings.append(
            f"{_name(limit.resource)}: the hard limit {_text(limit.max)} cannot be raised back "
            f"from {_text(live_max)} without CAP_SYS_RESOURCE: {kept}")
    needed, nofile_max = _fds_needed(plan), live[NOFILE][1]
    if not can_raise and needed > nofile_max:
        raise RestoreError(f"the image has fd {needed - 1} open, and the open files limit "
                           f"here is {nofile_max} (RLIMIT_NOFILE hard limit; raising it needs "
                           "CAP_SYS_RESOURCE): run the debugger with a higher `ulimit -Hn`")


def _set(plan: RestorePlan, resource: int, cur: int, max_: int) -> int:
    result = plan.injector.raw(PRLIMIT64, 0, resource,
                               plan.injector.put(struct.pack("<QQ", cur, max_)), 0)
    if not sc.is_error(result):
        _NOW[plan][resource] = (cur, max_)
    return result


def raise_limits(plan: RestorePlan, value, thread: Thread) -> None:
    """Before the fds and threads come back: every limit only raised, towards the image's
    (and RLIMIT_NOFILE's soft limit at least past the image's highest fd)."""
    if thread is not plan.main_thread:
        return  # limits belong to the process: once is enough
    for limit in value.limits:
        cur, max_ = _NOW[plan][limit.resource]
        want_max = max(max_, limit.max)
        need = _fds_needed(plan) if limit.resource == NOFILE else 0
        want_cur = min(max(cur, limit.cur, need), want_max)
        if (want_cur, want_max) == (cur, max_):
            continue
        result = _set(plan, limit.resource, want_cur, want_max)
        if result == EPERM and want_max > max_:
            if has_capability(inferior_status(plan), CAP_SYS_RESOURCE):  # else check() said
                plan.report.warnings.append(
                    f"{_name(limit.resource)}: the hard limit {_text(want_max)} was refused "
                    f"(EPERM, above a system maximum such as fs.nr_open): kept at {_text(max_)}")
            result = _set(plan, limit.resource, min(want_cur, max_), max_)
        if sc.is_error(result):
            plan.report.warnings.append(f"{_name(limit.resource)}: raising it to "
                                        f"{_text(want_cur)}/{_text(want_max)} failed: "
                                        f"{sc.errno_text(result)}")


def restore(plan: RestorePlan, value) -> None:
    """Late: each limit exactly the image's, or as close as the hard limit now allows."""
    for limit in value.limits:
        cur, max_ = _NOW[plan][limit.resource]
        want_max = min(max_, limit.max)
        want_cur = min(limit.cur, want_max)
        if (want_cur, want_max) == (cur, max_):
            continue
        result = _set(plan, limit.resource, want_cur, want_max)
        if sc.is_error(result):
            plan.report.warnings.append(f"{_name(limit.resource)}: setting it to "
                                        f"{_text(want_cur)}/{_text(want_max)} failed: "
                                        f"{sc.errno_text(result)}")


def describe(value) -> str:
    finite = [f"{NAMES[lim.resource] if lim.resource < len(NAMES) else lim.resource} "
              f"{_text(lim.cur)}/{_text(lim.max)}" for lim in value.limits
              if (lim.cur, lim.max) != (INFINITY, INFINITY)]
    rest = len(value.limits) - len(finite)
    return ", ".join(finite) + (f"; {rest} more unlimited" if rest else "")


KIND = Kind(id=31, name="rlimits", record=Record, dump=dump, check=check, restore=restore,
            restore_thread=raise_limits, phase="late", describe=describe,
            order=ORDER_LIMIT)
