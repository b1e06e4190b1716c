"""A remote inferior (gdbserver on this machine's loopback): img-restore takes the debugger's
page path and reads /proc through the debugger, and the program finishes from the image."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb
from test_gdb_restore import dump_at_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("gdbserver") is None or shutil.which("gdb") is None,
                                reason="gdb and gdbserver are needed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_restore_through_gdbserver(tmp_path: Path) -> None:
    binary = compile_program("tls", tmp_path)
    expected = run_uninterrupted(binary)
    image = tmp_path / "tls.img"
    before = dump_at_checkpoint(binary, image)
    port = free_port()
    out = tmp_path / "out"
    with open(out, "wb") as sink:
        server = subprocess.Popen(["gdbserver", "--once", f"127.0.0.1:{port}", str(binary)],
                                  stdout=sink, stderr=subprocess.DEVNULL)
    gdb = Gdb(str(binary))
    try:
        deadline = time.monotonic() + 10
        while True:  # until gdbserver listens
            try:
                gdb.console(f"target remote 127.0.0.1:{port}")
                break
            except AssertionError:
                assert time.monotonic() < deadline, "gdbserver did not start"
                time.sleep(0.2)
        text = gdb.console(f"img-restore {image}")
        assert "via debugger" in text
        assert "checkpoint" in gdb.console("bt") and "main" in gdb.console("bt")
        assert "libc.so.6" in gdb.console("info sharedlibrary")
        with pytest.raises(AssertionError, match="needs the inferior on this machine"):
            gdb.console(f"img-restore {image} --via fast")
        assert gdb.until_stopped("continue")["reason"] == "exited-normally"
    finally:
        gdb.close()
        server.wait(timeout=20)
    assert before + out.read_text() == expected
