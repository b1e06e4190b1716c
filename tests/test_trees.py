"""Process trees (issue 15): img-dump --tree and the restore of a tree in GDB, one inferior
per process; LLDB refuses a tree, naming why."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb
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
        for _ in range(12):
            if not _alive(gdb, 1):
                break
            gdb.console("inferior 1")
            gdb.until_stopped("continue")
        assert not _alive(gdb, 1), gdb.console("info inferiors")
    finally:
        gdb.close()
    return said, answers


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
    assert before + out.read_text() == expected, said
    passes(expected, 2)
