"""Process trees (issue 15): img-dump --tree and the restore of a tree in GDB, one inferior
per process; LLDB refuses a tree, naming why."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb, GdbError
from lldb_helpers import lldb_batch
from selfcheck import GDB_SIGNALS, passes


def dump_tree(program: Path, image: Path, *args: str, breakpoint: str = "checkpoint",
              before: tuple[str, ...] = ()) -> tuple[str, str]:
    """Run under GDB to `breakpoint`, img-dump --tree, kill; (program output, dump output)."""
    part1 = program.parent / f"{program.name}.part1"
    gdb = Gdb(str(program))
    try:
        gdb.console(GDB_SIGNALS)
        for command in before:
            gdb.console(command)
        gdb.console(f"break {breakpoint}")
        stop = gdb.until_stopped(f"run {' '.join(args)} > {part1}")
        assert stop.get("reason") == "breakpoint-hit", stop
        said = gdb.console(f"img-dump {image} --tree")
        gdb.console("kill")
    finally:
        gdb.close()
    return part1.read_text(), said


def _alive(gdb: Gdb, number: int) -> bool:
    text = gdb.console("info inferiors")
    return any(re.match(rf"\*?\s*{number}\s+process \d+", line.strip())
               for line in text.splitlines())


def restore_tree(image: Path, out: Path, *, options: str = "",
                 checks: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """In a fresh GDB: img-restore the tree, run the checks (GDB commands) at the
    checkpoint, then continue until the root process (inferior 1) has exited. Returns what
    the restore said and the checks' outputs."""
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"set args > {out}")
        said = gdb.console(f"img-restore {image} {options}".strip())
        answers = [gdb.console(command) for command in checks]
        for _ in range(12):  # each exit of a process stops all of them: continue again
            if not _alive(gdb, 1):
                break
            for command in ("inferior 1", "continue"):
                try:  # the root's exit may be pending in GDB: the next continue collects it
                    if command == "continue":
                        gdb.until_stopped(command)
                    else:
                        gdb.console(command)
                except GdbError:
                    pass
        assert not _alive(gdb, 1), gdb.console("info inferiors")
    finally:
        gdb.close()
    return said, answers


def _skip_if_pid_taken(said: str) -> None:
    """On this shared machine another process may take a child's pid first (the restore
    warns): the program's own record of that pid is then stale, as the restore said."""
    taken = re.search(r"process (\d+) is process \d+ now \(clone3 set_tid: EEXIST", said)
    if taken:
        pytest.skip(f"pid {taken.group(1)} was taken by another process meanwhile")


def test_workers_with_pipes_in_flight(tmp_path: Path) -> None:
    """A parent and two workers in a ring of pipes, numbers in flight at the checkpoint:
    the restored tree prints exactly what an uninterrupted run does."""
    program = compile_program("tree_pipes", tmp_path)
    expected = run_uninterrupted(program)
    image = tmp_path / "tree.img"
    before, dumped = dump_tree(program, image)
    assert "img-dump:" in dumped, dumped
    out = tmp_path / "after"
    said, (inferiors,) = restore_tree(image, out, checks=("info inferiors",))
    assert "process tree of 3" in said, said
    assert len(re.findall(r"process \d+", inferiors)) == 3, inferiors
    _skip_if_pid_taken(said)
    assert before + out.read_text() == expected, said
    passes(expected, 2)


def _privileged() -> bool:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "r+"):
            return True
    except OSError:
        return False


def dump_tree_while_running(program: Path, image: Path, mark: str) -> str:
    """Run under GDB, interrupt it once it printed `mark` (the parent blocked in waitpid
    soon after), dump the tree."""
    part1 = program.parent / f"{program.name}.part1"
    gdb = Gdb(str(program))
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"run > {part1} &")
        deadline = time.monotonic() + 20
        while mark not in (part1.read_text() if part1.exists() else ""):
            assert time.monotonic() < deadline, "the program never got to the checkpoint"
            time.sleep(0.05)
        time.sleep(0.2)
        stop = gdb.interrupt()
        assert stop.get("reason") == "signal-received", stop
        gdb.console(f"img-dump {image} --tree")
        gdb.console("kill")
    finally:
        gdb.close()
    return part1.read_text()


def test_waitpid_zombie_and_shared_counter(tmp_path: Path) -> None:
    """A parent in waitpid at the checkpoint gets the status of a child that exits after the
    restore; a zombie child is reaped after it with its status; a counter in shared
    anonymous memory sees both processes' increments across the checkpoint."""
    program = compile_program("tree_wait", tmp_path)
    image = tmp_path / "wait.img"
    before = dump_tree_while_running(program, image, "waiting")
    assert before == "waiting\n", before
    out = tmp_path / "after"
    said, _ = restore_tree(image, out)
    assert re.search(r"process tree of 3: .*a zombie", said), said
    text = before + out.read_text()
    _skip_if_pid_taken(said)
    passes(text + said, 3)
    if not _privileged():
        pytest.skip("the children's own pids need CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE "
                    "(clone3 set_tid); the rest passed")
    assert "child pid kept" in text, text
    assert not re.search(r"\(was \d+\) (inferior [2-9]|a zombie)", said), said
