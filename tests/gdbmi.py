"""A real GDB driven through the machine interface (pygdbmi) with the plugin loaded."""

from __future__ import annotations

import subprocess
import time

from cprogs import ROOT
from pygdbmi.gdbcontroller import GdbController

INIT = ROOT / "gdb_img" / "init.py"


class GdbError(AssertionError):
    pass


def _quoted(command: str) -> str:
    return command.replace("\\", "\\\\").replace('"', '\\"')


class Gdb:
    def __init__(self, *args: str) -> None:
        self.mi = GdbController(command=["gdb", "--nx", "--quiet", "--interpreter=mi3", *args])
        self.token = 100
        self.records: list[dict] = []
        self.console("set confirm off")
        self.console("set pagination off")
        self.console(f"source {INIT}")

    def close(self) -> None:
        # A restored inferior counts as attached (GDB re-attached to it), and GDB would only
        # detach it on exit, leaving it to run on: kill it first.
        try:
            self.mi.write("-interpreter-exec console kill", timeout_sec=5,
                          raise_error_on_timeout=False)
        except Exception:  # noqa: BLE001 - nothing to kill, or gdb already gone
            pass
        try:
            self.mi.write("-gdb-exit", timeout_sec=2, raise_error_on_timeout=False)
        except Exception:  # noqa: BLE001 - gdb may already be gone
            pass
        # Bounded: a GDB that crashed can hang in its exit handlers, deaf to SIGTERM.
        process, self.mi.gdb_process = self.mi.gdb_process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _collect(self, done, timeout: float) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = self.mi.get_gdb_response(timeout_sec=0.2, raise_error_on_timeout=False)
            got += batch
            self.records += batch
            if done(got):
                return got
        raise GdbError(f"gdb timed out; last records: {got[-5:]}")

    def console(self, command: str, timeout: float = 60, settle: bool = True) -> str:
        """Run a CLI command; returns its console output and its stderr lines; a GDB error
        raises GdbError. Answered `^done`, or `^running` when it resumed the inferior."""
        token = self._send(f'-interpreter-exec console "{_quoted(command)}"')
        got = self._until_result(token, timeout)
        result = next(r for r in got if r["type"] == "result" and r.get("token") == token)
        self.result_index = next(i for i in range(len(self.records) - 1, -1, -1)
                                 if self.records[i] is result)
        if result["message"] == "running" and settle:
            # A command that resumes the inferior (img-restore with IMG_MI_ONE_ANSWER=0)
            # answers ^running at its first step and nothing at its end: a no-op marks the end.
            got += self._until_result(self._send("-data-evaluate-expression 0"), timeout)
        # "log" records: what the command wrote to GDB's stderr (the plugin's warnings).
        text = "".join(r["payload"] for r in got if r["type"] in ("console", "output", "log")
                       and isinstance(r["payload"], str))
        for r in got:
            if r["type"] == "result" and r.get("token") == token and r["message"] == "error":
                raise GdbError(f"{command}: {r['payload'].get('msg')}")
        return text

    def _send(self, mi_command: str) -> int:
        self.token += 1
        self.mi.write(f"{self.token}{mi_command}", read_response=False)
        return self.token

    def _until_result(self, token: int, timeout: float) -> list[dict]:
        return self._collect(lambda rs: any(r["type"] == "result" and r.get("token") == token
                                            for r in rs), timeout)

    def until_stopped(self, command: str, timeout: float = 60) -> dict:
        """Run an execution command and wait for the inferior to stop or exit."""
        self.console(command, timeout, settle=False)
        start = self.result_index + 1  # stops before ^running were the command's own steps

        def stopped(_rs: list[dict]) -> bool:
            return any(r["type"] == "notify" and r["message"] == "stopped"
                       for r in self.records[start:])
        if not stopped([]):
            self._collect(stopped, timeout)
        return next(r for r in self.records[start:]
                    if r["type"] == "notify" and r["message"] == "stopped")["payload"]

    def interrupt(self) -> dict:
        start = len(self.records)
        self.mi.write("-exec-interrupt", read_response=False)
        self._collect(lambda _rs: any(r["type"] == "notify" and r["message"] == "stopped"
                                      for r in self.records[start:]), 20)
        return next(r for r in self.records[start:]
                    if r["type"] == "notify" and r["message"] == "stopped")["payload"]
