"""Several threads: each one read at a dump, each one created again at a restore.

The core reaches threads through two optional Target methods, threads() and select_thread();
an adapter without them has one thread. Per-thread state that only the thread itself can tell
(FPU, signal mask, alternate stack, TLS entries, robust list, rseq) is read and set by system
calls injected in that very thread while the others stay stopped.

Thread ids cannot be kept: a restored thread gets a new one. glibc caches each thread's id in
its struct pthread (`pthread->tid`: pthread_kill, pthread_join and GDB's libthread_db read
it), and gives the kernel that same address as clear_child_tid (set_tid_address for the main
thread, CLONE_CHILD_CLEARTID for the others), which the kernel does not show. The dump finds
it without hard-coding glibc's layout: struct pthread starts at fs_base (x86-64 TLS variant
II), so the offset in the page at fs_base that holds every thread's own tid (the lowest, if
several do) is taken, and fs_base + offset is stored as the thread's clear_child_tid. The
restore writes the new tid there, and clone is given it as glibc's pthread_create does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import ALL_REGISTERS, Image, Thread
from binfmt_img.live import speculate
from binfmt_img.live.inject import (
    CHILD_STACK_AT,
    SAVED_REGISTERS,
    SPIN,
    TABLE_ROOM,
    Batch,
    write_bulk,
)
from binfmt_img.live.procfs import Mapping
from binfmt_img.live.target import Target

if TYPE_CHECKING:
    from binfmt_img.live.restore import RestorePlan

CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM, CLONE_SETTLS = 0x10000, 0x40000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID = 0x100000, 0x200000
# glibc's pthread_create flags; the two tid ones are added when the tid address is known.
CLONE_FLAGS = (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD
               | CLONE_SYSVSEM | CLONE_SETTLS)
THREAD_REGION = 0x10000  # bytes of the table area for each new thread's table and data
TID_SEARCH = 4096  # bytes searched at fs_base for the tid


def thread_ids(target: Target) -> list[int]:
    """The inferior's thread ids, the selected one first; [] when the adapter has none."""
    threads = getattr(target, "threads", None)
    return list(threads()) if threads is not None else []


def select(target: Target, tid: int | None) -> None:
    select_thread = getattr(target, "select_thread", None)
    if tid is not None and select_thread is not None:
        select_thread(tid)


# ---- dump ----

def read_threads(target: Target, pid: int) -> list[Thread]:
    """Every thread with its registers, the selected one first."""
    tids = thread_ids(target) or [pid]
    threads = []
    for tid in tids:
        if len(tids) > 1:
            select(target, tid)
        threads.append(Thread(tid=tid, registers=target.read_registers(ALL_REGISTERS)))
    if len(tids) > 1:
        select(target, tids[0])
    return threads


def save_registers(target: Target, threads: list[Thread]) -> dict[int, dict[str, int]]:
    saved = {}
    for thread in threads:
        if len(threads) > 1:
            select(target, thread.tid)
        saved[thread.tid] = target.read_registers(SAVED_REGISTERS)
    if len(threads) > 1:
        select(target, threads[0].tid)
    return saved


def put_back_registers(target: Target, saved: dict[int, dict[str, int]]) -> None:
    """Each thread's registers as save_registers found them, the first thread selected."""
    for tid, regs in reversed(saved.items()):
        if len(saved) > 1:
            select(target, tid)
        ordered = {"rip": regs["rip"]}  # rip first: it resets orig_rax in GDB
        ordered.update({k: v for k, v in regs.items() if k not in ("rip", "orig_rax", "rax")})
        if "orig_rax" in regs:
            ordered["orig_rax"] = regs["orig_rax"]
        ordered["rax"] = regs["rax"]
        target.write_registers(ordered)


