"""Both page paths of img-restore, through the debugger and through /proc/PID/mem, leave the
very same memory; and the debugger is not fooled by stale caches afterwards."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb
from test_gdb_restore import dump_at_checkpoint

from binfmt_img.procfs import ProcMem, read_maps

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


def memory_digest(pid: int) -> dict[str, str]:
    """A digest of every readable mapping but the kernel's special ones, by address range."""
    mem = ProcMem(pid, writable=False)
    try:
        out = {}
        for m in read_maps(pid):
            if m.perms[0] != "r" or m.special in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            out[f"{m.start:#x}-{m.end:#x} {m.perms} {m.path}"] = hashlib.sha256(
                mem.read(m.start, m.end - m.start)).hexdigest()
        return out
    finally:
        mem.close()


def test_debugger_and_fast_paths_give_identical_memory(tmp_path: Path) -> None:
    binary = compile_program("bigmem", tmp_path)
    expected = run_uninterrupted(binary, "8")
    image = tmp_path / "big.img"
    before = dump_at_checkpoint(binary, image, "8")
    out = tmp_path / "out"
    gdb = Gdb(str(binary))
    try:
        gdb.console(f"set args 8 > {out}")
        gdb.console(f"img-restore {image} --via debugger")
        pid = int(gdb.console("python print(gdb.selected_inferior().pid)").split()[-1])
        by_debugger = memory_digest(pid)
        gdb.console(f"img-restore {image} --via fast")
        by_fast = memory_digest(pid)
        assert by_debugger == by_fast
        assert len(by_fast) > 10
        # GDB reads the restored bytes, not what it cached before the second restore.
        gdb.console("up")
        assert "checksum" not in gdb.console("x/s $rip")  # a read that works at all
        assert gdb.until_stopped("continue")["reason"] == "exited-normally"
    finally:
        gdb.close()
    assert before + out.read_text() == expected
