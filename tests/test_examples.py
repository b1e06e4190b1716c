"""The examples/ scripts run as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cprogs import ROOT, compile_program
from gdbmi import Gdb
from test_postmortem import frames

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


def test_pygdbmi_restore_example(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "pygdbmi_restore.py"),
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: restored at round 5")


def test_dump_with_an_outer_frame_selected(tmp_path: Path) -> None:
    """img-dump after `up` (as the example does): the registers it puts back are the CPU's,
    not the outer frame's (whose pc is the return address on the stack)."""
    binary = compile_program("debugme", tmp_path)
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped("run > /dev/null").get("reason") == "breakpoint-hit"
        before = frames(gdb.console("bt"))
        gdb.console("up")
        gdb.console(f"img-dump {tmp_path / 'a.img'}")
        assert frames(gdb.console("bt")) == before == ["checkpoint", "inner", "main"]
    finally:
        gdb.close()
