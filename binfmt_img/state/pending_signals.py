"""Pending signals, each thread's own queue and the process's shared one, with their siginfo
(si_code, si_pid, si_value...), in queue order.

Dump: where the debugger's Python is the tracer (GDB), PTRACE_PEEKSIGINFO reads the queues
without touching them. Elsewhere (LLDB, whose tracer is lldb-server) the queues are emptied
and filled again by the process itself: /proc/PID/task/TID/status tells which signals are
pending (SigPnd for the thread, ShdPnd for the process), rt_sigtimedwait with a zero timeout
takes them one by one (a thread's own queue before the shared one, so every thread's own is
drained first), and rt_tgsigqueueinfo / rt_sigqueueinfo put them back in the same order.

Restore: each thread's signals are queued by that thread itself (the kernel lets a process
queue any si_code to itself only: rt_tgsigqueueinfo from the target thread, rt_sigqueueinfo
from the thread whose tid is the pid) once its signal mask is set, the shared ones in the
"late" phase when every thread and mask exists. Blocked ones stay pending.

A signal pending but not blocked (one that arrived while the process was stopped, such as a
fast timer's) would be delivered at the next resume. Another thread's is: that thread never
steps again during the restore. The main thread's, and a shared one, would be delivered by
the restore's next single-step: they are queued at the very end, after the rsp is pointed
below the image's red zone, so that under GDB (which runs a handler within a step, for
signals it handles `nostop pass`) the handler runs on the image's stack as the restore ends,
with a warning. A debugger that would stop the step for the signal instead (LLDB; GDB for a
signal it handles `stop`) would be left in the middle of the restore: refused as a loss.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from construct import Bytes, Int32ul, PrefixedArray, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import signal_name
from binfmt_img.live import ptrace
from binfmt_img.live import syscalls as sc
from binfmt_img.state import ORDER_QUEUE, Kind

if TYPE_CHECKING:
    from binfmt_img.formats.model import Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

RT_SIGQUEUEINFO, RT_SIGTIMEDWAIT, GETTID, RT_TGSIGQUEUEINFO = 129, 128, 186, 297
SIGINFO = ptrace.SIGINFO_SIZE
Queue = PrefixedArray(Int32ul, Bytes(SIGINFO))
Record = Struct(
    "threads" / PrefixedArray(Int32ul, Struct("tid" / Int32ul, "signals" / Queue)),
    "shared" / Queue,
)
UNQUEUEABLE = (sc.SIGKILL, sc.SIGSTOP)
DRAIN_LIMIT = 100_000  # RLIMIT_SIGPENDING is a few ten thousands at most by default


def _number(info: bytes) -> int:
    return struct.unpack_from("<i", info)[0]


# ---- dump ----

def dump(plan: DumpPlan) -> dict | None:
    try:
        if not ptrace.available(plan.target):
            raise ptrace.Unavailable
        threads = [{"tid": t.tid, "signals": ptrace.peek_siginfo(t.tid, False)}
                   for t in plan.threads]
        shared = ptrace.peek_siginfo(plan.threads[0].tid, True)
    except ptrace.Unavailable:
        threads, shared = _drain_and_refill(plan)
    for entry in threads:
        entry["signals"] = _without_stops(plan, entry["signals"], f"thread {entry['tid']}")
    shared = _without_stops(plan, shared, "the process")
    if not shared and not any(t["signals"] for t in threads):
        return None
    return {"threads": threads, "shared": shared}


def _without_stops(plan: DumpPlan, infos: list[bytes], whose: str) -> list[bytes]:
    """A pending SIGSTOP or SIGKILL is left out, said: a SIGSTOP is usually the debugger's
    own request to stop a thread, and neither can be queued again nor taken."""
    kept = []
    for info in infos:
        if _number(info) in UNQUEUEABLE:
            plan.report.warnings.append(f"a pending {signal_name(_number(info))} for {whose} "
                                        "is not recorded")
        else:
            kept.append(info)
    return kept


def _pending(pid: int, tid: int, field: str) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    return 0


def _bits(mask: int) -> list[int]:
    return [n for n in range(1, sc.NSIG + 1) if mask >> (n - 1) & 1]


def _drain_and_refill(plan: DumpPlan) -> tuple[list[dict], list[bytes]]:
    """Without ptrace: take every pending signal with rt_sigtimedwait, then queue them back."""
    own = plan.each_thread(lambda t: _take(plan, t.tid, "SigPnd"))
    main = _main_thread(plan)
    shared = plan.each_thread(
        lambda t: _take(plan, t.tid, "ShdPnd") if t is main else [])[main.tid]
    plan.each_thread(lambda t: _put_back(plan, own[t.tid], shared if t is main else []))
    return [{"tid": tid, "signals": infos} for tid, infos in own.items()], shared


def _main_thread(plan: DumpPlan) -> Thread:
    return next((t for t in plan.threads if t.tid == plan.pid), plan.threads[0])


def _take(plan: DumpPlan, tid: int, field: str) -> list[bytes]:
    inj, taken = plan.injector, []
    inj.reset_data()
    timeout, info = inj.put(bytes(16)), inj.reserve(SIGINFO)
    for number in _bits(_pending(plan.pid, tid, field)):
        if number in UNQUEUEABLE:  # rt_sigtimedwait cannot take them: left where they are
            taken.append(struct.pack("<i", number).ljust(SIGINFO, b"\0"))
            continue
        one = inj.put(struct.pack("<Q", 1 << (number - 1)))
        while _pending(plan.pid, tid, field) >> (number - 1) & 1:
            if len(taken) > DRAIN_LIMIT:
                raise RestoreError(f"thread {tid}: more than {DRAIN_LIMIT} pending signals")
            got = inj.call(RT_SIGTIMEDWAIT, one, info, timeout, 8,
                           step=f"taking pending {signal_name(number)} to read it")
            if got != number:
                raise RestoreError(f"taking pending {signal_name(number)} gave signal {got}")
            taken.append(plan.target.read_memory(info, SIGINFO))
    return taken


def _put_back(plan: DumpPlan, own: list[bytes], shared: list[bytes]) -> None:
    _queue(plan, plan.pid, own, thread=True)
    _queue(plan, plan.pid, shared, thread=False)


def _queue(plan: DumpPlan | RestorePlan, pid: int, infos: list[bytes], thread: bool) -> None:
    """Queue `infos` from the selected thread: to itself, or (`thread` False) to the process
    (the selected thread being the one whose tid is the pid)."""
    inj = plan.injector
    tid = inj.call(GETTID, step="reading the thread id") if thread else 0
    for info in infos:
        if _number(info) in UNQUEUEABLE:
            continue  # never taken from the queue (see _take)
        inj.reset_data()
        number, at = _number(info), inj.put(info)
        if thread:
            inj.call(RT_TGSIGQUEUEINFO, pid, tid, number, at,
                     step=f"queueing pending {signal_name(number)} for thread {tid}")
        else:
            inj.call(RT_SIGQUEUEINFO, pid, number, at,
                     step=f"queueing pending {signal_name(number)} for the process")


# ---- restore ----

RED_ZONE = 128


def stack_for_handlers(plan: RestorePlan) -> None:
    """Before arming timers: a timer that expires during the restore's remaining steps has
    its signal delivered then (GDB runs the handler within the step). Point the selected
    thread's rsp just below the image's red zone, so that a handler's frame lands where it
    would have at the checkpoint, not over the image's stack; the image's registers replace
    it at the end anyway."""
    rsp = plan.main_thread.registers.get("rsp")
    if rsp:
        plan.target.write_registers({"rsp": (rsp - RED_ZONE) & ~0xF})


def steps_over_handler(plan: RestorePlan, number: int) -> bool:
    method = getattr(plan.target, "steps_over_signal_handler", None)
    return bool(method is not None and method(number))


def _every_thread_blocks(plan: RestorePlan) -> int:
    every = (1 << 64) - 1
    for thread in plan.image.threads:
        every &= thread.sigmask
    return every


def check(plan: RestorePlan, value) -> None:
    masks = {t.tid: t.sigmask for t in plan.image.threads}
    main = plan.main_thread.tid
    for entry in value.threads:
        if entry.tid not in masks:
            plan.losses.append(f"pending signals of thread {entry.tid}, not in the image")
            continue
        for info in entry.signals:
            # Another thread's never steps again: its signal waits for the user's continue.
            _check_one(plan, info, masks[entry.tid] if entry.tid == main else ~0,
                       f"thread {entry.tid}")
    for info in value.shared:
        _check_one(plan, info, _every_thread_blocks(plan), "the process")


def _check_one(plan: RestorePlan, info: bytes, blocked: int, whose: str) -> None:
    number = _number(info)
    if not 1 <= number <= sc.NSIG or number in UNQUEUEABLE:
        plan.losses.append(f"a pending signal {number} for {whose} (not a signal that can be "
                           "queued)")
    elif blocked >> (number - 1) & 1:
        return
    elif steps_over_handler(plan, number):
        plan.report.warnings.append(
            f"{signal_name(number)} pending for {whose} and not blocked: delivered as the "
            "restore ends (its handler runs before the debugger stops)")
    elif hasattr(plan.target, "steps_over_signal_handler"):
        plan.losses.append(f"{signal_name(number)} pending for {whose} but not blocked (the "
                           "debugger would stop for it in the middle of the restore; handle "
                           "it nostop pass, and it is delivered as the restore ends)")
    else:
        plan.losses.append(f"{signal_name(number)} pending for {whose} but not blocked (this "
                           "debugger would stop in the middle of the restore to deliver it)")


def _queueable(infos) -> list[bytes]:
    return [bytes(i) for i in infos
            if 1 <= _number(bytes(i)) <= sc.NSIG and _number(bytes(i)) not in UNQUEUEABLE]


def _split(infos: list[bytes], blocked: int) -> tuple[list[bytes], list[bytes]]:
    """(blocked ones, the others), each in queue order."""
    held = [i for i in infos if blocked >> (_number(i) - 1) & 1]
    return held, [i for i in infos if not blocked >> (_number(i) - 1) & 1]


def restore_thread(plan: RestorePlan, value, thread: Thread) -> None:
    """A thread's own queue once its mask is set. The main thread's signals it does not block
    wait for the late phase: its next step would deliver them."""
    for entry in value.threads:
        if entry.tid != thread.tid:
            continue
        infos = _queueable(entry.signals)
        if thread is plan.main_thread:
            infos = _split(infos, thread.sigmask)[0]
        _queue(plan, plan.pid, infos, thread=True)


def restore(plan: RestorePlan, value) -> None:
    """The shared queue, and the main thread's signals it does not block, last: those are
    delivered by the next step (GDB runs the handler within it), on the image's stack."""
    main = plan.main_thread
    own = next((_queueable(e.signals) for e in value.threads if e.tid == main.tid), [])
    unblocked = _split(own, main.sigmask)[1]
    shared, shared_unblocked = _split(_queueable(value.shared), _every_thread_blocks(plan))
    # The others are losses the user accepted.
    unblocked = [i for i in unblocked if steps_over_handler(plan, _number(i))]
    shared_unblocked = [i for i in shared_unblocked if steps_over_handler(plan, _number(i))]
    _queue(plan, plan.pid, shared, thread=False)
    if unblocked or shared_unblocked:
        stack_for_handlers(plan)
        _queue(plan, plan.pid, shared_unblocked, thread=False)
        _queue(plan, plan.pid, unblocked, thread=True)


def describe(value) -> str:
    parts = [f"thread {entry.tid}: " + " ".join(signal_name(_number(bytes(i)))
                                                 for i in entry.signals)
             for entry in value.threads if entry.signals]
    if value.shared:
        parts.append("process: " + " ".join(signal_name(_number(bytes(i)))
                                            for i in value.shared))
    return "; ".join(parts) or "none"


KIND = Kind(id=20, name="pending_signals", record=Record, dump=dump, restore=restore,
            check=check, restore_thread=restore_thread, phase="late", describe=describe,
            order=ORDER_QUEUE)
