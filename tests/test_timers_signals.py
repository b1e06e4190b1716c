"""Interval timers, POSIX timers, pending signals and rseq registrations
(binfmt_img/state/{itimers,posix_timers,pending_signals,rseq}.py): each checked by a
program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import shutil
import signal
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import synthetic
from cprogs import compile_program
from gdbmi import Gdb, GdbError
from lldb_helpers import lldb_batch, lldb_missing, read
from selfcheck import GDB_SIGNALS, LLDB_SIGNALS, gdb_round_trip, lldb_round_trip, passes
from test_gdb_restore import dump_at_checkpoint

from binfmt_img import state
from binfmt_img.formats import image_file
from binfmt_img.formats.model import Image, Thread
from binfmt_img.state import itimers, pending_signals, posix_timers, rseq

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")

PROGRAMS = {"timer_alarm": 3, "timer_itimer": 4, "sig_pending": 7, "timer_posix": 6,
            "timer_pending": 3, "timer_fast": 2, "timer_thread": 2, "rseq_none": 1, "rseq_own": 5}
# LLDB cannot read a registration that is not glibc's area (no ptrace from its Python), nor
# step through a signal handler: both tested below as refusals.
LLDB_PROGRAMS = {name: n for name, n in PROGRAMS.items()
                 if name not in ("rseq_own", "timer_fast")}


@needs_gdb
@pytest.mark.parametrize("name", PROGRAMS)
def test_gdb(tmp_path: Path, name: str) -> None:
    gdb_round_trip(tmp_path, name, expected=PROGRAMS[name])


@needs_lldb
@pytest.mark.parametrize("name", LLDB_PROGRAMS)
def test_lldb(tmp_path: Path, name: str) -> None:
    lldb_round_trip(tmp_path, name, expected=PROGRAMS[name])


@needs_lldb
def test_lldb_own_rseq_area_is_refused(tmp_path: Path) -> None:
    """The dump warns that it cannot read the program's own rseq area; the restore refuses in
    one line naming it, and with --accept-loss goes on with a warning (without that area)."""
    binary = compile_program("rseq_own", tmp_path)
    image = tmp_path / "rseq_own.img"
    dumped = lldb_batch(f"settings set target.output-path {tmp_path / 'part1'}", LLDB_SIGNALS,
                        "breakpoint set -n checkpoint", "run", f"img-dump {image}", "kill",
                        program=binary)
    assert "an rseq area this debugger cannot read" in dumped.stderr, dumped.stdout
    refused = lldb_batch(f"img-restore {image}", "continue")
    errors = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "rseq registration of thread" in errors[0], refused.stderr
    assert "--accept-loss" in errors[0]
    out = tmp_path / "part2"
    accepted = lldb_batch(f"settings set target.output-path {out}",
                          f"img-restore {image} --accept-loss", LLDB_SIGNALS, "continue")
    assert "warning: not restored: the rseq registration of thread" in accepted.stderr, \
        accepted.stdout + accepted.stderr
    assert "exited with status = 0" in accepted.stdout
    assert "PASS the other thread has glibc's area" in read(out)


@needs_gdb
def test_gdb_lost_timer_is_refused(tmp_path: Path) -> None:
    """A timer on the CPU clock of an unknown thread: the restore refuses in one line naming
    the timer, and with --accept-loss goes on with one warning; the other timer is back."""
    binary = compile_program("timer_lost", tmp_path)
    image = tmp_path / "timer_lost.img"
    dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    gdb = Gdb()
    try:
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {image}")
        message = str(refused.value)
        assert "would not bring back: POSIX timer 0 (the CPU clock of thread that created " \
               "it" in message and "--accept-loss" in message and "\n" not in message, message
    finally:
        gdb.close()
    out = tmp_path / "part2"
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"set args > {out}")
        said = gdb.console(f"img-restore {image} --accept-loss")
        assert said.count("warning: not restored: POSIX timer 0") == 1, said
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    passes(out.read_text(), 1)


@needs_lldb
def test_lldb_lost_timer_is_refused(tmp_path: Path) -> None:
    binary = compile_program("timer_lost", tmp_path)
    image = tmp_path / "timer_lost.img"
    dumped = lldb_batch(LLDB_SIGNALS, "breakpoint set -n checkpoint", "run",
                        f"img-dump {image}", "kill", program=binary)
    assert image.exists(), dumped.stdout + dumped.stderr
    refused = lldb_batch(f"img-restore {image}", "continue")
    errors = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "POSIX timer 0 (the CPU clock of thread" in errors[0], \
        refused.stderr
    out = tmp_path / "part2"
    accepted = lldb_batch(f"settings set target.output-path {out}",
                          f"img-restore {image} --accept-loss", LLDB_SIGNALS, "continue")
    assert accepted.stderr.count("warning: not restored: POSIX timer 0") == 1, accepted.stderr
    assert "exited with status = 0" in accepted.stdout
    passes(read(out), 1)


def _plan(*threads: tuple[int, int]) -> SimpleNamespace:
    image = Image(threads=[Thread(tid=tid, sigmask=mask) for tid, mask in threads], pid=5)
    return SimpleNamespace(image=image, losses=[], report=SimpleNamespace(warnings=[]),
                           local=False, main_thread=image.threads[0],
                           target=SimpleNamespace())


def _siginfo(number: int) -> bytes:
    return struct.pack("<iii", number, 0, 0).ljust(128, b"\0")


def test_unblocked_pending_signal_is_a_loss() -> None:
    """Without a debugger that steps over handlers, a pending signal that the main thread (or,
    shared, every thread) does not block would stop the restore half-way: named as a loss.
    Another thread's waits for the continue; under GDB they are warnings."""
    usr1, usr2 = 1 << (signal.SIGUSR1 - 1), 1 << (signal.SIGUSR2 - 1)
    value = pending_signals.Record.parse(pending_signals.Record.build({
        "threads": [{"tid": 5, "signals": [_siginfo(signal.SIGUSR1), _siginfo(signal.SIGUSR2)]},
                    {"tid": 6, "signals": [_siginfo(signal.SIGUSR1)]}],
        "shared": [_siginfo(signal.SIGUSR1), _siginfo(signal.SIGUSR2), _siginfo(9)]}))
    plan = _plan((5, usr1), (6, usr2))
    pending_signals.check(plan, value)
    assert plan.losses == [
        "SIGUSR2 pending for thread 5 but not blocked (this debugger would stop in the "
        "middle of the restore to deliver it)",
        "SIGUSR1 pending for the process but not blocked (this debugger would stop in the "
        "middle of the restore to deliver it)",
        "SIGUSR2 pending for the process but not blocked (this debugger would stop in the "
        "middle of the restore to deliver it)",
        "a pending signal 9 for the process (not a signal that can be queued)"]
    plan = _plan((5, usr1), (6, usr2))
    plan.target = SimpleNamespace(steps_over_signal_handler=lambda number: True)
    pending_signals.check(plan, value)
    assert plan.losses == ["a pending signal 9 for the process (not a signal that can be "
                           "queued)"]
    assert len(plan.report.warnings) == 3 and "delivered as the restore ends" in \
        plan.report.warnings[0]


