"""Descriptors beyond regular files (binfmt_img/fdkinds/) and the standard streams, each
checked by a program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb, GdbError
from lldb_helpers import lldb_batch, lldb_missing
from selfcheck import GDB_SIGNALS, gdb_round_trip, lldb_round_trip
from test_gdb_restore import dump_at_checkpoint

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")
# Each program and how many checks it makes after the restore.
ROUND_TRIPS = [("fd_pipe", 6), ("fd_epoll", 5), ("fd_memfd", 5), ("fd_socketpair", 7),
               ("fd_inotify", 3)]


@needs_gdb
@pytest.mark.parametrize(("name", "expected"), ROUND_TRIPS)
def test_gdb(tmp_path: Path, name: str, expected: int) -> None:
    gdb_round_trip(tmp_path, name, expected=expected)


@needs_lldb
@pytest.mark.parametrize(("name", "expected"), ROUND_TRIPS)
def test_lldb(tmp_path: Path, name: str, expected: int) -> None:
    lldb_round_trip(tmp_path, name, expected=expected)


def _lost_line(text: str) -> None:
    assert re.search(r"fd 3 \(pipe:\[\d+\], a pipe whose write end is in process \d+ "
                     r"\(fd_lost\); if accepted, reads give end of file\)", text), text


@needs_gdb
def test_lost_pipe_refused_then_accepted_gdb(tmp_path: Path) -> None:
    """A pipe to a child process: refused with one line naming it, nothing changed; with
    --accept-loss the fd reads end of file and the warning names it."""
    binary = compile_program("fd_lost", tmp_path)
    image = tmp_path / "fd_lost.img"
    dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    gdb = Gdb()
    try:
        gdb.console(f"file {binary}")
        gdb.until_stopped("starti")
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {image}")
        message = str(refused.value)
        assert "the restore would not bring back: fd 3 (" in message, message
        _lost_line(message)
        assert "_start" in gdb.console("bt")  # refused before the first change
    finally:
        gdb.close()
    text = gdb_round_trip(tmp_path, "fd_lost", restore_options="--accept-loss")
    assert "PASS the lost pipe reads end of file" in text


@needs_lldb
def test_lost_pipe_accepted_lldb(tmp_path: Path) -> None:
    lldb_round_trip(tmp_path, "fd_lost", restore_options="--accept-loss")


def _filter_run(tmp_path: Path, restore_args: str) -> tuple[str, str, str]:
    """fd_stdin run as `fd_stdin < in > out`, dumped after 300 lines, restored in a fresh GDB
    with `restore_args` as the run's redirections; (expected, out, the restore's warnings)."""
    binary = compile_program("fd_stdin", tmp_path)
    given, out = tmp_path / "in.txt", tmp_path / "out.txt"
    given.write_text("".join(f"{i}\n" for i in range(2000)))
    expected = run_uninterrupted(binary, stdin=given)
    image = tmp_path / "fd_stdin.img"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run < {given} > {out}").get("reason") == "breakpoint-hit"
        gdb.console(f"img-dump {image}")
        gdb.console("kill")
    finally:
        gdb.close()
    gdb = Gdb()
    try:
        if restore_args:
            gdb.console(f"set args {restore_args.format(tmp=tmp_path)}")
        gdb.console(f"img-restore {image}")
        warnings = gdb.console("python import gdb_img.commands as c; "
                               "print(*c.last_restore.warnings, sep=chr(10))")
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    return expected, out.read_text(), warnings


@needs_gdb
def test_stdin_and_stdout_files_reopened_at_their_offsets(tmp_path: Path) -> None:
    """Standard streams that were files come back at their offsets when the debugger was not
    told otherwise: the input is read on, the output written on, as an uninterrupted run."""
    expected, out, warnings = _filter_run(tmp_path, "")
    assert "PASS stdin read on from its offset" in out
    assert out == expected
    assert "stdin" not in warnings and "stdout" not in warnings, warnings


@needs_gdb
def test_stdin_redirected_to_the_same_file_reads_on(tmp_path: Path) -> None:
    """`run < in` again at the restore: the same file, moved to the checkpoint's offset; a
    different stdout file is the user's choice, kept, and a warning names the stream."""
    expected, out, warnings = _filter_run(tmp_path, "< {tmp}/in.txt > {tmp}/other.txt")
    other = (tmp_path / "other.txt").read_text()
    assert "PASS stdin read on from its offset" in other
    assert out + other == expected
    assert re.search(r"^stdout: kept as the debugger was told \(.*other.txt\); at the "
                     r"checkpoint it was .*out.txt at offset \d+$", warnings, re.M), warnings