def tid_offset(threads: list[Thread], spans: list[tuple[int, int]],
               read: Callable[[int, int], bytes | None]) -> int | None:
    """The offset from fs_base where every thread keeps its own tid (see the module's doc),
    or None. `spans` are the mapped ranges, `read` reads memory (None: unreadable)."""
    common: set[int] | None = None
    for thread in threads:
        fs_base = thread.registers.get("fs_base", 0)
        end = next((e for s, e in spans if s <= fs_base < e), None)
        data = read(fs_base, min(TID_SEARCH, end - fs_base)) if fs_base and end else None
        if not data or not thread.tid:
            return None
        tid = struct.pack("<I", thread.tid)
        hits = {at for at in range(0, len(data) - 3, 4) if data[at:at + 4] == tid}
        common = hits if common is None else common & hits
    return min(common) if common else None


def find_tid_addresses(threads: list[Thread], maps: list[Mapping],
                       read: Callable[[int, int], bytes]) -> None:
    """Set each thread's clear_child_tid to where its struct pthread keeps its tid; left 0
    when no offset fits."""
    offset = tid_offset(threads, [(m.start, m.end) for m in maps], read)
    if offset is not None:
        for thread in threads:
            thread.clear_child_tid = thread.registers["fs_base"] + offset


# ---- restore ----

def main_thread(image: Image) -> Thread:
    """The thread restored into the inferior's own thread: the dumped process's main thread
    (tid == pid), so that it stays the thread group leader; else the first."""
    return next((t for t in image.threads if image.pid and t.tid == image.pid),
                image.threads[0])


def check_threads(plan: RestorePlan) -> None:
    """Before any change: one live thread to restore into, and the image's tid addresses."""
    live = thread_ids(plan.target)
    if len(live) > 1:
        raise RestoreError(f"the inferior has {len(live)} threads; restore into a process "
                           "with one: kill it, and img-restore starts a fresh one")
    if len(plan.image.threads) > 1 and not hasattr(plan.target, "select_thread"):
        raise RestoreError("the image has several threads and this debugger's adapter "
                           "cannot select threads")
    plan.live_tid = live[0] if live else plan.pid
    plan.tid_addresses = _tid_addresses(plan)


def _tid_addresses(plan: RestorePlan) -> dict[int, int]:
    """image tid -> where glibc caches it, for the threads whose image memory holds their
    tid there; the others are left as they are, with a warning."""
    image, found = plan.image, {}
    derived = None
    if len(image.threads) > 1 and not any(t.clear_child_tid for t in image.threads):
        # An image that does not say (a core, say): look for the tids in its memory.
        derived = tid_offset(image.threads, [(v.start, v.end) for v in image.vmas],
                             image.read)
    for thread in image.threads:
        at = thread.clear_child_tid
        if derived is not None:
            at = thread.registers["fs_base"] + derived
        held = image.read(at, 4) if at else None
        if held is not None and struct.unpack("<I", held)[0] == thread.tid:
            found[thread.tid] = at
        elif at and len(image.threads) > 1:
            plan.report.warnings.append(
                f"thread {thread.tid}: no tid at {at:#x}; glibc's cached thread id is left "
                "as it was (pthread_kill and pthread_join may fail)")
    return found


def restore_threads(plan: RestorePlan) -> None:
    """Once memory and the main thread's state are in place: the main thread's cached tid,
    then the other threads: made by one table of clones (each child waits in the restorer),
    each given its own state by a table of its own, all run in one resume, then its
    registers."""
    target, main = plan.target, plan.main_thread
    plan.live_tids = {main.tid: plan.live_tid}
    if main.tid in plan.tid_addresses:
        write_bulk(target, plan.tid_addresses[main.tid], struct.pack("<I", plan.live_tid))
    others = [t for t in plan.image.threads if t is not main]
    if not others:
        return
    tids = _clone_all(plan, others)
    for thread, tid in zip(others, tids):
        plan.live_tids[thread.tid] = tid
    _state_all(plan, others, tids)
    for thread, tid in zip(others, tids):
        select(target, tid)
        plan._set_registers(thread)
    select(target, plan.live_tid)


