"""Memory beyond private and file mappings (issue 10, issue 11 defect 2): shared objects,
a shared file mapping's right to become writable, growsdown mappings, guard pages, madvise
state. Each is checked by a program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lldb_helpers import lldb_missing
from selfcheck import gdb_round_trip, lldb_round_trip

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")

PROGRAMS = {"mem_shared": 9, "mem_shared_file": 3, "mem_growsdown": 3, "mem_guard": 3,
            "mem_madvise": 10}


@needs_gdb
@pytest.mark.parametrize(("name", "expected"), PROGRAMS.items())
def test_memory_gdb(tmp_path: Path, name: str, expected: int) -> None:
    gdb_round_trip(tmp_path, name, expected=expected)


@needs_lldb
@pytest.mark.parametrize(("name", "expected"), PROGRAMS.items())
def test_memory_lldb(tmp_path: Path, name: str, expected: int) -> None:
    lldb_round_trip(tmp_path, name, expected=expected)
