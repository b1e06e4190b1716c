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
from collections.abc import Generator
from typing import TYPE_CHECKING

from construct import Bytes, Int32ul, PrefixedArray, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import signal_name
from binfmt_img.live import ptrace
from binfmt_img.live import syscalls as sc
from binfmt_img.live.inject import checked
from binfmt_img.state import ORDER_QUEUE, Kind

if TYPE_CHECKING:
    from binfmt_img.formats.model import Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan
    from binfmt_img.live.rounds import Reads

RT_SIGQUEUEINFO, RT_SIGTIMEDWAIT, GETTID, RT_TGSIGQUEUEINFO = 129, 128, 186, 297
SIGINFO = ptrace.SIGINFO_SIZE
Queue = PrefixedArray(Int32ul, Bytes(SIGINFO))
Record = Struct(
    "threads" / PrefixedArray(Int32ul, Struct("tid" / Int32ul, "signals" / Queue)),
    "shared" / Queue,
)
UNQUEUEABLE = (sc.SIGKILL, sc.SIGSTOP)
DRAIN_LIMIT = 100_000  # RLIMIT_SIGPENDING is a few ten thousands at most by default
SIGRTMIN = 32  # the kernel's: from here a signal can be queued more than once
TAKE_AT_ONCE = 64  # calls a round makes at most for one real-time signal of one queue
EAGAIN = (1 << 64) - 11


def _number(info: bytes) -> int:
    return struct.unpack_from("<i", info)[0]


# ---- dump ----

def dump(plan: DumpPlan) -> Generator[None, None, dict | None]:
    try:
        if not ptrace.available(plan.target):
            raise ptrace.Unavailable
        threads = [{"tid": t.tid, "signals": ptrace.peek_siginfo(t.tid, False)}
                   for t in plan.threads]
        shared = ptrace.peek_siginfo(plan.threads[0].tid, True)
    except ptrace.Unavailable:
        threads, shared = yield from _drain_and_refill(plan)
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


def _drain_and_refill(plan: DumpPlan) -> Generator[None, None, tuple[list[dict], list[bytes]]]:
    """Without ptrace: take every pending signal with rt_sigtimedwait, then queue them back,
    each thread making its own calls, all the threads in the same rounds (live/rounds.py):
    every thread's own queue emptied, then the process's (by the main thread, its own queue
    empty), then all put back."""
    main = _main_thread(plan)
    own = yield from _take(plan, plan.threads, "SigPnd")
    shared = (yield from _take(plan, [main], "ShdPnd"))[main.tid]
    queued = False
    for thread in plan.threads:
        queued |= _queue_in(plan.reads(thread), plan.pid, thread.tid, own[thread.tid])
        if thread is main:
            queued |= _queue_in(plan.reads(thread), plan.pid, 0, shared)
    if queued:
        yield
    return [{"tid": tid, "signals": infos} for tid, infos in own.items()], shared


def _main_thread(plan: DumpPlan) -> Thread:
    return next((t for t in plan.threads if t.tid == plan.pid), plan.threads[0])


def _take(plan: DumpPlan, threads: list[Thread],
          field: str) -> Generator[None, None, dict[int, list[bytes]]]:
    """Each thread's signals pending in `field` of its /proc status (SigPnd: its own queue,
    ShdPnd: the process's), taken by the thread, signal by signal in the order of their
    numbers, each in its queue's order. A round takes every instance it can of each signal
    pending (`_at_once`); what is still pending after it, the next takes."""
    taken: dict[int, dict[int, list[bytes]]] = {t.tid: {} for t in threads}
    numbers: dict[int, list[int]] = {}
    for thread in threads:
        numbers[thread.tid] = _bits(_pending(plan.pid, thread.tid, field))
        for number in numbers[thread.tid]:
            # rt_sigtimedwait cannot take them: left where they are
            taken[thread.tid][number] = [struct.pack("<i", number).ljust(SIGINFO, b"\0")] \
                if number in UNQUEUEABLE else []
    while True:
        asked = []
        for thread in threads:
            now = _pending(plan.pid, thread.tid, field)
            left = [n for n in numbers[thread.tid] if n not in UNQUEUEABLE and now >> (n - 1) & 1]
            if not left:
                continue
            if sum(len(infos) for infos in taken[thread.tid].values()) > DRAIN_LIMIT:
                raise RestoreError(f"thread {thread.tid}: more than {DRAIN_LIMIT} pending "
                                   "signals")
            reads = plan.reads(thread)
            timeout = reads.put(bytes(16))
            for number in left:
                one = reads.put(struct.pack("<Q", 1 << (number - 1)))
                calls = []
                for _ in range(_at_once(plan, thread.tid, field, number)):
                    info = reads.reserve(SIGINFO)
                    calls.append((info, reads.raw(RT_SIGTIMEDWAIT, one, info, timeout, 8)))
                asked.append((thread.tid, number, reads, calls))
        if not asked:
            break
        yield
        for tid, number, reads, calls in asked:
            for i, (info, ref) in enumerate(calls):
                got = reads.value(ref)
                if i and got == EAGAIN:
                    break  # the queue held fewer: the rest found none
                checked(RT_SIGTIMEDWAIT, got, f"taking pending {signal_name(number)} to read it")
                if got != number:
                    raise RestoreError(f"taking pending {signal_name(number)} gave signal {got}")
                taken[tid][number].append(reads.read(info, SIGINFO))
    return {tid: [info for number in sorted(by) for info in by[number]]
            for tid, by in taken.items()}


def _at_once(plan: DumpPlan, tid: int, field: str, number: int) -> int:
    """How many of signal `number` one round takes from the queue: a signal below SIGRTMIN is
    pending once at most; a real-time one as many times as the signals queued for the user
    (SigQ), unless the thread's own queue is emptied while the process's holds it too (a
    call past the last of its own would take the process's)."""
    if number < SIGRTMIN or field == "SigPnd" and _pending(
            plan.pid, tid, "ShdPnd") >> (number - 1) & 1:
        return 1
    with open(f"/proc/{plan.pid}/task/{tid}/status") as f:
        queued = next((line.split()[1] for line in f if line.startswith("SigQ:")), "1/0")
    return max(1, min(int(queued.split("/")[0]), TAKE_AT_ONCE))


def _queue_in(reads: Reads, pid: int, tid: int, infos: list[bytes]) -> bool:
    """_queue's calls in a dump's round, by the thread whose calls `reads` holds: to itself
    (`tid`, its id), or with tid 0 to the process. Whether there was any to queue."""
    infos = [info for info in infos if _number(info) not in UNQUEUEABLE]
    if not infos:
        return False
    own = reads.call(GETTID, step="reading the thread id") if tid else 0
    for info in infos:
        number, at = _number(info), reads.put(info)
        if tid:
            reads.call(RT_TGSIGQUEUEINFO, pid, own, number, at,
                       step=f"queueing pending {signal_name(number)} for thread {tid}")
        else:
            reads.call(RT_SIGQUEUEINFO, pid, number, at,
                       step=f"queueing pending {signal_name(number)} for the process")
    return True


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
