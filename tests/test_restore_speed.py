"""Restore speed paths that must restore exactly what the slower ones did: GDB keeps its
libthread_db through a restore into a running process whose libc the image keeps where it
is (no detach and attach), and attaches again without it where the libraries move."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb
from test_gdb_restore import dump_at_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")

ATTACHED_AGAIN = "python print('ATTACHED', len(__import__('gdb_img.target').target.STARTED_HERE))"


@pytest.mark.parametrize("aslr", [False, True], ids=["same-libraries", "moved-libraries"])
def test_restore_into_running_process_keeps_or_reloads_threads(tmp_path: Path,
                                                               aslr: bool) -> None:
    binary = compile_program("heap", tmp_path)
    expected = run_uninterrupted(binary)
    image = tmp_path / "heap.img"
    before = dump_at_checkpoint(binary, image, aslr=aslr)
    out = tmp_path / "out"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run > {out}")["reason"] == "breakpoint-hit"
        gdb.console(f"img-restore {image}")
        # Kept: GDB still holds the process it started; moved: it attached again.
        assert f"ATTACHED {int(aslr)}" in gdb.console(ATTACHED_AGAIN)
        assert "Thread 0x" in gdb.console("info threads")  # libthread_db works
        bt = gdb.console("bt")
        assert "checkpoint" in bt and "main" in bt
        assert "libc.so.6" in gdb.console("info sharedlibrary")
        gdb.console("break sbrk")
        stop = gdb.until_stopped("continue")
        assert stop["reason"] == "breakpoint-hit" and "sbrk" in stop["frame"]["func"]
        gdb.console("delete")
        assert gdb.until_stopped("continue")["reason"] == "exited-normally"
    finally:
        gdb.close()
    assert out.read_text() == before + expected[len(before):]
