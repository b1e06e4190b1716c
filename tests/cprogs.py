"""Compiling the C programs under tests/programs and running them uninterrupted."""

from __future__ import annotations

import subprocess
from pathlib import Path

PROGRAMS = Path(__file__).parent / "programs"
ROOT = Path(__file__).parent.parent


def compile_program(name: str, out_dir: Path, *flags: str) -> Path:
    binary = out_dir / name
    subprocess.run(["gcc", "-g", "-O0", "-mavx", "-I", str(PROGRAMS), *flags, "-o", str(binary),
                    str(PROGRAMS / f"{name}.c"), "-lm"], check=True)
    return binary


def run_uninterrupted(binary: Path, *args: str, stdin: Path | None = None) -> str:
    """The whole output of a run with stdout to a file, buffered as under the debugger."""
    out = binary.parent / f"{binary.name}.expected"
    with open(out, "wb") as sink, open(stdin or "/dev/null", "rb") as source:
        subprocess.run([str(binary), *args], stdout=sink, stdin=source, check=True, timeout=60)
    return out.read_text()
