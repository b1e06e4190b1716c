"""State kinds' restore hooks in one resume, without changing the hooks.

A hook (binfmt_img/state) makes its system calls one by one through `plan.injector`, each a
debugger stop. For the kinds in SET_ONLY, whose hooks only set state (a call's result is
looked at only to tell an error, nothing is read back from memory, no Python state changes
with a result), the hooks run three times over:

1. record: against a stand-in injector that queues each call and answers 0 (success); their
   data goes to fixed addresses of the scratch data pages; their warnings are dropped;
2. run: the queued calls as one restorer table, stopping at the first call that fails
   (what a hook would see first that it did not assume);
3. replay: against the results. A call that matches the queued one gets its real result
   (`call` raises on an error exactly as Injector.call does); from the first call that does
   not (after a failure the hook goes another way), the calls are made for real, one step
   each, as without this module.

Anything unexpected while recording (a hook asking for more than calls and data) gives up
the speculation before any change: the hooks then run as they always did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from binfmt_img.errors import RestoreError
from binfmt_img.live import restorer
from binfmt_img.live import syscalls as sc
from binfmt_img.live.inject import DATA_AT, SCRATCH_SIZE, Entry, Injector

if TYPE_CHECKING:
    from binfmt_img.live.restore import RestorePlan

# Kinds whose restore and restore_thread hooks only set state (reviewed: prctl, personality,
# thread names, rseq, umask). Not: rlimits (keeps what it set in Python), sched (reads back
# what it set), pending signals, timers, descriptors (results feed later calls).
SET_ONLY = frozenset({"umask", "personality", "thread-names", "prctl", "rseq"})
DATA_ROOM = (SCRATCH_SIZE - DATA_AT) // 2  # the rest of the data pages can take the table

Hook = tuple[str, Callable[[], None]]  # (kind name, the hook with its arguments bound)


class _GiveUp(Exception):
    """The recording met something it cannot queue."""


class _Recorder:
    def __init__(self, injector: Injector) -> None:
        assert injector.scratch is not None
        self.base = injector.scratch + DATA_AT
        self.data = bytearray()
        self.entries: list[Entry] = []

    def put(self, data: bytes, align: int = 16) -> int:
        at = -(-len(self.data) // align) * align
        if at + len(data) > DATA_ROOM:
            raise _GiveUp("data")
        self.data += bytes(at - len(self.data)) + data
        return self.base + at

    def reserve(self, size: int, align: int = 16) -> int:
        return self.put(bytes(size), align)

    def put_string(self, text: str) -> int:
        return self.put(text.encode() + b"\0", 1)

    def reset_data(self) -> None:
        pass  # every piece keeps its place until the table has run

    def raw(self, nr: int, *args: int) -> int:
        if not all(isinstance(a, int) for a in args) or nr >= restorer.PSEUDO:
            raise _GiveUp("arguments")
        self.entries.append(Entry(nr, args, False, "", None))
        return 0

    def call(self, nr: int, *args: int, step: str, address: int | None = None) -> int:
        result = self.raw(nr, *args)
        self.entries[-1].step, self.entries[-1].address = step, address
        return result

    def __getattr__(self, name: str) -> object:
        raise _GiveUp(name)


class _Replayer:
    def __init__(self, injector: Injector, recorder: _Recorder, results: list[int]) -> None:
        self.injector, self.recorder, self.results = injector, recorder, results
        self.next = 0
        self.used = 0  # the recorder's data, allocated again in the same order
        self.live = False

    def _go_live(self) -> None:
        if not self.live:
            self.live = True
            self.injector.reset_data()

    def put(self, data: bytes, align: int = 16) -> int:
        if not self.live:
            at = -(-self.used // align) * align
            if bytes(self.recorder.data[at:at + len(data)]) == data:
                self.used = at + len(data)
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
            i = self.next
            if i < len(self.results) and self.recorder.entries[i].nr == nr \
                    and self.recorder.entries[i].args == args:
                self.next += 1
                return self.results[i]
            self._go_live()
        return self.injector.raw(nr, *args)

    def call(self, nr: int, *args: int, step: str, address: int | None = None) -> int:
        result = self.raw(nr, *args)
        if sc.is_error(result):
            where = f" at {address:#x}" if address is not None else ""
            raise RestoreError(f"{step}{where}: {sc.NAMES.get(nr, nr)} failed: "
                               f"{sc.errno_text(result)}")
        return result

    def __getattr__(self, name: str) -> object:
        self._go_live()
        return getattr(self.injector, name)


def run_hooks(plan: RestorePlan, hooks: list[Hook]) -> None:
    """Run the hooks in order: each stretch of SET_ONLY kinds' hooks in one resume."""
    group: list[Hook] = []
    for name, hook in hooks:
        if name in SET_ONLY:
            group.append((name, hook))
            continue
        _speculate(plan, group)
        group = []
        hook()
    _speculate(plan, group)


def _speculate(plan: RestorePlan, group: list[Hook]) -> None:
    if not group:
        return
    injector = plan.injector
    recorder = _Recorder(injector)
    warnings = len(plan.report.warnings)
    plan.injector = recorder  # type: ignore[assignment]
    try:
        for _, hook in group:
            hook()
        recorded = True
    except Exception:  # noqa: BLE001 - nothing changed yet: run the hooks as they are
        recorded = False
    finally:
        plan.injector = injector
        del plan.report.warnings[warnings:]
    if not recorded:
        for _, hook in group:
            injector.reset_data()
            hook()
        return
    results = _run(injector, recorder)
    replayer = _Replayer(injector, recorder, results)
    plan.injector = replayer  # type: ignore[assignment]
    try:
        for _, hook in group:
            hook()
    finally:
        plan.injector = injector


def _run(injector: Injector, recorder: _Recorder) -> list[int]:
    """The recorded calls as one table; their results up to the first failure."""
    entries = recorder.entries
    if not entries:
        return []
    assert injector.scratch is not None
    if recorder.data:
        injector.target.write_memory(recorder.base, bytes(recorder.data))
    after = -(-(DATA_AT + len(recorder.data)) // 64) * 64
    size = restorer.Layout(0, len(entries), 0).size + 64
    base = injector.scratch + after if after + size <= SCRATCH_SIZE \
        else injector._table_area(size)
    base = -(-base // 64) * 64
    layout = restorer.Layout(base, len(entries), 0)
    injector.target.write_memory(base, restorer.build(
        layout, [(e.nr, e.args, False) for e in entries], b""))
    injector.reset_data()
    return injector.run_table(layout, entries)
