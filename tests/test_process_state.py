"""Process state kept by the kernel per process and per thread (binfmt_img/state: rlimits,
prctl, personality, sched, thread names, children), each checked by a program of its own
after a restore in GDB and in LLDB, and the refusals and warnings where it cannot come back."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cprogs import compile_program
from gdbmi import Gdb, GdbError
from lldb_helpers import LLDB, ROOT, lldb_missing, read
from selfcheck import GDB_SIGNALS, LLDB_SIGNALS, gdb_round_trip, lldb_round_trip, passes
from test_gdb_restore import dump_at_checkpoint

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")


def _has_cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    return bool(int(re.search(r"CapEff:\s*(\w+)", status).group(1), 16) >> 24 & 1)


needs_no_cap_sys_resource = pytest.mark.skipif(
    _has_cap_sys_resource(), reason="with CAP_SYS_RESOURCE a hard limit can be raised back")
LOW_NOFILE = "python import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({}, {}))"


# ---- round trips: every value read back by the program itself ----

@needs_gdb
@pytest.mark.parametrize("name, expected", [("proc_rlimit", 17), ("proc_personality", 2),
                                            ("proc_prctl", 11), ("proc_sched", 8)])
def test_state_gdb(tmp_path: Path, name: str, expected: int) -> None:
    gdb_round_trip(tmp_path, name, expected=expected, flags=("-pthread",))


@needs_lldb
@pytest.mark.parametrize("name, expected", [("proc_rlimit", 17), ("proc_personality", 2),
                                            ("proc_prctl", 11), ("proc_sched", 8)])
def test_state_lldb(tmp_path: Path, name: str, expected: int) -> None:
    lldb_round_trip(tmp_path, name, expected=expected, flags=("-pthread",))


# ---- a hard limit that cannot be raised back: a warning, the soft limit as close as allowed --

def _restore_in_gdb(image: Path, out: Path, *setup: str, options: str = "") -> str:
    """img-restore in a fresh GDB after the setup commands, then continue to the end;
    returns img-restore's console output."""
    gdb = Gdb()
    try:
        for command in (GDB_SIGNALS, *setup, f"set args > {out}"):
            gdb.console(command)
        said = gdb.console(f"img-restore {image} {options}".strip())
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", (stop, read(out))
    finally:
        gdb.close()
    return said


@needs_gdb
@needs_no_cap_sys_resource
def test_hard_limit_not_raised_gdb(tmp_path: Path) -> None:
    binary = compile_program("proc_rlimit_high", tmp_path)
    image, out = tmp_path / "high.img", tmp_path / "high.part2"
    before = dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    said = _restore_in_gdb(image, out, LOW_NOFILE.format(256, 512))
    assert re.search(r"warning: RLIMIT_NOFILE: the hard limit \d+ cannot be raised back from "
                     r"512 without CAP_SYS_RESOURCE: kept at 512, soft limit 512", said), said
    passes(before + out.read_text(), 2)


