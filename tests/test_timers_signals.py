"""Interval timers, POSIX timers, pending signals and rseq registrations
(binfmt_img/state/{itimers,posix_timers,pending_signals,rseq_state}.py): each checked by a
program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cprogs import compile_program
from lldb_helpers import lldb_batch, lldb_missing, read
from selfcheck import LLDB_SIGNALS, gdb_round_trip, lldb_round_trip

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")

PROGRAMS = {"timer_alarm": 3, "timer_itimer": 4, "sig_pending": 7, "timer_posix": 6,
            "rseq_none": 1, "rseq_own": 5}
# LLDB cannot read a registration that is not glibc's area (no ptrace from its Python):
# tested below as a refusal.
LLDB_PROGRAMS = {name: n for name, n in PROGRAMS.items() if name != "rseq_own"}


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
    assert "an rseq area this debugger cannot read" in dumped.stdout, dumped.stdout
    refused = lldb_batch(f"img-restore {image}", "continue")
    errors = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "rseq registration of thread" in errors[0], refused.stderr
    assert "--accept-loss" in errors[0]
    out = tmp_path / "part2"
    accepted = lldb_batch(f"settings set target.output-path {out}",
                          f"img-restore {image} --accept-loss", LLDB_SIGNALS, "continue")
    assert "warning: not restored: the rseq registration of thread" in accepted.stdout, \
        accepted.stdout + accepted.stderr
    assert "exited with status = 0" in accepted.stdout
    assert "PASS the other thread has glibc's area" in read(out)
