"""Round trips of self-checking C programs (tests/programs/selfcheck.h) in real GDB and LLDB:
run to checkpoint(), img-dump, img-restore in a fresh debugger, continue to the end. The
program checks its own state after the restore and prints PASS or FAIL lines."""

from __future__ import annotations

from pathlib import Path

from cprogs import compile_program
from gdbmi import Gdb
from lldb_helpers import lldb_batch, read
from test_gdb_restore import dump_at_checkpoint

# Signals the programs use on purpose pass to them without stopping the debugger.
GDB_SIGNALS = "handle all nostop noprint pass"
LLDB_SIGNALS = ("process handle SIGUSR1 SIGUSR2 SIGALRM SIGVTALRM SIGPROF SIGCHLD SIGPIPE "
                "SIGIO SIGURG SIGWINCH SIGRTMIN SIGTERM SIGHUP SIGSEGV -s false -n false -p true")


def passes(text: str, expected: int) -> None:
    """Every check passed, and there were at least `expected` of them."""
    fails = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert not fails, text
    assert sum(line.startswith("PASS") for line in text.splitlines()) >= expected, text


def gdb_round_trip(tmp_path: Path, name: str, *, flags: tuple[str, ...] = (),
                   restore_options: str = "", expected: int = 1,
                   args: tuple[str, ...] = ()) -> str:
    """The whole output (before and after the checkpoint) of a GDB round trip."""
    binary = compile_program(name, tmp_path, *flags)
    image = tmp_path / f"{name}.img"
    before = dump_at_checkpoint(binary, image, *args, setup=(GDB_SIGNALS,))
    out = tmp_path / f"{name}.part2"
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"set args > {out}")
        gdb.console(f"img-restore {image} {restore_options}".strip())
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", (stop, read(out))
    finally:
        gdb.close()
    text = before + out.read_text()
    passes(text, expected)
    return text


def lldb_round_trip(tmp_path: Path, name: str, *, flags: tuple[str, ...] = (),
                    restore_options: str = "", expected: int = 1) -> str:
    binary = compile_program(name, tmp_path, *flags)
    image = tmp_path / f"{name}.img"
    before_out, after_out = tmp_path / "lldb.part1", tmp_path / "lldb.part2"
    dumped = lldb_batch(f"settings set target.output-path {before_out}", LLDB_SIGNALS,
                        "breakpoint set -n checkpoint", "run", f"img-dump {image}", "kill",
                        program=binary)
    assert image.exists(), dumped.stdout + dumped.stderr
    restored = lldb_batch(f"settings set target.output-path {after_out}",
                          f"img-restore {image} {restore_options}".strip(), LLDB_SIGNALS,
                          "continue")
    output = restored.stdout + restored.stderr
    assert "img-restore:" in restored.stdout and "error:" not in restored.stderr, output
    assert "exited with status = 0" in restored.stdout, output
    text = read(before_out) + read(after_out)
    passes(text, expected)
    return text
