"""Whole processes in real GDB: every thread and the open files come back. Each program is
dumped at checkpoint(), restored in a fresh GDB, and its output (and log) must complete the
uninterrupted run's exactly."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb, GdbError
from test_gdb_restore import dump_at_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


def restored(image: Path, out: Path) -> Gdb:
    """A fresh GDB with the image restored into a new process whose stdout is `out`."""
    gdb = Gdb()
    gdb.console(f"set args > {out}")
    gdb.console(f"img-restore {image}")
    return gdb


def finish(gdb: Gdb) -> None:
    stop = gdb.until_stopped("continue")
    assert stop.get("reason") == "exited-normally", stop


def thread_lines(gdb: Gdb) -> list[str]:
    return [line for line in gdb.console("info threads").splitlines()
            if re.search(r"Thread 0x[0-9a-f]+ \(LWP \d+\)", line)]


def test_workers_blocked_on_a_condition_variable(tmp_path: Path) -> None:
    """Three workers wait in pthread_cond_wait at the checkpoint; after the restore they are
    released, pthread_kill finds them by their new tids, and pthread_join collects them."""
    binary = compile_program("threads_cond", tmp_path, "-pthread")
    expected = run_uninterrupted(binary)
    image = tmp_path / "threads_cond.img"
    before = dump_at_checkpoint(binary, image)
    gdb = restored(image, tmp_path / "part2")
    try:
        threads = thread_lines(gdb)
        assert len(threads) == 4, threads
        assert threads[0].startswith("*") and "checkpoint ()" in threads[0], threads
        assert all("futex" in line for line in threads[1:]), threads
        stacks = gdb.console("thread apply all bt")
        for arg in range(3):
            assert f"worker (arg=0x{arg})" in stacks, stacks
        assert "main ()" in stacks, stacks
        finish(gdb)
    finally:
        gdb.close()
    assert before + (tmp_path / "part2").read_text() == expected


def test_worker_mid_computation_with_its_thread_locals(tmp_path: Path) -> None:
    """A worker is inside a long loop on its own __thread data (and FPU state) when GDB
    stops every thread at main's checkpoint; after the restore it carries on from there."""
    binary = compile_program("threads_compute", tmp_path, "-pthread")
    expected = run_uninterrupted(binary)
    image = tmp_path / "threads_compute.img"
    before = dump_at_checkpoint(binary, image)
    gdb = restored(image, tmp_path / "part2")
    try:
        threads = thread_lines(gdb)
        assert len(threads) == 2 and "compute (rounds=40000000)" in threads[1], threads
        gdb.console("thread 2")
        assert "worker (arg=0x0)" in gdb.console("bt")
        done = int(gdb.console("print progress").split("=")[1])
        assert 0 < done < 40000000 - 1  # really in the middle
        gdb.console("thread 1")
        # Restoring again over the live two-thread process replaces it with a fresh one.
        assert "starting" in gdb.console(f"img-restore {image}")
        assert len(thread_lines(gdb)) == 2
        gdb.console("thread 2")
        assert int(gdb.console("print progress").split("=")[1]) == done
        gdb.console("thread 1")
        finish(gdb)
    finally:
        gdb.close()
    assert before + (tmp_path / "part2").read_text() == expected


def test_file_half_read_directory_and_working_directory(tmp_path: Path) -> None:
    """The rest of a half-read file is read after the restore, from the same fd and offset;
    /dev/null, a directory stream, the working directory and the pipe's two ends come back.
    Before that, a restore is refused, with nothing changed, while the file differs from the
    dump's."""
    binary = compile_program("file_read", tmp_path)
    data, folder = tmp_path / "data.txt", tmp_path / "folder"
    data.write_text("".join(f"line {i}\n" for i in range(1000)))
    folder.mkdir()
    (folder / "marker.txt").write_text("hello from the marker\n")
    args = (str(data), str(folder))
    expected = run_uninterrupted(binary, *args)
    image = tmp_path / "file_read.img"
    before = dump_at_checkpoint(binary, image, *args)
    stamp = data.stat()
    data.write_text(data.read_text() + "one more line\n")
    gdb = Gdb()
    try:
        gdb.console(f"file {binary}")
        gdb.console(f"set args > {tmp_path / 'part2'}")
        gdb.until_stopped("starti")
        with pytest.raises(GdbError, match=r"fd 3: .*data.txt changed since the dump: size"):
            gdb.console(f"img-restore {image}")
        assert "_start" in gdb.console("bt")  # refused before the first change
        data.write_text(data.read_text().removesuffix("one more line\n"))
        os.utime(data, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        gdb.console(f"img-restore {image}")
        # The MI result comes before the command's last lines: ask for the warnings instead.
        text = gdb.console("python import gdb_img.commands as c; "
                           "print(*c.last_restore.warnings, sep=chr(10))")
        assert "not restored" not in text, text
        pid = int(re.search(r"process (\d+)", gdb.console("info proc")).group(1))
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(
            f"/proc/{pid}/fd")}
        assert fds[3] == str(data) and fds[4] == "/dev/null" and fds[7] == str(folder), fds
        assert fds[5] == fds[6] and fds[5].startswith("pipe:["), fds  # the pair, made again
        assert os.readlink(f"/proc/{pid}/cwd") == str(folder)
        finish(gdb)
    finally:
        gdb.close()
    assert before + (tmp_path / "part2").read_text() == expected


def test_log_appended_before_and_after(tmp_path: Path) -> None:
    """Lines appended before the checkpoint, lines buffered in stdio at it, and lines written
    after it: the log is the uninterrupted run's."""
    binary = compile_program("file_append", tmp_path)
    reference = tmp_path / "reference.log"
    expected = run_uninterrupted(binary, str(reference))
    log = tmp_path / "app.log"
    image = tmp_path / "file_append.img"
    before = dump_at_checkpoint(binary, image, str(log))
    assert 0 < len(log.read_text()) < len(reference.read_text())
    gdb = restored(image, tmp_path / "part2")
    try:
        finish(gdb)
    finally:
        gdb.close()
    assert before + (tmp_path / "part2").read_text() == expected
    assert log.read_text() == reference.read_text()


def test_gcore_of_a_threaded_process(tmp_path: Path) -> None:
    """A core records no tid addresses: the restore finds them in the core's memory, so the
    workers' cached ids are patched and pthread_kill and pthread_join work."""
    binary = compile_program("threads_cond", tmp_path, "-pthread")
    expected = run_uninterrupted(binary)
    core, part1 = tmp_path / "threads_cond.core", tmp_path / "part1"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        gdb.until_stopped(f"run > {part1}")
        gdb.console(f"gcore {core}")
        gdb.console("kill")
    finally:
        gdb.close()
    gdb = restored(core, tmp_path / "part2")
    try:
        assert len(thread_lines(gdb)) == 4
        finish(gdb)
    finally:
        gdb.close()
    assert part1.read_text() + (tmp_path / "part2").read_text() == expected