@needs_gdb
@pytest.mark.skipif(shutil.which("xz") is None, reason="xz is not installed")
def test_xz_checkpointed_mid_way_gives_the_same_output(tmp_path: Path) -> None:
    """The real `xz -c < FILE > OUT`, dumped at its 40th read() and restored in a fresh GDB
    with no redirection: OUT is byte for byte an uninterrupted run's (its self-pipe comes
    back, stdin and stdout are reopened at their offsets)."""
    xz = shutil.which("xz") or ""
    given, out, expected = tmp_path / "in.txt", tmp_path / "out.xz", tmp_path / "expected.xz"
    given.write_text("".join(f"line {i} {i * 7919 % 10007}\n" for i in range(120000)))
    with open(given, "rb") as source, open(expected, "wb") as sink:
        subprocess.run([xz, "-c"], stdin=source, stdout=sink, check=True)
    image = tmp_path / "xz.img"
    gdb = Gdb(xz)
    try:
        gdb.console("set breakpoint pending on")
        gdb.console("break read")
        gdb.console("ignore 1 40")
        assert gdb.until_stopped(f"run -c < {given} > {out}").get("reason") == "breakpoint-hit"
        gdb.console(f"img-dump {image}")
        gdb.console("kill")
    finally:
        gdb.close()
    assert out.stat().st_size < expected.stat().st_size  # dumped mid-way
    gdb = Gdb()
    try:
        gdb.console(f"img-restore {image}")
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    assert out.read_bytes() == expected.read_bytes()


@needs_gdb
def test_tcp_connection_refused_then_accepted_gdb(tmp_path: Path) -> None:
    """A TCP connection to the test's listener: the refusal names it with its addresses, the
    inferior unchanged; accepted, it reads end of file."""
    binary = compile_program("fd_tcp", tmp_path)
    image = tmp_path / "fd_tcp.img"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        gdb = Gdb(str(binary))
        try:
            gdb.console(GDB_SIGNALS)
            gdb.console("break checkpoint")
            gdb.until_stopped(f"run {port} > {tmp_path / 'fd_tcp.part1'}")
            dumped = gdb.console(f"img-dump {image}")
            gdb.console("kill")
        finally:
            gdb.close()
    assert re.search(r"fd 3 \(socket:\[\d+\], a TCP socket .*\) cannot be restored", dumped)
    gdb = Gdb()
    try:
        gdb.console(f"file {binary}")
        gdb.until_stopped("starti")
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {image}")
        assert re.search(rf"the restore would not bring back: fd 3 \(socket:\[\d+\], a TCP "
                         rf"socket 127.0.0.1:\d+ -> 127.0.0.1:{port}; if accepted, reads give "
                         r"end of file\) \(--accept-loss", str(refused.value)), refused.value
        assert "_start" in gdb.console("bt")
        gdb.console(f"img-restore {image} --accept-loss")
        warnings = gdb.console("python import gdb_img.commands as c; "
                               "print(*c.last_restore.warnings, sep=chr(10))")
        assert re.search(r"^not restored: fd 3 \(socket:\[\d+\], a TCP socket", warnings,
                         re.M), warnings
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    # stdout was a file at the dump and the debugger gave none: the same file, written on.
    assert "PASS the lost connection reads end of file" in (tmp_path / "fd_tcp.part1").read_text()


@needs_lldb
def test_stdin_file_read_on_lldb(tmp_path: Path) -> None:
    """LLDB: stdin was a file at the dump (target.input-path) and is not given at the
    restore: the file is reopened at its offset; stdout, given anew, is the user's."""
    binary = compile_program("fd_stdin", tmp_path)
    given, first, second = tmp_path / "in.txt", tmp_path / "out1.txt", tmp_path / "out2.txt"
    given.write_text("".join(f"{i}\n" for i in range(2000)))
    expected = run_uninterrupted(binary, stdin=given)
    image = tmp_path / "fd_stdin.img"
    dumped = lldb_batch(f"settings set target.input-path {given}",
                        f"settings set target.output-path {first}",
                        "breakpoint set -n checkpoint", "run", f"img-dump {image}", "kill",
                        program=binary)
    assert image.exists(), dumped.stdout + dumped.stderr
    restored = lldb_batch(f"settings set target.output-path {second}", f"img-restore {image}",
                          "continue")
    output = restored.stdout + restored.stderr
    assert "exited with status = 0" in restored.stdout, output
    assert "stdin:" not in output, output
    assert re.search(r"stdout: kept as the debugger was told \(.*out2.txt\)", output), output
    assert "PASS stdin read on from its offset" in second.read_text()
    assert first.read_text() + second.read_text() == expected


