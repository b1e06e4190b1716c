"""The dump's injected calls in rounds: every thread's calls of a round in one resume.

What only the process itself can tell (a thread's signal mask, scheduling, prctl values, the
process's limits and timers...) is read by system calls the inferior makes. One debugger stop
per call made a dump cost a handful of stops per thread. Here a dump hook (binfmt_img/state)
is a generator: it queues its calls through `plan.reads(thread)` (that thread's own calls;
without a thread the process's, made by the first thread), then `yield`s. Once every hook has
queued its round, each thread runs its table of the round (binfmt_img/live/restorer.py), all
the threads in one resume (Injector.run_tables); each hook then goes on after its `yield` and
reads what it asked for (`reads.value(ref)`, `reads.read(ref, size)`). A hook whose next calls
depend on what it read (a probe, signals taken and queued again) queues them and yields again:
a dump takes as many resumes as its hook with the most rounds, whatever the number of threads.

Every call of a round may fail without stopping its table, so that one hook's failure leaves
the other hooks' calls made. A `call` (one that must succeed) that failed is raised into its
hook at its `yield`, with the message Injector.call gives: what the hook would have met
making its calls one by one. A hook that raises is left out and its error raised once the
others are done (one that took signals to read them queues them back first).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import Thread
from binfmt_img.live import restorer
from binfmt_img.live.inject import DATA_AT, SCRATCH_SIZE, TABLE_ROOM, Batch, checked, write_bulk
from binfmt_img.live.procfs import ProcMem
from binfmt_img.live.threads import select

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan

# The start of the scratch area's data pages that the rounds' tables leave alone: the rseq
# probe's area (binfmt_img/state/rseq.py), which may stay registered from one round to the
# next while the kernel writes into it.
KEEP = 64
PROBE_AREA = DATA_AT  # from the scratch area's start; 32-byte aligned

Hook = Generator[None, None, Any]


class Reads:
    """One hook's calls for one thread in one round: its part of the thread's table. The
    queueing side is Batch's (call, raw, put, reserve, put_string, xsave); after the round,
    value() and read() give the results and the data."""

    __slots__ = ("batch", "checks", "round")

    def __init__(self, round_: Round, batch: Batch) -> None:
        self.round, self.batch = round_, batch
        self.checks: list[int] = []  # indexes of the entries that must succeed

    def call(self, nr: int, *args: int | restorer.Ref, step: str,
             address: int | None = None) -> restorer.Ref:
        """A call that must succeed: its failure is raised into the hook at its yield."""
        ref = self.raw(nr, *args)
        entry = self.batch.entries[-1]
        entry.step, entry.address = step, address
        self.checks.append(ref.at)
        return ref

    def raw(self, nr: int, *args: int | restorer.Ref) -> restorer.Ref:
        """A call that may fail: value() is then -errno as rax holds it."""
        return self._open().raw(nr, *args)

    def put(self, data: bytes, align: int = 16) -> restorer.Ref:
        return self._open().put(data, align)

    def reserve(self, size: int, align: int = 16) -> restorer.Ref:
        return self._open().reserve(size, align)

    def put_string(self, text: str) -> restorer.Ref:
        return self._open().put_string(text)

    def xsave(self, size: int, features: int) -> restorer.Ref:
        return self._open().xsave(size, features)

    def _open(self) -> Batch:
        assert self.batch.results is None, "a later round's calls go through its plan.reads()"
        return self.batch

    def value(self, ref: restorer.Ref) -> int:
        """A call's result (rax), or the address of a piece of data."""
        return self.batch.value(ref)

    def read(self, ref: restorer.Ref, size: int) -> bytes:
        return self.round.read(self.batch.value(ref), size)

    def failure(self) -> RestoreError | None:
        """The first call that had to succeed and failed, as Injector.call raises it."""
        assert self.batch.results is not None
        for at in self.checks:
            entry, result = self.batch.entries[at], self.batch.results[at]
            try:
                checked(entry.nr, result, entry.step, entry.address)
            except RestoreError as error:
                return error
        return None


