"""The core's Target interface over GDB's Python API."""

from __future__ import annotations

import os
import re
import signal
import tempfile

import gdb

from binfmt_img.errors import RestoreError

_MASK = (1 << 64) - 1
# Processes GDB started that a re-attach turned into attached ones, which GDB would only
# detach on exit; kill_started_here() ends them as GDB ends the processes it started.
STARTED_HERE: set[int] = set()


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _traced_by_us(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split() == ["TracerPid:", str(os.getpid())] for line in f)
    except OSError:
        return False


def forget_detached(_event: object = None) -> None:
    """At each prompt: a process the user detached leaves STARTED_HERE for good, even if
    attached again later (then it is the user's, to detach on exit)."""
    for pid in list(STARTED_HERE):
        if not _traced_by_us(pid):
            STARTED_HERE.discard(pid)


def kill_started_here(_event: object = None) -> None:
    """On GDB's exit: the processes in STARTED_HERE it still traces (not those the user
    detached) go as GDB's own would."""
    for pid in list(STARTED_HERE):
        if _traced_by_us(pid):
            os.kill(pid, signal.SIGKILL)
    STARTED_HERE.clear()


class GdbTarget:
    def __init__(self, exe_path: str | None = None) -> None:
        self.inferior = gdb.selected_inferior()
        self.exe_path = exe_path  # the image's executable, for reload_process

    def pid(self) -> int | None:
        return self.inferior.pid or None

    def is_local(self) -> bool:
        connection = getattr(self.inferior, "connection", None)
        return connection is not None and connection.type == "native"

    def ptrace_available(self) -> bool:
        """GDB traces a native inferior from the thread its Python runs in."""
        return self.is_local()

    def steps_over_signal_handler(self, number: int) -> bool:
        """A signal that arrives during `stepi` and that GDB handles `nostop pass` reaches
        the program, and GDB finishes the step once the handler returns (infrun's
        step-resume breakpoint). GDB names real-time signals SIG32..SIG64."""
        try:
            name = signal.Signals(number).name if number < 32 else f"SIG{number}"
            text = gdb.execute(f"info signals {name}", to_string=True)
        except (ValueError, gdb.error):
            return False
        for line in text.splitlines():
            fields = line.split()
            if fields and fields[0] == name and len(fields) >= 4:
                return fields[1] == "No" and fields[3] == "Yes"
        return False

    def read_memory(self, addr: int, size: int) -> bytes:
        return bytes(self.inferior.read_memory(addr, size))

    def write_memory(self, addr: int, data: bytes | memoryview) -> None:
        self.inferior.write_memory(addr, data)

    def read_registers(self, names: tuple[str, ...]) -> dict[str, int]:
        frame = gdb.newest_frame()
        out = {}
        for name in names:
            try:
                value = frame.read_register(name)
            except ValueError:
                continue  # not a register this GDB shows
            out[name] = int(value) & _MASK
        return out

    def write_registers(self, values: dict[str, int]) -> None:
        # `set $reg` writes the selected frame's register: in an outer frame (after `up`)
        # that is the slot where the callee saved it, on the stack. Frame 0 is the CPU's.
        gdb.newest_frame().select()
        for name, value in values.items():
            gdb.execute(f"set ${name} = {value & _MASK:#x}", to_string=True)

    def step_instruction(self) -> None:
        # The commands set scheduler-locking on around a restore or dump: one thread moves.
        gdb.execute("stepi", to_string=True)

    def run_to_trap(self, traps: tuple[int, ...] = ()) -> None:
        """Resume the selected thread alone (the commands set scheduler-locking on) until it
        stops: at one of the restorer's int3s `traps`, or wherever a signal stopped it (the
        core checks). Internal breakpoints on the int3s make the stop a breakpoint's, which
        suppress-cli-notifications keeps quiet (a SIGTRAP's report it does not)."""
        breakpoints = [gdb.Breakpoint(f"*{at:#x}", internal=True) for at in traps]
        try:
            gdb.execute("continue", to_string=True)
        finally:
            for breakpoint in breakpoints:
                breakpoint.delete()

    def threads(self) -> list[int]:
        selected = gdb.selected_thread()
        tids = sorted(t.ptid[1] for t in self.inferior.threads() if t.is_valid())
        first = [selected.ptid[1]] if selected is not None and selected.ptid[1] in tids else []
        return first + [tid for tid in tids if tid not in first]

    def select_thread(self, tid: int) -> None:
        for thread in self.inferior.threads():
            if thread.ptid[1] == tid:
                thread.switch()
                return
        raise RestoreError(f"GDB has no thread with LWP {tid}")

    def memory_changed(self) -> None:
        gdb.execute("maintenance flush dcache", to_string=True)
        gdb.execute("maintenance flush register-cache", to_string=True)

    def read_proc(self, name: str) -> bytes:
        """A remote inferior's /proc/PID/NAME, fetched with `remote get` (gdbserver's vFile)."""
        fd, local = tempfile.mkstemp(prefix="img-proc-")
        os.close(fd)
        try:
            gdb.execute(f"remote get /proc/{self.inferior.pid}/{name} {local}", to_string=True)
            with open(local, "rb") as f:
                return f.read()
        finally:
            os.unlink(local)

    def before_changes(self) -> None:
        """libthread_db reads the process's libc data, which a restore replaces mid-way, and
        GDB then cannot step. Attach again without it (reload_process brings it back)."""
        if self.is_local() and "Thread 0x" in gdb.execute("info threads", to_string=True):
            self._attach_again({"libthread-db-search-path": "/nonexistent"})

    def reload_process(self) -> None:
        """Detach and attach again, so that GDB reads the restored process as on a first
        attach: the exe link and auxv that PR_SET_MM_MAP set, the PIE and shared-library
        addresses, the vDSO, and the stop pc, so a breakpoint right there is stepped over."""
        pid = self.inferior.pid
        exe = self.exe_path if self.exe_path and os.path.exists(self.exe_path) else None
        if exe is not None:
            gdb.execute(f"file {gdb_quoted(exe)}", to_string=True)
        if not self.is_local():
            # gdbserver ends with a detach. Setting the library search path (to what it is)
            # makes GDB run its solib start-up again: the PIE from the new auxv, the
            # libraries from the restored link map.
            path = gdb.parameter("solib-search-path") or ""
            gdb.execute(f"set solib-search-path {path}", to_string=True)
            return
        linked = exe is not None and os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(exe)
        # Where the kernel kept the old exe link, trust the file loaded above.
        self._attach_again({} if linked else {"exec-file-mismatch": "off"})

    def _attach_again(self, settings: dict[str, str]) -> None:
        """Detach, then attach to the same process with GDB settings changed meanwhile."""
        pid = self.inferior.pid
        if _parent_of(pid) == os.getpid():
            STARTED_HERE.add(pid)  # GDB must still kill it on exit, as one it started
        saved = {name: gdb.parameter(name) for name in settings}
        gdb.execute("detach", to_string=True)
        try:
            for name, value in settings.items():
                gdb.execute(f"set {name} {value}", to_string=True)
            gdb.execute(f"attach {pid}", to_string=True)
        finally:
            for name, value in saved.items():
                gdb.execute(f"set {name} {value}", to_string=True)
        self.inferior = gdb.selected_inferior()


def gdb_quoted(path: str) -> str:
    """A path as one argument of a GDB command (gdb_buildargv's escapes). Image paths hold
    no control characters (validated), so no second command can follow."""
    return re.sub(r"""([\\\s"'])""", r"\\\1", path)
