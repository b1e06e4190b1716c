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

from binfmt_img.formats import image_file
from binfmt_img.live.procfs import ProcMem, read_maps
from binfmt_img.live.rseq import AT_BASE, rseq_area

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


def memory_digest(pid: int, rseq: tuple[int, int]) -> dict[str, str]:
    """A digest of every readable mapping but the kernel's special ones, by address range;
    the rseq area, where the kernel writes the current CPU, is left out."""
    mem = ProcMem(pid, writable=False)
    try:
        out = {}
        for m in read_maps(pid):
            if m.perms[0] != "r" or m.special in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            data = bytearray(mem.read(m.start, m.end - m.start))
            if m.start <= rseq[0] < m.end:
                at = rseq[0] - m.start
                data[at:at + rseq[1]] = bytes(rseq[1])
            out[f"{m.start:#x}-{m.end:#x} {m.perms} {m.path}"] = hashlib.sha256(
                data).hexdigest()
        return out
    finally:
        mem.close()


def image_rseq(image_path: Path) -> tuple[int, int]:
    image = image_file.load(str(image_path))
    base = dict(image.auxv)[AT_BASE]
    ld = next(v.path for v in image.vmas if v.start == base)

    def read(addr: int, size: int) -> bytes:
        data = image.read(addr, size)
        assert data is not None
        return data
    area = rseq_area(read, image.auxv, ld, image.registers["fs_base"])
    assert area is not None
    return area


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
        rseq = image_rseq(image)
        by_debugger = memory_digest(pid, rseq)
        gdb.console(f"img-restore {image} --via fast")
        by_fast = memory_digest(pid, rseq)
        assert by_debugger == by_fast
        assert len(by_fast) > 10
        # GDB reads the restored bytes, not what it cached before the second restore.
        gdb.console("up")
        assert "checksum" not in gdb.console("x/s $rip")  # a read that works at all
        assert gdb.until_stopped("continue")["reason"] == "exited-normally"
    finally:
        gdb.close()
    assert before + out.read_text() == expected
