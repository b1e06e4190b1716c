"""prctl state: per process the THP disable flag, dumpable and child subreaper; per thread the
parent-death signal, timer slack, no_new_privs, keep-caps, the IO flusher flag and the TSC
mode; and the seccomp mode, which cannot come back (a loss).

Per-thread values are set with each thread's own state: the main thread's before the other
threads are created, so no_new_privs and keep-caps pass on to them as they did in the
original. Process-wide values go in the late phase, dumpable last of all.

- no_new_privs can be set but never cleared: an image without it, restored into a process
  that has it (inherited from a debugger run with it), keeps it: a warning (the program runs
  the same; only an execve of a set-user-ID or file-capability program would differ).
- dumpable 0 is allowed in a traced process: the tracer stays attached, but the kernel then
  lets only CAP_SYS_PTRACE read /proc/PID/mem and maps or attach again, which the debugger does
  after a restore. It is restored only when the debugger holds CAP_SYS_PTRACE; otherwise a
  warning says it stays 1. dumpable 2 (a set-user-ID exec's) cannot be set by prctl.
- The IO flusher flag needs CAP_SYS_RESOURCE to read and to set: unknown when the dump could
  not read it, a warning when the restore cannot set it.
- The parent-death signal is restored as such; the parent it watches is the debugger now.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

from construct import Int32sl, Int32ul, Int64ul, PrefixedArray, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.live import syscalls as sc
from binfmt_img.state import Kind
from binfmt_img.state._proc import (
    CAP_SYS_PTRACE,
    CAP_SYS_RESOURCE,
    debugger_has_capability,
    has_capability,
    inferior_status,
    status_fields,
)

if TYPE_CHECKING:
    from binfmt_img.formats.model import Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan
    from binfmt_img.live.rounds import Reads

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_DUMPABLE = 1, 2, 3, 4
PR_GET_KEEPCAPS, PR_SET_KEEPCAPS = 7, 8
PR_GET_TSC, PR_SET_TSC = 25, 26
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 41, 42
PR_SET_IO_FLUSHER, PR_GET_IO_FLUSHER = 57, 58
THP_EXCEPT_ADVISED = 2  # PR_THP_DISABLE_EXCEPT_ADVISED (Linux 6.18): GET answers 0, 1 or 3
UNKNOWN = -1  # the dump could not read it (not this kernel's, or not allowed)
SECCOMP_MODES = {1: "strict", 2: "filter"}

ThreadEntry = Struct("tid" / Int32ul, "pdeathsig" / Int32sl, "timerslack" / Int64ul,
                     "no_new_privs" / Int32sl, "keepcaps" / Int32sl, "io_flusher" / Int32sl,
                     "tsc" / Int32sl)
Record = Struct("thp_disable" / Int32sl, "dumpable" / Int32sl, "child_subreaper" / Int32sl,
                "seccomp" / Int32sl, "seccomp_filters" / Int32sl,
                "threads" / PrefixedArray(Int32ul, ThreadEntry))


def _ask(reads: Reads, option: int) -> Callable[[], int]:
    """prctl(option) queued; what gives its answer, a small int, or UNKNOWN."""
    result = reads.raw(sc.PRCTL, option, 0, 0, 0, 0)
    return lambda: UNKNOWN if sc.is_error(reads.value(result)) else reads.value(result)


def _ask_into(reads: Reads, option: int) -> Callable[[], int]:
    """The same for the options that answer through an int pointer."""
    out = reads.reserve(8)
    result = reads.raw(sc.PRCTL, option, out, 0, 0, 0)
    return lambda: UNKNOWN if sc.is_error(reads.value(result)) else struct.unpack(
        "<i", reads.read(out, 4))[0]


def _thread(plan: DumpPlan, thread: Thread) -> Callable[[], dict]:
    """The thread's own values, asked by the thread itself."""
    reads = plan.reads(thread)
    slack = reads.raw(sc.PRCTL, PR_GET_TIMERSLACK, 0, 0, 0, 0)
    asked = {"pdeathsig": _ask_into(reads, PR_GET_PDEATHSIG),
             "no_new_privs": _ask(reads, PR_GET_NO_NEW_PRIVS),
             "keepcaps": _ask(reads, PR_GET_KEEPCAPS),
             "io_flusher": _ask(reads, PR_GET_IO_FLUSHER), "tsc": _ask_into(reads, PR_GET_TSC)}
    return lambda: {"tid": thread.tid, "timerslack": 0 if sc.is_error(reads.value(slack))
                    else reads.value(slack), **{name: got() for name, got in asked.items()}}


