"""Driving lldb-19 and gdb in batch mode for the LLDB tests (programs: tests/cprogs.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLDB = shutil.which("lldb-19")
GDB = shutil.which("gdb")


def lldb_missing() -> str | None:
    """Why the LLDB tests cannot run here, or None."""
    if LLDB is None:
        return "lldb-19 is not installed"
    found = subprocess.run([LLDB, "-P"], capture_output=True, text=True)
    if found.returncode or not (Path(found.stdout.strip()) / "lldb").is_dir():
        return "the lldb Python module (python3-lldb-19) is not installed"
    return None


def lldb_batch(*commands: str, program: Path | None = None, on_signal: tuple[str, ...] = (),
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """lldb-19 with lldb_img loaded runs COMMANDS, then quits. It stops at the first error, and
    when the process stops for a signal it runs the ON_SIGNAL commands instead of the rest."""
    assert LLDB is not None
    argv = [LLDB, "--no-lldbinit", "--batch", "-o", f"command script import {ROOT / 'lldb_img'}"]
    for command in commands:
        argv += ["-o", command]
    for command in on_signal:
        argv += ["-k", command]
    if program is not None:
        argv.append(str(program))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=str(program.parent) if program else None)


def gdb_batch(*commands: str, program: Path | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert GDB is not None
    argv = [GDB, "-nx", "-q", "-batch", "-ex", f"source {ROOT / 'gdb_img' / 'init.py'}"]
    for command in commands:
        argv += ["-ex", command]
    if program is not None:
        argv.append(str(program))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, "TERM": "dumb"})


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