PROC_TIMERS = """ID: 3
signal: 14/0000000000000000
notify: signal/pid.100
ClockID: 1
ID: 2
signal: 12/000000000000004d
notify: signal/tid.101
ClockID: -6
ID: 1
signal: 10/000000000000004d
notify: none/pid.100
ClockID: 0
"""


def test_proc_timers_and_their_losses() -> None:
    timers = posix_timers.parse_timers(PROC_TIMERS)
    assert timers[1] == {"id": 2, "signo": 12, "value": 0x4D, "notify": 4, "tid": 101,
                         "clock": -6}
    assert timers[2]["notify"] == posix_timers.SIGEV_NONE
    spans = dict.fromkeys(("interval_sec", "interval_nsec", "value_sec", "value_nsec"), 0)
    other_process = (~77 << 3) | 2  # the CPU clock of process 77
    records = [dict(timers[1], **spans), dict(timers[0], **spans, clock=other_process)]
    value = posix_timers.Record.parse(posix_timers.Record.build({"timers": records}))
    plan = _plan((100, 0))
    posix_timers.check(plan, value)
    assert plan.losses == ["POSIX timer 2 (its signal goes to thread 101, not in the image)",
                           "POSIX timer 3 (the CPU clock of process 77, another process)"]


TUNABLE = "GLIBC_TUNABLES=glibc.pthread.rseq=0"