def dump(plan: DumpPlan) -> Generator[None, None, dict]:
    threads = [_thread(plan, thread) for thread in plan.threads]
    reads = plan.reads()
    process = {"thp_disable": _ask(reads, PR_GET_THP_DISABLE),
               "dumpable": _ask(reads, PR_GET_DUMPABLE),
               "child_subreaper": _ask_into(reads, PR_GET_CHILD_SUBREAPER)}
    yield
    with open(f"/proc/{plan.pid}/status") as f:
        status = status_fields(f.read())
    return {**{name: got() for name, got in process.items()},
            "seccomp": int(status.get("Seccomp", "0")),
            "seccomp_filters": int(status.get("Seccomp_filters", "-1")),
            "threads": [got() for got in threads]}


# ---- restore ----

def _valid(value) -> bool:
    flags = (UNKNOWN, 0, 1)
    process = (value.thp_disable in (UNKNOWN, 0, 1, 1 | THP_EXCEPT_ADVISED)
               and value.dumpable in (UNKNOWN, 0, 1, 2) and value.child_subreaper in flags
               and value.seccomp in (0, 1, 2))
    return process and all(
        0 <= t.pdeathsig <= sc.NSIG or t.pdeathsig == UNKNOWN for t in value.threads) and all(
        t.no_new_privs in flags and t.keepcaps in flags and t.io_flusher in flags
        and t.tsc in (UNKNOWN, 0, 1, 2) for t in value.threads)


def _dumpable_restorable(plan: RestorePlan) -> bool:
    """dumpable 0 only where the debugger keeps its access to the process (CAP_SYS_PTRACE)."""
    return plan.local and debugger_has_capability(CAP_SYS_PTRACE)


def check(plan: RestorePlan, value) -> None:
    if not _valid(value):
        raise RestoreError("the image's prctl state holds values prctl does not take")
    warn = plan.report.warnings.append
    status = inferior_status(plan)
    _check_seccomp(plan, value, status)
    main = _entry(value, plan.main_thread)
    if main is not None and main.no_new_privs == 0 and status.get("NoNewPrivs") == "1":
        warn("no_new_privs: set in the process restored into (inherited from the debugger) "
             "and cannot be cleared; an execve will not grant set-user-ID or file capabilities")
    if main is not None and main.no_new_privs == 1:
        for t in value.threads:
            if t.no_new_privs == 0:
                warn(f"thread {t.tid}: no_new_privs will be set (it inherits the main "
                     "thread's, which cannot be cleared)")
    if value.dumpable == 0 and not _dumpable_restorable(plan):
        warn("dumpable 0 not restored, it stays 1: without CAP_SYS_PTRACE the debugger could "
             "no longer read the process's memory or attach to it again")
    if value.dumpable == 2:
        warn("dumpable 2 (a set-user-ID exec's) cannot be set by prctl: it stays 1")
    if any(t.io_flusher == 1 for t in value.threads) and not has_capability(status,
                                                                             CAP_SYS_RESOURCE):
        warn("the IO flusher flag is not restored: setting it needs CAP_SYS_RESOURCE")


