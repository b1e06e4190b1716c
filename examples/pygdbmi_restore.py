#!/usr/bin/env python3
"""Restore a checkpoint in GDB from a script and check the program's state, the way a test
suite would: python examples/pygdbmi_restore.py [--workdir DIR]

1. Compile examples/sample.c and run it under GDB to round 5; img-dump a checkpoint there.
2. In a fresh GDB (pygdbmi, GDB's machine interface): img-restore the checkpoint, assert on
   the stopped frame and variables, continue to the end, assert on what the program printed.
Needs gdb, gcc and pygdbmi (`pip install pygdbmi`). Exits 0 and prints OK when all holds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pygdbmi.gdbcontroller import GdbController

HERE = Path(__file__).resolve().parent
if (HERE.parent / "binfmt_img").is_dir():  # run from a checkout: its package, not another
    sys.path.insert(0, str(HERE.parent))

import binfmt_img  # noqa: E402

# The ~/.gdbinit line of an installed binfmt-img, wherever the package is.
PLUGIN = f"source {Path(binfmt_img.__file__).parent / 'gdb.py'}"


class Gdb:
    """A GDB with the plugin loaded; commands by their console text, answers as records."""

    def __init__(self, *args: str) -> None:
        self.mi = GdbController(command=["gdb", "--nx", "--quiet", "--interpreter=mi3", *args])
        self.token = 0
        self.records: list[dict] = []
        for command in ("set confirm off", "set pagination off", PLUGIN):
            self.console(command)

    def send(self, mi_command: str) -> list[dict]:
        """One MI command; the records up to its result (^done, ^running or ^error)."""
        self.token += 1
        self.mi.write(f"{self.token}{mi_command}", read_response=False)
        return self.wait(lambda r: r["type"] == "result" and r.get("token") == self.token)

    def wait(self, last, timeout: float = 120) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got += self.mi.get_gdb_response(timeout_sec=0.2, raise_error_on_timeout=False)
            if any(last(r) for r in got):
                self.records += got
                return got
        raise TimeoutError(f"gdb did not answer; last records {got[-3:]}")

    def console(self, command: str) -> str:
        """A CLI command's console output; a GDB error raises RuntimeError."""
        quoted = command.replace("\\", "\\\\").replace('"', '\\"')
        got = self.send(f'-interpreter-exec console "{quoted}"')
        result = got[-1] if got[-1]["type"] == "result" else next(
            r for r in got if r["type"] == "result")
        if result["message"] == "error":
            raise RuntimeError(f"{command}: {result['payload']['msg']}")
        if result["message"] == "running":
            # With IMG_MI_ONE_ANSWER=0 img-restore answers ^running at its first resume
            # and nothing at the end; a no-op marks the end.
            got += self.send("-data-evaluate-expression 0")
        return "".join(r["payload"] for r in got if r["type"] == "console")

    def value(self, expression: str) -> str:
        answer = self.send(f"-data-evaluate-expression \"{expression}\"")[-1]["payload"]
        if "value" not in answer:
            raise RuntimeError(f"{expression}: {answer.get('msg')}")
        return answer["value"]

    def run_until_stop(self, mi_command: str) -> dict:
        """-exec-run or -exec-continue; the *stopped record's payload."""
        def is_stop(record: dict) -> bool:
            return record["type"] == "notify" and record["message"] == "stopped"

        got = self.send(mi_command)  # the stop may come in the same read as ^running
        if not any(is_stop(r) for r in got):
            got = self.wait(is_stop)
        return next(r for r in got if is_stop(r))["payload"]

    def close(self) -> None:
        self.mi.write("-interpreter-exec console kill", timeout_sec=5,
                      raise_error_on_timeout=False)
        self.mi.exit()


def checkpoint(program: Path, image: Path, out: Path) -> dict[str, str]:
    """Run the program under GDB to the start of round 5, dump it; the values seen there."""
    gdb = Gdb(str(program))
    try:
        gdb.console("break sum_primes if from == 100000")
        gdb.console(f"set args > {out}")
        assert gdb.run_until_stop("-exec-run")["reason"] == "breakpoint-hit"
        seen = {name: gdb.value(name) for name in ("from", "to", "rounds_done")}
        gdb.console("up")
        seen["totals[4]"] = gdb.value("totals[4]")
        gdb.console(f"img-dump {image}")
        return seen
    finally:
        gdb.close()


def resume(image: Path, seen: dict[str, str], out: Path) -> None:
    """A fresh GDB without the program: img-restore, check the state, run to the end."""
    gdb = Gdb()
    try:
        gdb.console(f"set args > {out}")
        gdb.console(f"img-restore {image}")
        frame = gdb.send("-stack-info-frame")[-1]["payload"]["frame"]
        assert frame["func"] == "sum_primes", frame
        assert gdb.value("from") == seen["from"] == "100000"
        assert gdb.value("rounds_done") == seen["rounds_done"] == "5"
        gdb.console("up")
        assert gdb.value("round") == "5"
        assert gdb.value("totals[4]") == seen["totals[4]"]
        stop = gdb.run_until_stop("-exec-continue")
        assert stop["reason"] == "exited-normally", stop
    finally:
        gdb.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temporary "
                                                     "directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        program, image = work / "sample", work / "sample.img"
        subprocess.run(["gcc", "-g", "-O0", "-o", str(program), str(HERE / "sample.c")],
                       check=True)
        whole = subprocess.run([str(program)], capture_output=True, text=True, check=True,
                               timeout=60).stdout
        seen = checkpoint(program, image, work / "before.txt")
        resume(image, seen, work / "after.txt")
        before, after = (work / "before.txt").read_text(), (work / "after.txt").read_text()
        assert after.startswith("round 5:") and after.endswith("finished\n"), after
        assert before + after == whole, (before, after)
    print(f"OK: restored at round 5 ({seen}), finished as an uninterrupted run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