@needs_gdb
def test_gdb_rseq_disabled_by_tunable(tmp_path: Path) -> None:
    """glibc.pthread.rseq=0: no area at all, none after the restore."""
    binary = compile_program("rseq_none", tmp_path)
    image = tmp_path / "rseq_none.img"
    before = dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,
                                                      f"set environment {TUNABLE}"))
    out = tmp_path / "part2"
    gdb = Gdb()
    try:
        gdb.console(f"set args > {out}")
        gdb.console(f"img-restore {image}")
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    passes(before + out.read_text(), 1)


@needs_lldb
def test_lldb_rseq_disabled_by_tunable(tmp_path: Path) -> None:
    """The same under LLDB, where the dump probes with the scratch page (glibc has no area)."""
    binary = compile_program("rseq_none", tmp_path)
    image = tmp_path / "rseq_none.img"
    dumped = lldb_batch(f"settings set target.env-vars {TUNABLE}", LLDB_SIGNALS,
                        "breakpoint set -n checkpoint", "run", f"img-dump {image}", "kill",
                        program=binary)
    assert image.exists(), dumped.stdout + dumped.stderr
    out = tmp_path / "part2"
    restored = lldb_batch(f"settings set target.output-path {out}", f"img-restore {image}",
                          LLDB_SIGNALS, "continue")
    assert "exited with status = 0" in restored.stdout, restored.stdout + restored.stderr
    passes(read(out), 1)


def test_records_round_trip_through_v1() -> None:
    """Each kind's record survives a v1 write and read, byte for byte, at its section type."""
    image = synthetic.make_image("v1")
    tid = image.threads[0].tid
    values = {
        "pending_signals": {"threads": [{"tid": tid, "signals": [_siginfo(10)]}],
                            "shared": [_siginfo(34), _siginfo(34)]},
        "posix_timers": {"timers": [{"id": 12345, "clock": -6, "notify": 4, "signo": 37,
                                     "value": 0xDEADBEEF, "tid": tid, "interval_sec": 1,
                                     "interval_nsec": 2, "value_sec": 3, "value_nsec": 4}]},
        "itimers": {"timers": [{"interval_sec": i, "interval_usec": 5, "value_sec": 6,
                                "value_usec": 7} for i in range(3)]},
        "rseq": {"threads": [{"tid": tid, "state": 1, "area": 0x7000, "length": 32,
                              "signature": 0x53053053}]},
    }
    for name, value in values.items():
        state.put(image, state.BY_NAME[name], value)
    data = synthetic.encode(image, "v1")
    got = state.decode(image_file.parse(memoryview(data)))
    for name, kind in state.BY_NAME.items():
        if name in image.states:
            assert kind.record.build(got.states[name]) == kind.record.build(image.states[name])
            assert synthetic.section(data, kind.section)[1] == kind.record.build(
                image.states[name])
    assert {k.id for k in state.KINDS} >= {20, 21, 22, 23}


