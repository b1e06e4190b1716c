"""img-dump's injected calls in rounds (binfmt_img/live/rounds.py): as many debugger stops for
one thread as for 32, and every thread's own state read back as its own."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from lldb_helpers import lldb_batch, lldb_missing
from selfcheck import gdb_round_trip, lldb_round_trip
from test_restorer import _manyvmas, _stops, needs_gdb

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import Thread
from binfmt_img.live import restorer, rounds

_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")
STOPS = "script import binfmt_img.live.target as t; print('STOPS', t.TOTAL['stops'])"
# name: PASS lines (threads_own_state: one per thread)
PROGRAMS = {"threads_own_state": 12, "sig_pending_mixed": 3}


@needs_gdb
def test_dump_stops_do_not_grow_with_the_threads_gdb(tmp_path: Path) -> None:
    """Opening the scratch area, one round, closing it: 3, and the 32-thread image restores
    (each thread back, the program says ok)."""
    (one, _), (many, _) = _stops(tmp_path, 10, threads=1), _stops(tmp_path, 10, threads=32)
    assert one == many, (one, many)
    assert many <= 4, many


def _lldb_dump_stops(tmp_path: Path, threads: int) -> int:
    binary = _manyvmas(tmp_path)
    image, out = tmp_path / f"l{threads}.img", tmp_path / f"l{threads}.out"
    dumped = lldb_batch("breakpoint set -n checkpoint", f"process launch -- 10 {threads}",
                        STOPS, f"img-dump {image}", STOPS, "process kill", program=binary,
                        timeout=300)
    assert image.exists(), dumped.stdout + dumped.stderr
    counts = [int(line.split()[1]) for line in dumped.stdout.splitlines()
              if line.startswith("STOPS")]
    restored = lldb_batch(f"target create {binary}", f"settings set target.output-path {out}",
                          f"img-restore {image}", "continue", timeout=300)
    assert out.read_text() == f"manyvmas 10 {threads}: ok\n", restored.stdout + restored.stderr
    return counts[1] - counts[0]


@needs_lldb
def test_dump_stops_do_not_grow_with_the_threads_lldb(tmp_path: Path) -> None:
    """As in GDB, but LLDB stops the whole process when the first thread reaches the end of
    its table, and resumes the others again (lldb_img's run_threads_to_trap): a few resumes
    more by the machine's timing (0 to 2 seen for 32 threads, 5 for 16 under load), not one
    or more per thread (before the rounds: 39 stops for one thread, 204 for 16)."""
    one, many = _lldb_dump_stops(tmp_path, 1), _lldb_dump_stops(tmp_path, 32)
    assert one <= 4 and many <= one + 12, (one, many)


@needs_gdb
@pytest.mark.parametrize("name", PROGRAMS)
def test_gdb(tmp_path: Path, name: str) -> None:
    gdb_round_trip(tmp_path, name, expected=PROGRAMS[name], flags=("-pthread",))


@needs_lldb
@pytest.mark.parametrize("name", PROGRAMS)
def test_lldb(tmp_path: Path, name: str) -> None:
    """LLDB's dump takes the pending signals to read them and queues them back, in rounds."""
    lldb_round_trip(tmp_path, name, expected=PROGRAMS[name], flags=("-pthread",))


# ---- the rounds' driver, without a process: each "run" answers from a table ----

EPERM = (1 << 64) - 1


def _fake_run(self: rounds.Round) -> None:
    """Round.run's results without a process: nr 39 (getpid) answers 100 + the entry's first
    argument, nr 999 EPERM; the data reads back as queued."""
    self.plan.resumes += any(batch.entries for batch in self.batches.values())
    for tid, batch in self.batches.items():
        batch.layout = restorer.Layout(0x100000 * tid, len(batch.entries), len(batch.data))
        batch.results = [EPERM if e.nr == 999 else 100 + e.args[0] for e in batch.entries]
        self.memory.append((batch.layout.data, bytes(batch.data)))


def test_rounds_raise_a_failed_call_into_its_hook_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed `call` is raised at its hook's yield, the others' calls all made; a hook that
    depends on what it read takes one round more, for every thread at once; a hook that
    raises is left out and its error raised once the others are done."""
    monkeypatch.setattr(rounds.Round, "run", _fake_run)
    threads = [Thread(tid=tid) for tid in (1, 2, 3)]
    plan = SimpleNamespace(threads=threads, injector=None, round=None, resumes=0)
    plan.reads = lambda thread=None: plan.round.reads(thread or threads[0])  # as DumpPlan's
    seen: dict[str, object] = {}

    def failing() -> rounds.Hook:
        plan.reads().call(999, 7, step="reading what is forbidden")
        try:
            yield
        except RestoreError as error:
            seen["failing"] = str(error)

    def two_rounds() -> rounds.Hook:
        asked = {t.tid: (plan.reads(t), plan.reads(t).raw(39, t.tid)) for t in threads}
        yield
        again = {t.tid: (plan.reads(t), plan.reads(t).raw(39, reads.value(ref)))
                 for t, (reads, ref) in zip(threads, asked.values())}
        yield
        seen["two_rounds"] = {tid: reads.value(ref) for tid, (reads, ref) in again.items()}

    def data() -> rounds.Hook:
        reads = plan.reads(threads[2])
        at = reads.put(b"queued")
        reads.raw(39, 0)
        yield
        seen["data"] = reads.read(at, 6)

    def broken() -> rounds.Hook:
        plan.reads().raw(39, 1)
        yield
        raise ValueError("a bug in a hook")

    with pytest.raises(ValueError, match="a bug in a hook"):
        rounds.run(plan, [("failing", failing()), ("broken", broken()),
                          ("two_rounds", two_rounds()), ("data", data())])
    assert seen == {"failing": "reading what is forbidden: 999 failed: EPERM (Operation not "
                               "permitted)",
                    "two_rounds": {1: 201, 2: 202, 3: 203}, "data": b"queued"}
    assert plan.resumes == 2 and plan.round is None
