"""Interval timers, POSIX timers, pending signals and rseq registrations
(binfmt_img/state/{itimers,posix_timers,pending_signals,rseq_state}.py): each checked by a
program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lldb_helpers import lldb_missing
from selfcheck import gdb_round_trip, lldb_round_trip

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")

PROGRAMS = {"timer_alarm": 2, "timer_itimer": 4, "sig_pending": 7, "timer_posix": 6}


@needs_gdb
@pytest.mark.parametrize("name", PROGRAMS)
def test_gdb(tmp_path: Path, name: str) -> None:
    gdb_round_trip(tmp_path, name, expected=PROGRAMS[name])


@needs_lldb
@pytest.mark.parametrize("name", PROGRAMS)
def test_lldb(tmp_path: Path, name: str) -> None:
    lldb_round_trip(tmp_path, name, expected=PROGRAMS[name])
