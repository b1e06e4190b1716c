"""LLDB's cost per stop: no memory region query (a read of /proc/PID/smaps in lldb-server,
0.15 s with 30,000 VMAs) at the stops of the injected code (binfmt_img/live/codename.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from lldb_helpers import lldb_batch, lldb_missing

from binfmt_img.live import codename

ROOT = Path(__file__).resolve().parent.parent
needs_lldb = pytest.mark.skipif(lldb_missing() is not None, reason=lldb_missing() or "")
STOPS = "script import binfmt_img.live.target as t; print('STOPS', t.TOTAL['stops'])"
QUERY = "send packet: $qMemoryRegionInfo"


@pytest.mark.skipif(shutil.which("readelf") is None, reason="no readelf")
def test_the_code_name_is_an_elf_file_with_one_function(tmp_path: Path) -> None:
    header, code = 0x10000400, 0x10000000
    data = codename.image(header, code, 0x400)
    assert len(data) <= codename.NAME_SIZE
    path = tmp_path / "name.elf"
    path.write_bytes(data)
    symbols = subprocess.run(["readelf", "-Ws", str(path)], capture_output=True, text=True,
                             check=True).stdout
    line = next(line for line in symbols.splitlines() if codename.SYMBOL in line)
    assert line.split()[1:5] == ["0000000010000000", "1024", "FUNC", "GLOBAL"], line
    sections = subprocess.run(["readelf", "-WS", str(path)], capture_output=True, text=True,
                              check=True).stdout
    assert ".text" in sections and "0000000010000000" in sections, sections


def _queries(log: Path) -> int:
    return log.read_text(errors="replace").count(QUERY)


@needs_lldb
def test_restore_and_dump_stops_ask_no_memory_regions(tmp_path: Path) -> None:
    """A restore takes about 15 stops and a dump 3; each stop in the injected code used to
    cost a region query (43 in a restore, 39 in a dump when it took 39 stops). What is left
    is LLDB's own at the launch and at the program's stops."""
    binary = tmp_path / "manyvmas"
    subprocess.run(["gcc", "-O0", "-g", "-pthread", "-I", str(ROOT / "tests" / "programs"),
                    "-o", str(binary), str(ROOT / "tests" / "programs" / "manyvmas.c")],
                   check=True)
    image, out = tmp_path / "m.img", tmp_path / "m.out"
    dump_log, restore_log = tmp_path / "dump.log", tmp_path / "restore.log"
    dumped = lldb_batch("breakpoint set -n checkpoint", "process launch -- 300 1",
                        f"log enable -f {dump_log} gdb-remote packets", f"img-dump {image}",
                        "log disable gdb-remote packets", STOPS, "process kill",
                        program=binary, timeout=300)
    assert image.exists(), dumped.stdout + dumped.stderr
    restored = lldb_batch(f"target create {binary}", f"settings set target.output-path {out}",
                          f"log enable -f {restore_log} gdb-remote packets",
                          f"img-restore {image}", "log disable gdb-remote packets", STOPS,
                          "continue", timeout=300)
    assert out.read_text() == "manyvmas 300 1: ok\n", restored.stdout + restored.stderr
    stops = [int(line.split()[1]) for text in (dumped.stdout, restored.stdout)
             for line in text.splitlines() if line.startswith("STOPS")]
    assert stops[0] >= 3 and stops[1] > 10, stops
    assert _queries(dump_log) <= 6, _queries(dump_log)
    assert _queries(restore_log) <= 8, _queries(restore_log)
