"""State kinds' restore hooks in one resume, without changing the hooks.

A hook (binfmt_img/state) makes its system calls one by one through `plan.injector`, each a
debugger stop. For the kinds in SET_ONLY, whose hooks only set state (a call's result is
looked at only to tell an error, nothing is read back from memory, no Python state changes
with a result), the hooks run three times over:

1. record: against a stand-in injector that queues each call and answers 0 (success); their
   data goes to fixed addresses (the scratch data pages, or a thread's own region); their
   warnings are dropped;
2. run: the queued calls as one restorer table, stopping at the first call that fails
   (what a hook would see first that it did not assume);
3. replay: against the results. A call the table made (same number and arguments; a hook
   that now skips a call, having read back a value it did not assume, skips to a later
   one) gets its real result (`call` raises on an error exactly as Injector.call does);
   from the first call the table did not make, the calls are made for real, one step each,
   as without this module. Skipped calls were made: they only set what the hook wants.

Anything unexpected while recording (a hook asking for more than calls and data) gives up
the speculation before any change: the hooks then run as they always did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from binfmt_img.formats.model import Thread
from binfmt_img.live import restorer
from binfmt_img.live import syscalls as sc
from binfmt_img.live.inject import (
    DATA_AT,
    SCRATCH_SIZE,
    Entry,
    Injector,
    checked,
    write_bulk,
)

if TYPE_CHECKING:
    from binfmt_img.live.restore import RestorePlan

# Kinds whose restore and restore_thread hooks only set state or read back what they set
# (reviewed: prctl, personality, thread names, rseq, umask, sched). Not: rlimits (keeps what
# it set in Python), timers and descriptors (results feed later calls that change state).
SET_ONLY = frozenset({"umask", "personality", "thread-names", "prctl", "rseq", "sched"})
# Per-thread hooks that can join them: pending signals queue for the thread (a call with a
# recorded tid 0 fails, so the real one is made afterwards, never twice); rlimits makes no
# call for a thread other than the main one.
THREAD_ONLY = frozenset({"pending_signals"})
OTHER_THREADS = frozenset({"rlimits"})
DATA_ROOM = (SCRATCH_SIZE - DATA_AT) // 2  # the rest of the data pages can take the table

Hook = tuple[str, Callable[[], None]]  # (kind name, the hook with its arguments bound)


class _GiveUp(Exception):
    """The recording met something it cannot queue."""


class Recorder:
    """Stands in for the injector while hooks are recorded: calls queued (answered 0), data
    placed from `base` (at most `room` bytes), to be written before the table runs."""

    def __init__(self, base: int, room: int) -> None:
        self.base, self.room = base, room
        self.data = bytearray()
        self.pieces: list[tuple[int, bytes]] = []  # (offset, bytes) of each put
        self.entries: list[Entry] = []

    def put(self, data: bytes, align: int = 16) -> int:
        at = -(-len(self.data) // align) * align
        if at + len(data) > self.room:
            raise _GiveUp("data")
        self.data += bytes(at - len(self.data)) + data
        self.pieces.append((at, bytes(data)))
        return self.base + at

    def reserve(self, size: int, align: int = 16) -> int:
        return self.put(bytes(size), align)

    def put_string(self, text: str) -> int:
        return self.put(text.encode() + b"\0", 1)

    def reset_data(self) -> None:
        pass  # every piece keeps its place until the table has run

    def raw(self, nr: int, *args: int) -> int:
        if not all(isinstance(a, int) for a in args) or nr >= restorer.PSEUDO \
                or nr in UNBATCHABLE:
            raise _GiveUp("arguments")
        self.entries.append(Entry(nr, args, False, "", None))
        return 0

    def call(self, nr: int, *args: int, step: str, address: int | None = None) -> int:
        result = self.raw(nr, *args)
        self.entries[-1].step, self.entries[-1].address = step, address
        return result

    def __getattr__(self, name: str) -> object:
        raise _GiveUp(name)


# Calls a table must not make for a hook: they make or end threads and processes.
UNBATCHABLE = frozenset({sc.CLONE, 57, 58, 59, 60, 231, 322, 435})


class _Replayer:
    """The injector for the hooks' second run: each call the table made (matched by number
    and arguments, later ones skipped to when the hook skips a call it did not need) gets
    its result; the first call the table did not make, and all after it, are made for real."""

    def __init__(self, injector: Injector, recorder: Recorder, results: list[int]) -> None:
        self.injector, self.recorder, self.results = injector, recorder, results
        self.next = 0  # the next table entry
        self.piece = 0  # the next recorded piece of data
        self.live = False

    def _go_live(self) -> None:
        if not self.live:
            self.live = True
            self.injector.reset_data()

    def put(self, data: bytes, align: int = 16) -> int:
        if not self.live:
            for i in range(self.piece, len(self.recorder.pieces)):
                at, recorded = self.recorder.pieces[i]
                if recorded == data:
                    self.piece = i + 1
                    return self.recorder.base + at
            self._go_live()
        return self.injector.put(data, align)

    def reserve(self, size: int, align: int = 16) -> int:
        return self.put(bytes(size), align)

    def put_string(self, text: str) -> int:
        return self.put(text.encode() + b"\0", 1)

    def reset_data(self) -> None:
        if self.live:
            self.injector.reset_data()

    def raw(self, nr: int, *args: int) -> int:
        if not self.live:
            entries = self.recorder.entries
            for i in range(self.next, len(self.results)):
                if entries[i].nr == nr and entries[i].args == args:
                    self.next = i + 1
                    return self.results[i]
            self._go_live()
        return self.injector.raw(nr, *args)

    def call(self, nr: int, *args: int, step: str, address: int | None = None) -> int:
        return checked(nr, self.raw(nr, *args), step, address)

    def __getattr__(self, name: str) -> object:
        self._go_live()
        return getattr(self.injector, name)


def batchable(plan: RestorePlan, name: str, thread: Thread | None = None) -> bool:
    """Whether kind `name`'s hook (restore_thread for `thread`, else restore) can be
    recorded."""
    if thread is None:
        return name in SET_ONLY
    return name in SET_ONLY or name in THREAD_ONLY or (
        name in OTHER_THREADS and thread is not plan.main_thread)


def run_hooks(plan: RestorePlan, hooks: list[Hook], thread: Thread | None = None) -> None:
    """Run the hooks in order: each stretch of batchable ones in one resume."""
    group: list[Hook] = []
    for name, hook in hooks:
        if batchable(plan, name, thread):
            group.append((name, hook))
            continue
        _speculate(plan, group)
        group = []
        hook()
    _speculate(plan, group)


def record(plan: RestorePlan, hooks: list[Hook], base: int, room: int) -> Recorder | None:
    """The hooks' calls, recorded (None: they cannot be; nothing changed)."""
    injector, recorder = plan.injector, Recorder(base, room)
    warnings = len(plan.report.warnings)
    plan.injector = recorder  # type: ignore[assignment]
    try:
        for _, hook in hooks:
            hook()
        return recorder
    except Exception:  # noqa: BLE001 - nothing changed yet: the caller runs them as they are
        return None
    finally:
        plan.injector = injector
        del plan.report.warnings[warnings:]


