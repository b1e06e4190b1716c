"""End to end in real GDB: dump a C program at checkpoint(), restore it in a fresh GDB, and
check that the resumed output completes the uninterrupted run's output exactly."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


def dump_at_checkpoint(binary: Path, image: Path, *args: str, fmt: str = "v1",
                       aslr: bool = False, setup: tuple[str, ...] = ()) -> str:
    """Run under GDB to checkpoint(), dump, kill; returns what the program printed so far."""
    part1 = binary.parent / f"{binary.name}.part1"
    gdb = Gdb(str(binary))
    try:
        if aslr:
            gdb.console("set disable-randomization off")
        for command in setup:
            gdb.console(command)
        gdb.console("break checkpoint")
        stop = gdb.until_stopped(f"run {' '.join(args)} > {part1}")
        assert stop.get("reason") == "breakpoint-hit", stop
        gdb.console(f"img-dump {image} --format {fmt}")
        gdb.console("kill")
    finally:
        gdb.close()
    return part1.read_text()


def restore_and_finish(image: Path, out: Path, *, program: Path | None = None,
                       stdin: Path | None = None, setup: tuple[str, ...] = ()) -> str:
    """In a fresh GDB: img-restore, continue to the end; returns what the program printed."""
    gdb = Gdb(*([str(program)] if program else []))
    try:
        for command in setup:
            gdb.console(command)
        redirect = f"> {out}" + (f" < {stdin}" if stdin else "")
        gdb.console(f"set args {redirect}")
        gdb.console(f"img-restore {image}")
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()
    return out.read_text()


def check_round_trip(tmp_path: Path, name: str, *args: str, fmt: str = "v1",
                     setup: tuple[str, ...] = ()) -> str:
    binary = compile_program(name, tmp_path)
    expected = run_uninterrupted(binary, *args)
    image = tmp_path / f"{name}.img"
    before = dump_at_checkpoint(binary, image, *args, fmt=fmt, setup=setup)
    after = restore_and_finish(image, tmp_path / f"{name}.part2", setup=setup)
    assert before + after == expected
    return after


def test_heap_and_brk_grow_after_restore(tmp_path: Path) -> None:
    after = check_round_trip(tmp_path, "heap")
    assert "round 7" in after


def test_deep_recursion(tmp_path: Path) -> None:
    check_round_trip(tmp_path, "recursion")


def test_thread_local_variables(tmp_path: Path) -> None:
    check_round_trip(tmp_path, "tls")


def test_x87_sse_avx_values_live_across_checkpoint(tmp_path: Path) -> None:
    after = check_round_trip(tmp_path, "fpu")
    assert "after: rounding upward=1" in after


def test_vdso_clock_gettime_after_restore(tmp_path: Path) -> None:
    check_round_trip(tmp_path, "vdso")


def test_private_file_mapping(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"".join(f"file page {i}".encode().ljust(4096, b".") for i in range(3)))
    after = check_round_trip(tmp_path, "filemap", str(data))
    assert "page1: changed in memory" in after


def test_signal_handler_blocked_signal_and_alternate_stack(tmp_path: Path) -> None:
    after = check_round_trip(tmp_path, "signals",
                             setup=("handle SIGUSR1 nostop noprint pass",
                                    "handle SIGUSR2 nostop noprint pass"))
    assert "usr2 ran on the alternate stack=1" in after


def test_unflushed_stdio_buffer(tmp_path: Path) -> None:
    after = check_round_trip(tmp_path, "stdio_buffer")
    assert after.startswith("buffered line 0")


def test_seed_layout_v0_image(tmp_path: Path) -> None:
    check_round_trip(tmp_path, "tls", fmt="v0")


def interrupted_dump(tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    """Dump a program while it is blocked in a system call, stopped by an interrupt."""
    binary = compile_program(name, tmp_path)
    fifo = tmp_path / "stdin.fifo"
    os.mkfifo(fifo)
    keep_open = os.open(fifo, os.O_RDWR)  # a writer that never writes: read() blocks
    part1 = tmp_path / f"{name}.part1"
    image = tmp_path / f"{name}.img"
    gdb = Gdb(str(binary))
    try:
        gdb.console(f"run < {fifo} > {part1} &")
        deadline = time.monotonic() + 10
        while not part1.exists() or not part1.read_text():
            assert time.monotonic() < deadline, "the program did not start"
            time.sleep(0.05)
        time.sleep(0.3)
        gdb.interrupt()
        gdb.console(f"img-dump {image}")
        gdb.console("kill")
    finally:
        gdb.close()
        os.close(keep_open)
    return binary, image, part1.read_text()


def test_checkpoint_inside_blocking_read(tmp_path: Path) -> None:
    binary, image, before = interrupted_dump(tmp_path, "blocking_read")
    given = tmp_path / "input.txt"
    given.write_text("hello after restore\n")
    expected = run_uninterrupted(binary, stdin=given)
    after = restore_and_finish(image, tmp_path / "part2", stdin=given)
    assert before + after == expected


def test_checkpoint_inside_nanosleep(tmp_path: Path) -> None:
    binary, image, before = interrupted_dump(tmp_path, "nanosleep")
    expected = run_uninterrupted(binary)
    after = restore_and_finish(image, tmp_path / "part2")
    assert before + after == expected