def _check_seccomp(plan: RestorePlan, value, status: dict[str, str]) -> None:
    """Filters cannot be read back and installed again from here, nor removed. Under a
    container runtime every process inherits the same ones: the process restored into has
    them too, so as many filters as the image had is taken for them (a warning)."""
    live_mode = int(status.get("Seccomp", "0"))
    live_filters = int(status.get("Seccomp_filters", "-1"))
    if value.seccomp == 0 and live_mode:
        plan.report.warnings.append(
            f"the process restored into runs under seccomp ({SECCOMP_MODES.get(live_mode)} "
            "mode, inherited from the debugger), which the image did not have and which cannot "
            "be removed")
    elif value.seccomp == 2 and live_mode == 2 and value.seccomp_filters == live_filters >= 0:
        plan.report.warnings.append(
            f"seccomp: the image had {value.seccomp_filters} filter(s) and the process "
            "restored into has as many (inherited from the debugger): taken to be the same, "
            "not compared")
    elif value.seccomp:
        n = value.seccomp_filters
        count = f", {n} filter{'s' * (n != 1)}" if n > 0 else ""
        plan.losses.append(f"the seccomp {SECCOMP_MODES[value.seccomp]} mode of the process"
                           f"{count} (a filter cannot be read back and installed again)")


def _entry(value, thread: Thread):
    return next((t for t in value.threads if t.tid == thread.tid), None)


def _set(plan: RestorePlan, what: str, *args: int) -> None:
    result = plan.injector.raw(sc.PRCTL, *args, *(0,) * (5 - len(args)))
    if sc.is_error(result):
        plan.report.warnings.append(f"{what} not restored: {sc.errno_text(result)}")


def restore_thread(plan: RestorePlan, value, thread: Thread) -> None:
    t = _entry(value, thread)
    if t is None:
        return
    where = f"thread {thread.tid}:"
    if t.pdeathsig != UNKNOWN:
        _set(plan, f"{where} parent-death signal {t.pdeathsig}", PR_SET_PDEATHSIG, t.pdeathsig)
    if t.timerslack:  # 0: a real-time thread's, whose slack the kernel keeps at 0
        _set(plan, f"{where} timer slack {t.timerslack} ns", PR_SET_TIMERSLACK, t.timerslack)
    if t.keepcaps != UNKNOWN:
        _set(plan, f"{where} keep-caps {t.keepcaps}", PR_SET_KEEPCAPS, t.keepcaps)
    if t.tsc in (1, 2):
        _set(plan, f"{where} TSC mode {t.tsc}", PR_SET_TSC, t.tsc)
    if t.io_flusher == 1:
        result = plan.injector.raw(sc.PRCTL, PR_SET_IO_FLUSHER, 1, 0, 0, 0)
        if sc.is_error(result) and has_capability(inferior_status(plan), CAP_SYS_RESOURCE):
            plan.report.warnings.append(f"{where} the IO flusher flag not restored: "
                                        f"{sc.errno_text(result)}")
    if t.no_new_privs == 1:
        _set(plan, f"{where} no_new_privs", PR_SET_NO_NEW_PRIVS, 1)


def restore(plan: RestorePlan, value) -> None:
    if value.thp_disable != UNKNOWN:
        _set(plan, f"THP disable {value.thp_disable}", PR_SET_THP_DISABLE,
             value.thp_disable & 1, value.thp_disable & THP_EXCEPT_ADVISED)
    if value.child_subreaper != UNKNOWN:
        _set(plan, "child subreaper", PR_SET_CHILD_SUBREAPER, value.child_subreaper)
    if value.dumpable == 1 or (value.dumpable == 0 and _dumpable_restorable(plan)):
        _set(plan, f"dumpable {value.dumpable}", PR_SET_DUMPABLE, value.dumpable)


def describe(value) -> str:
    main = value.threads[0] if value.threads else None
    text = (f"THP disable {value.thp_disable}, dumpable {value.dumpable}, child subreaper "
            f"{value.child_subreaper}, seccomp {value.seccomp} ({value.seccomp_filters} "
            "filters)")
    if main is not None:
        text += (f"; thread {main.tid}: pdeathsig {main.pdeathsig}, timer slack "
                 f"{main.timerslack} ns, no_new_privs {main.no_new_privs}, keep-caps "
                 f"{main.keepcaps}, IO flusher {main.io_flusher}, TSC {main.tsc}")
    return text + (f" (+{len(value.threads) - 1} threads)" if len(value.threads) > 1 else "")


KIND = Kind(id=32, name="prctl", record=Record, dump=dump, check=check, restore=restore,
            restore_thread=restore_thread, phase="late", describe=describe)