def test_invalid_records_are_losses() -> None:
    plan = _plan((100, 0))
    bad_timer = {"interval_sec": 0, "interval_usec": 2_000_000, "value_sec": 0,
                 "value_usec": 0}
    zero = dict(bad_timer, interval_usec=0)
    itimers.check(plan, itimers.Record.parse(itimers.Record.build(
        {"timers": [bad_timer, zero, zero]})))
    rseq.check(plan, rseq.Record.parse(rseq.Record.build({"threads": [
        {"tid": 100, "state": 1, "area": 0x7001, "length": 32, "signature": 0},
        {"tid": 100, "state": 2, "area": 0, "length": 0, "signature": 0}]})))
    assert plan.losses == [
        "ITIMER_REAL (the image holds an invalid time)",
        "the rseq registration of thread 100 (an invalid area 0x7001, 32 bytes)",
        "the rseq registration of thread 100 (an area the dump could not read)"]


def _queued(number: int, value: int, pid: int) -> bytes:
    """A siginfo as sigqueue() makes it: SI_QUEUE, si_pid, si_value."""
    return struct.pack("<iiiiiIq", number, 0, -1, 0, pid, 0, value).ljust(128, b"\0")


def _with_unblocked_signals(binary: Path, tmp_path: Path) -> Path:
    """GDB's image of sig_unblocked, plus a SIGUSR1 pending for the process and a SIGUSR2
    for the main thread, neither blocked."""
    image_path = tmp_path / "plain.img"
    dump_at_checkpoint(binary, image_path, setup=(GDB_SIGNALS,))
    image = state.decode(image_file.load(str(image_path)))
    main = next(t.tid for t in image.threads if t.tid == image.pid)
    state.put(image, state.BY_NAME["pending_signals"], {
        "threads": [{"tid": main, "signals": [_queued(signal.SIGUSR2, 27, 4242)]}],
        "shared": [_queued(signal.SIGUSR1, 31337, 4242)]})
    out = tmp_path / "pending.img"
    image_file.save(str(out), image, "v1")
    return out


@needs_gdb
def test_gdb_unblocked_pending_signals_delivered_as_restore_ends(tmp_path: Path) -> None:
    image = _with_unblocked_signals(compile_program("sig_unblocked", tmp_path), tmp_path)
    out = tmp_path / "part2"
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"set args > {out}")
        said = gdb.console(f"img-restore {image}")
        assert "SIGUSR1 pending for the process and not blocked: delivered as the restore " \
               "ends" in said, said
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    passes(out.read_text(), 3)


@needs_gdb
def test_gdb_unblocked_pending_signals_refused_when_gdb_stops_for_them(tmp_path: Path) -> None:
    """With GDB's default `handle SIGUSR1 stop`, GDB would stop half-way: refused in one line
    naming both signals and the way out."""
    image = _with_unblocked_signals(compile_program("sig_unblocked", tmp_path), tmp_path)
    gdb = Gdb()
    try:
        gdb.console("handle SIGUSR1 nostop noprint pass")
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {image}")
    finally:
        gdb.close()
    message = str(refused.value)
    assert "SIGUSR2 pending for thread" in message and "handle it nostop pass" in message \
        and "SIGUSR1" not in message and "\n" not in message, message


@needs_lldb
def test_lldb_unblocked_pending_signals_refused(tmp_path: Path) -> None:
    """LLDB cannot step through a handler: the restore refuses in one line naming both."""
    image = _with_unblocked_signals(compile_program("sig_unblocked", tmp_path), tmp_path)
    refused = lldb_batch(f"img-restore {image}", "continue")
    errors = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "SIGUSR2 pending for thread" in errors[0] \
        and "SIGUSR1 pending for the process but not blocked" in errors[0], refused.stderr


@needs_lldb
def test_lldb_dump_disturbed_by_a_signal_says_so(tmp_path: Path) -> None:
    """A 1 ms ITIMER_REAL, SIGALRM not blocked: LLDB stops a step for the signal, and the
    dump stops there, saying so, rather than record a wrong state."""
    binary = compile_program("timer_fast", tmp_path)
    dumped = lldb_batch(LLDB_SIGNALS, "breakpoint set -n checkpoint", "run",
                        f"img-dump {tmp_path / 'lldb.img'}", "kill", program=binary)
    assert "a signal arrived during the injected step" in dumped.stderr, dumped.stderr