def _clone_all(plan: RestorePlan, others: list[Thread]) -> list[int]:
    """New threads of the inferior for `others`, waiting in the scratch page; their tids."""
    inj = plan.injector
    with inj.batch() as batch:
        refs = []
        for thread in others:
            tid_at = plan.tid_addresses.get(thread.tid, 0)
            flags = CLONE_FLAGS | (CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID if tid_at else 0)
            refs.append(batch.clone(flags, plan.scratch + CHILD_STACK_AT, tid_at, tid_at,
                                    thread.registers.get("fs_base", 0),
                                    step=f"creating thread {thread.tid} of the image"))
    tids = [batch.value(ref) for ref in refs]
    listed = set(thread_ids(plan.target))
    for thread, tid in zip(others, tids):
        if tid not in listed:
            raise RestoreError(f"the debugger does not show thread {tid}, created for thread "
                               f"{thread.tid} of the image")
    return tids


def _state_all(plan: RestorePlan, others: list[Thread], tids: list[int]) -> None:
    """Each new thread's own state (plan.queue_thread_state) and its state kinds' hooks
    (recorded, binfmt_img/live/speculate.py) in a table of its own, in a region of the table
    area; the tables run together; then the hooks are replayed against their results."""
    inj = plan.injector
    room = THREAD_REGION // 2  # the batch's table and data, then the hooks' data
    if len(others) * THREAD_REGION > TABLE_ROOM:
        for thread, tid in zip(others, tids):  # too many for the table area: one by one
            select(plan.target, tid)
            plan._set_thread_state(thread, with_altstack=True)
        return
    area = inj._table_area(len(others) * THREAD_REGION)
    runs, batches, recorded, hooks = [], [], [], []
    for i, (thread, tid) in enumerate(zip(others, tids)):
        base = area + i * THREAD_REGION
        batch = Batch(inj)
        plan.queue_thread_state(batch, thread, with_altstack=True)
        own = plan.thread_hooks(thread)
        all_batchable = all(speculate.batchable(plan, name, thread) for name, _ in own)
        recorder = speculate.record(plan, own, base + room, room) if all_batchable else None
        if recorder is not None:
            batch.entries += recorder.entries  # run after the thread's state, in its table
            if recorder.data:
                write_bulk(plan.target, recorder.base, bytes(recorder.data))
        if batch.size() > room:
            raise RestoreError(f"thread {thread.tid}: its state takes {batch.size()} bytes, "
                               f"more than the {room} of its region")
        runs.append((tid, batch.place(base), batch.entries))
        batches.append(batch)
        recorded.append(recorder)
        hooks.append(own)
    results = inj.run_tables(runs)
    for tid, batch, recorder, own, got in zip(tids, batches, recorded, hooks, results):
        select(plan.target, tid)
        core = len(batch.entries) - (len(recorder.entries) if recorder is not None else 0)
        batch.entries = batch.entries[:core]
        batch.complete(got[:core])
        inj.reset_data()
        speculate.replay(plan, own, recorder, got[core:])
    select(plan.target, plan.live_tid)


def select_stopped_thread(plan: RestorePlan) -> None:
    """Select the thread the image was stopped in (its first), as the debugger had it."""
    if len(plan.live_tids) > 1:
        select(plan.target, plan.live_tids.get(plan.image.threads[0].tid))


def hold_threads(target: Target) -> list[tuple[int, bytes]]:
    """A `jmp .` at every thread's rip, so that none moves while the debugger lets go of the
    process for a moment; returns what release_threads puts back."""
    tids = thread_ids(target) or [None]
    rips = []
    for tid in tids:
        if len(tids) > 1:
            select(target, tid)
        rips.append(target.read_registers(("rip",))["rip"])
    if len(tids) > 1:
        select(target, tids[0])
    saved = [(rip, target.read_memory(rip, len(SPIN))) for rip in dict.fromkeys(rips)]
    for rip, _ in saved:
        target.write_memory(rip, SPIN)
    return saved


def release_threads(target: Target, saved: list[tuple[int, bytes]]) -> None:
    for rip, data in reversed(saved):
        target.write_memory(rip, data)


def while_spinning(target: Target, action: Callable[[], None]) -> None:
    """Run an adapter's action that lets go of the inferior for a moment (a detach and
    attach): a `jmp .` at each thread's rip holds it still meanwhile, and goes again after."""
    saved = hold_threads(target)
    try:
        action()
    finally:
        release_threads(target, saved)
