"""Descriptors beyond regular files (binfmt_img/fdkinds/) and the standard streams, each
checked by a program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lldb_helpers import lldb_missing
from selfcheck import gdb_round_trip, lldb_round_trip

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