def _lldb_limited(nofile: int, *commands: str) -> subprocess.CompletedProcess[str]:
    """lldb-19 in batch mode under a hard RLIMIT_NOFILE of `nofile` (its inferior's too)."""
    assert LLDB is not None
    argv = ["prlimit", f"--nofile={nofile}:{nofile}", LLDB, "--no-lldbinit", "--batch",
            "-o", f"command script import {ROOT / 'lldb_img'}"]
    for command in commands:
        argv += ["-o", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@needs_lldb
@needs_no_cap_sys_resource
def test_hard_limit_not_raised_lldb(tmp_path: Path) -> None:
    binary = compile_program("proc_rlimit_high", tmp_path)
    image, out = tmp_path / "high.img", tmp_path / "high.part2"
    before = dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    done = _lldb_limited(512, f"settings set target.output-path {out}",
                         f"img-restore {image}", LLDB_SIGNALS, "continue")
    said = done.stdout + done.stderr
    assert "RLIMIT_NOFILE: the hard limit" in said and "kept at 512" in said, said
    assert "exited with status = 0" in done.stdout, said
    passes(before + out.read_text(), 2)


@needs_gdb
@needs_no_cap_sys_resource
def test_fd_above_hard_limit_refused(tmp_path: Path) -> None:
    """The image has fd 150 open; a hard RLIMIT_NOFILE of 120 cannot hold it: refused."""
    binary = compile_program("proc_rlimit", tmp_path)
    image = tmp_path / "rlimit.img"
    dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    gdb = Gdb()
    try:
        gdb.console(LOW_NOFILE.format(120, 120))
        with pytest.raises(GdbError, match=r"the image has fd 150 open, and the open files "
                                           r"limit here is 120"):
            gdb.console(f"img-restore {image}")
    finally:
        gdb.close()


# ---- children: named at the dump, refused at the restore, accepted with --accept-loss ----

def _dump_children(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Dump proc_children at its checkpoint; returns binary, image, what the program printed
    and img-dump's console output."""
    binary = compile_program("proc_children", tmp_path)
    image, part1 = tmp_path / "children.img", tmp_path / "children.part1"
    gdb = Gdb(str(binary))
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run > {part1}").get("reason") == "breakpoint-hit"
        said = gdb.console(f"img-dump {image}")
        gdb.console("kill")
    finally:
        gdb.close()
    return binary, image, part1.read_text(), said


def _child_pid(printed: str) -> int:
    return int(re.search(r"child (\d+)", printed).group(1))


@needs_gdb
def test_children_refused_gdb(tmp_path: Path) -> None:
    binary, image, printed, said = _dump_children(tmp_path)
    child = _child_pid(printed)
    assert f"children are not in the image: pid {child} (napper)" in said, said
    gdb = Gdb(str(binary))  # a live process at main: the refusal must leave it untouched
    try:
        gdb.console("break main")
        assert gdb.until_stopped("run").get("reason") == "breakpoint-hit"
        pid = int(gdb.console("python print(gdb.selected_inferior().pid)"))
        pc = "python print(hex(gdb.selected_frame().pc()))"
        maps, rip = Path(f"/proc/{pid}/maps").read_text(), gdb.console(pc)
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {image}")
        message = str(refused.value)
        assert f"would not bring back: child process {child} (napper)" in message, message
        assert "--accept-loss" in message and message.count("\n") == 0, message
        assert Path(f"/proc/{pid}/maps").read_text() == maps
        assert gdb.console(pc) == rip
    finally:
        gdb.close()


@needs_gdb
def test_children_accepted_gdb(tmp_path: Path) -> None:
    _, image, printed, _ = _dump_children(tmp_path)
    out = tmp_path / "children.part2"
    said = _restore_in_gdb(image, out, options="--accept-loss")
    assert f"warning: not restored: child process {_child_pid(printed)} (napper)" in said, said
    passes(printed + out.read_text(), 1)


@needs_lldb
def test_children_lldb(tmp_path: Path) -> None:
    _, image, printed, _ = _dump_children(tmp_path)
    child = _child_pid(printed)
    refused = subprocess.run(
        [LLDB, "--no-lldbinit", "--batch", "-o", f"command script import {ROOT / 'lldb_img'}",
         "-o", f"img-restore {image}"], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL)
    said = refused.stdout + refused.stderr
    assert f"would not bring back: child process {child} (napper)" in said, said
    text = lldb_round_trip(tmp_path, "proc_children", restore_options="--accept-loss")
    assert "PASS waitpid" in text


# ---- a seccomp filter: refused, or with --accept-loss gone ----

@needs_gdb
def test_seccomp_refused_gdb(tmp_path: Path) -> None:
    binary = compile_program("proc_seccomp", tmp_path)
    image = tmp_path / "seccomp.img"
    dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    gdb = Gdb()
    try:
        with pytest.raises(GdbError, match=r"would not bring back: the seccomp filter mode of "
                                           r"the process, 1 filter \(a filter cannot"):
            gdb.console(f"img-restore {image}")
    finally:
        gdb.close()
    out = tmp_path / "seccomp.part2"
    said = _restore_in_gdb(image, out, options="--accept-loss")
    assert "warning: not restored: the seccomp filter mode" in said, said
    passes(out.read_text(), 1)


@needs_lldb
def test_seccomp_accepted_lldb(tmp_path: Path) -> None:
    lldb_round_trip(tmp_path, "proc_seccomp", restore_options="--accept-loss")


@needs_gdb
def test_no_new_privs_cannot_be_cleared_gdb(tmp_path: Path) -> None:
    """GDB with no_new_privs set starts the process to restore into with it: an image without
    it is restored with a warning (the flag cannot be cleared)."""
    binary = compile_program("proc_personality", tmp_path)
    image, out = tmp_path / "nnp.img", tmp_path / "nnp.part2"
    before = dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    said = _restore_in_gdb(image, out, "python import ctypes; ctypes.CDLL(None).prctl(38, 1, 0, "
                           "0, 0)")
    assert "warning: no_new_privs: set in the process restored into" in said, said
    passes(before + out.read_text(), 2)
