"""Whole processes under lldb-19: the programs of test_threads_files.py dumped and restored in
LLDB; every thread shows its own frames after the restore, and the output (and log) complete
the uninterrupted run's exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from lldb_helpers import lldb_batch, lldb_missing, read

_MISSING = lldb_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def round_trip(tmp_path: Path, name: str, *args: str, after: tuple[str, ...] = (),
               flags: tuple[str, ...] = ()) -> str:
    """Dump NAME at checkpoint() in LLDB, restore it in a fresh LLDB, run the AFTER commands
    and continue; checks the output and returns LLDB's transcript of the restore."""
    binary = compile_program(name, tmp_path, *flags)
    expected = run_uninterrupted(binary, *args)
    image, dumped, out = tmp_path / f"{name}.img", tmp_path / "dump.out", tmp_path / "out"
    result = lldb_batch(f"settings set target.output-path {dumped}",
                        "breakpoint set -n checkpoint", f"run {' '.join(args)}",
                        f"img-dump {image}", "kill", program=binary)
    assert image.exists(), result.stdout + result.stderr
    result = lldb_batch(f"settings set target.output-path {out}", f"img-restore {image}",
                        *after, "continue")
    text = result.stdout + result.stderr
    assert "exited with status = 0" in text, text
    assert read(dumped) + read(out) == expected
    return text


def test_workers_blocked_on_a_condition_variable(tmp_path: Path) -> None:
    text = round_trip(tmp_path, "threads_cond", after=("thread list", "bt all"),
                      flags=("-pthread",))
    threads = re.findall(r"^[* ] thread #(\d+): tid = \d+, .*", text, re.M)
    assert threads == ["1", "2", "3", "4"], text
    for arg in range(3):
        assert f"threads_cond`worker(arg=0x{arg:016x})" in text, text
    assert "threads_cond`main" in text, text


def test_worker_mid_computation_with_its_thread_locals(tmp_path: Path) -> None:
    text = round_trip(tmp_path, "threads_compute", after=("thread list",),
                      flags=("-pthread",))
    assert re.search(r"thread #2: tid = \d+, .*threads_compute`compute\(rounds=40000000\)",
                     text), text


def test_file_half_read_and_working_directory(tmp_path: Path) -> None:
    data, folder = tmp_path / "data.txt", tmp_path / "folder"
    data.write_text("".join(f"line {i}\n" for i in range(1000)))
    folder.mkdir()
    (folder / "marker.txt").write_text("hello from the marker\n")
    text = round_trip(tmp_path, "file_read", str(data), str(folder))
    assert "not restored" not in text, text  # the pipe comes back (binfmt_img/fdkinds)


def test_log_appended_before_and_after(tmp_path: Path) -> None:
    reference, log = tmp_path / "reference.log", tmp_path / "app.log"
    binary = compile_program("file_append", tmp_path)
    run_uninterrupted(binary, str(reference))
    round_trip(tmp_path, "file_append", str(log))
    assert log.read_text() == reference.read_text()