class Round:
    """The calls every hook queued for one resume: a table per thread."""

    def __init__(self, plan: DumpPlan) -> None:
        self.plan = plan
        self.hook = ""  # the hook queueing now
        self.batches: dict[int, Batch] = {}
        self.views: dict[str, dict[int, Reads]] = {}
        self.memory: list[tuple[int, bytes]] = []  # (address, bytes) read back after the run

    def reads(self, thread: Thread) -> Reads:
        batch = self.batches.get(thread.tid)
        if batch is None:
            batch = self.batches[thread.tid] = Batch(self.plan.injector)
        views = self.views.setdefault(self.hook, {})
        if thread.tid not in views:
            views[thread.tid] = Reads(self, batch)
        return views[thread.tid]

    def failure(self, hook: str) -> RestoreError | None:
        for view in self.views.get(hook, {}).values():
            error = view.failure()
            if error is not None:
                return error
        return None

    def read(self, address: int, size: int) -> bytes:
        for base, data in self.memory:
            if base <= address and address + size <= base + len(data):
                return data[address - base:address - base + size]
        return self.plan.target.read_memory(address, size)

    def run(self) -> None:
        """Every thread's table in one resume (more only past the table area's size)."""
        threads = self.plan.threads
        tids = [t.tid for t in threads if t.tid in self.batches and self.batches[t.tid].entries]
        group: list[int] = []
        size = 0
        for tid in tids:
            need = self.batches[tid].size()
            if group and size + need > TABLE_ROOM:
                self._run(group, size)
                group, size = [], 0
            group.append(tid)
            size += need
        if group:
            self._run(group, size)
        if len(threads) > 1:
            select(self.plan.target, threads[0].tid)

    def _run(self, tids: list[int], size: int) -> None:
        inj = self.plan.injector
        assert inj.scratch is not None
        base = inj.scratch + DATA_AT + KEEP if DATA_AT + KEEP + size <= SCRATCH_SIZE \
            else inj._table_area(size)
        blob = bytearray()
        for tid in tids:
            batch = self.batches[tid]
            at = -(-(base + len(blob)) // 64) * 64  # aligned puts stay aligned, as xsave needs
            layout = batch.layout = restorer.Layout(at, len(batch.entries), len(batch.data))
            blob += bytes(at - base - len(blob))
            blob += restorer.build(layout, [(e.nr, e.args, e.flags) for e in batch.entries],
                                   bytes(batch.data))
        write_bulk(self.plan.target, base, bytes(blob))
        inj.reset_data()
        if len(self.plan.threads) == 1:
            batch = self.batches[tids[0]]
            assert batch.layout is not None
            results = [inj.run_table(batch.layout, batch.entries)]
        else:
            results = inj.run_tables([(tid, self.batches[tid].layout, self.batches[tid].entries)
                                      for tid in tids])  # type: ignore[misc]
        for tid, got in zip(tids, results):
            self.batches[tid].finish(got)  # only an xsave cannot fail, and it does not
        self.memory.append((base, self._read_back(base, len(blob))))

    def _read_back(self, base: int, size: int) -> bytes:
        """The tables' results and data in one read (through /proc: the dump's inferior is
        local), not one debugger read per thread and value."""
        try:
            mem = ProcMem(self.plan.pid, writable=False)
        except OSError:
            return self.plan.target.read_memory(base, size)
        try:
            return mem.read(base, size)
        except OSError:
            return self.plan.target.read_memory(base, size)
        finally:
            mem.close()


def run(plan: DumpPlan, hooks: list[tuple[str, Hook]]) -> dict[str, Any]:
    """Run the hooks (name, generator) round by round; their return values by name."""
    values: dict[str, Any] = {}
    error: BaseException | None = None
    active: list[tuple[str, Hook, RestoreError | None]] = [(n, h, None) for n, h in hooks]
    try:
        while active:
            round_ = plan.round = Round(plan)
            waiting = []
            for name, hook, thrown in active:
                round_.hook = name
                try:
                    if thrown is None:
                        next(hook)
                    else:
                        hook.throw(thrown)
                except StopIteration as stop:
                    values[name] = stop.value
                except Exception as failed:  # noqa: BLE001 - raised once the others are done
                    error = error or failed
                else:
                    waiting.append((name, hook))
            round_.run()
            active = [(name, hook, round_.failure(name)) for name, hook in waiting]
    except BaseException:
        for _, hook in hooks:  # a finished one's close does nothing
            hook.close()
        raise
    finally:
        plan.round = None
    if error is not None:
        raise error
    return values