def _drain(master: int) -> bytes:
    """What the terminal's programs wrote; EIO once no one holds the terminal open."""
    got = b""
    try:
        while chunk := os.read(master, 4096):
            got += chunk
    except OSError:
        pass
    return got


@needs_gdb
def test_terminal_reopened_or_refused_when_gone(tmp_path: Path) -> None:
    """A pty's terminal open at fd 3 comes back while the pty exists; once its master is
    closed (the terminal gone) the restore is refused, naming it."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    try:
        text = gdb_round_trip(tmp_path, "fd_terminal", args=(name,), expected=2)
        assert "PASS the same terminal" in text
        assert b"after" in _drain(master)
    finally:
        os.close(master)
    gdb = Gdb()
    try:
        with pytest.raises(GdbError, match=rf"fd 3 \(the terminal {name}, gone;"):
            gdb.console(f"img-restore {tmp_path / 'fd_terminal.img'}")
    finally:
        gdb.close()


@needs_gdb
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_event_loop_resumes(tmp_path: Path) -> None:
    """node with a timer, interrupted in its event loop (epoll, eventfds, a self-pipe) after
    5 ticks and restored in a fresh GDB with no redirection: every tick once, in order, to
    the same output file, and a normal exit."""
    script, out, image = tmp_path / "ticks.js", tmp_path / "out.txt", tmp_path / "node.img"
    script.write_text("let n = 0;\nconst t = setInterval(() => {\n  n++;\n"
                      "  console.log('tick ' + n);\n"
                      "  if (n === 30) { clearInterval(t); console.log('done'); }\n}, 50);\n")
    gdb = Gdb(shutil.which("node") or "")
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"run {script} > {out} &")
        deadline = time.monotonic() + 30
        while not out.exists() or "tick 5\n" not in out.read_text():
            assert time.monotonic() < deadline, "node did not tick"
            time.sleep(0.05)
        gdb.interrupt()
        gdb.console(f"img-dump {image}")
        gdb.console("kill")
    finally:
        gdb.close()
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"img-restore {image}")
        warnings = gdb.console("python import gdb_img.commands as c; "
                               "print(*c.last_restore.warnings, sep=chr(10))")
        assert "not restored" not in warnings, warnings
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    assert out.read_text() == "".join(f"tick {i}\n" for i in range(1, 31)) + "done\n"


@needs_gdb
@pytest.mark.xfail(strict=True, reason="asyncio keeps the pid its loop runs in and compares it "
                   "with os.getpid(): the restored process has another pid, so 'no running "
                   "event loop' (its epoll and self-pipe socket pair do come back)")
def test_python_asyncio_resumes(tmp_path: Path) -> None:
    """python's asyncio loop (epoll and a socket pair as its self-pipe), interrupted while
    it sleeps between ticks, resumes them all."""
    script, out, image = tmp_path / "ticks.py", tmp_path / "out.txt", tmp_path / "py.img"
    script.write_text("import asyncio\n\nasync def main():\n    for i in range(1, 31):\n"
                      "        print('tick', i, flush=True)\n        await asyncio.sleep(0.05)\n"
                      "    print('done', flush=True)\n\nasyncio.run(main())\n")
    gdb = Gdb("/usr/bin/python3")
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"run {script} > {out} &")
        deadline = time.monotonic() + 30
        while not out.exists() or "tick 5\n" not in out.read_text():
            assert time.monotonic() < deadline, "python did not tick"
            time.sleep(0.05)
        gdb.interrupt()
        gdb.console(f"img-dump {image}")
        gdb.console("kill")
    finally:
        gdb.close()
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"img-restore {image}")
        warnings = gdb.console("python import gdb_img.commands as c; "
                               "print(*c.last_restore.warnings, sep=chr(10))")
        assert "not restored" not in warnings, warnings
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    assert out.read_text() == "".join(f"tick {i}\n" for i in range(1, 31)) + "done\n"


@needs_gdb
def test_fifo_with_buffered_bytes(tmp_path: Path) -> None:
    fifo = tmp_path / "the.fifo"
    os.mkfifo(fifo)
    gdb_round_trip(tmp_path, "fd_fifo", args=(str(fifo),), expected=3)
