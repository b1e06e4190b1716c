"""Process state beyond memory and registers (binfmt_img/state/), each kind checked by a
program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from lldb_helpers import lldb_missing
from selfcheck import gdb_round_trip, lldb_round_trip

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")


@needs_gdb
def test_umask_gdb(tmp_path: Path) -> None:
    gdb_round_trip(tmp_path, "state_umask")


@needs_lldb
def test_umask_lldb(tmp_path: Path) -> None:
    lldb_round_trip(tmp_path, "state_umask")


@needs_gdb
@pytest.mark.skipif(not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK),
                    reason="choosing the next pid needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE")
def test_restored_process_keeps_its_pid_gdb(tmp_path: Path) -> None:
    gdb_round_trip(tmp_path, "state_pid")