def replay(plan: RestorePlan, hooks: list[Hook], recorder: Recorder | None,
           results: list[int]) -> None:
    """The hooks again, against the table's results (or for real, without a recording)."""
    injector = plan.injector
    if recorder is None:
        for _, hook in hooks:
            hook()
        return
    plan.injector = _Replayer(injector, recorder, results)  # type: ignore[assignment]
    try:
        for _, hook in hooks:
            hook()
    finally:
        plan.injector = injector


def _speculate(plan: RestorePlan, group: list[Hook]) -> None:
    if not group:
        return
    injector = plan.injector
    assert injector.scratch is not None
    recorder = record(plan, group, injector.scratch + DATA_AT, DATA_ROOM)
    results = _run(injector, recorder) if recorder is not None else []
    replay(plan, group, recorder, results)


def _run(injector: Injector, recorder: Recorder) -> list[int]:
    """The recorded calls as one table; their results up to the first failure."""
    entries = recorder.entries
    if not entries:
        return []
    assert injector.scratch is not None
    if recorder.data:
        write_bulk(injector.target, recorder.base, bytes(recorder.data))
    after = -(-(DATA_AT + len(recorder.data)) // 64) * 64
    size = restorer.Layout(0, len(entries), 0).size + 64
    base = injector.scratch + after if after + size <= SCRATCH_SIZE \
        else injector._table_area(size)
    base = -(-base // 64) * 64
    layout = restorer.Layout(base, len(entries), 0)
    write_bulk(injector.target, base, restorer.build(
        layout, [(e.nr, e.args, False) for e in entries], b""))
    injector.reset_data()
    return injector.run_table(layout, entries)
