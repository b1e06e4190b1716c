"""Descriptors beyond regular files (binfmt_img/fdkinds/) and the standard streams, each
checked by a program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from cprogs import compile_program
from gdbmi import Gdb, GdbError
from lldb_helpers import lldb_missing
from selfcheck import GDB_SIGNALS, gdb_round_trip, lldb_round_trip
from test_gdb_restore import dump_at_checkpoint

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")
ROUND_TRIPS = [("fd_pipe", 6), ("fd_epoll", 5)]


@needs_gdb
@pytest.mark.parametrize(("name", "expected"), ROUND_TRIPS)
def test_gdb(tmp_path: Path, name: str, expected: int) -> None:
    gdb_round_trip(tmp_path, name, expected=expected)


@needs_lldb
@pytest.mark.parametrize(("name", "expected"), ROUND_TRIPS)
def test_lldb(tmp_path: Path, name: str, expected: int) -> None:
    lldb_round_trip(tmp_path, name, expected=expected)


def _lost_line(text: str) -> None:
    assert re.search(r"fd 3 \(pipe:\[\d+\], a pipe whose write end is in process \d+ "
                     r"\(fd_lost\); if accepted, reads give end of file\)", text), text


@needs_gdb
def test_lost_pipe_refused_then_accepted_gdb(tmp_path: Path) -> None:
    """A pipe to a child process: refused with one line naming it, nothing changed; with
    --accept-loss the fd reads end of file and the warning names it."""
    binary = compile_program("fd_lost", tmp_path)
    image = tmp_path / "fd_lost.img"
    dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    gdb = Gdb()
    try:
        gdb.console(f"file {binary}")
        gdb.until_stopped("starti")
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {image}")
        message = str(refused.value)
        assert "the restore would not bring back: fd 3 (" in message, message
        _lost_line(message)
        assert "_start" in gdb.console("bt")  # refused before the first change
    finally:
        gdb.close()
    text = gdb_round_trip(tmp_path, "fd_lost", restore_options="--accept-loss")
    assert "PASS the lost pipe reads end of file" in text


@needs_lldb
def test_lost_pipe_accepted_lldb(tmp_path: Path) -> None:
    lldb_round_trip(tmp_path, "fd_lost", restore_options="--accept-loss")
