"""The core's Target interface over GDB's Python API."""

from __future__ import annotations

import os
import re
import signal
import struct
import tempfile

import gdb

from binfmt_img.errors import RestoreError
from binfmt_img.live import progress
from gdb_img import native

_MASK = (1 << 64) - 1
_AT_SYSINFO_EHDR = 33
_JUMP = b"\xff\x25\x00\x00\x00\x00"  # jmp [rip+0]: to the 8-byte address after it
_SYSCALL = b"\x0f\x05"
_RT_SIGPROCMASK = 14
# System calls GDB steps itself: those that make or end a thread or process (GDB must see
# the clone event or the exit): clone, fork, vfork, execve, exit, exit_group, execveat,
# clone3; and those that wait for or report unblocked signals, which a native step (every
# signal blocked) would change: pause, rt_sigpending, rt_sigsuspend. A signal queued or
# arriving during a native step stays pending, to be delivered when the user resumes,
# as at the checkpoint.
_GDB_STEPS = frozenset((56, 57, 58, 59, 60, 231, 322, 435, 34, 127, 130))
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


def machine_interface() -> bool:
    """True when GDB talks MI on its stdout (started with --interpreter=mi*)."""
    args = progress.command_line()
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if "=" in arg else (
            args[i + 1] if i + 1 < len(args) else "")
        if arg.lstrip("-").split("=")[0] in ("interpreter", "i") and value.startswith("mi"):
            return True
    return False


def _vdso(pid: int) -> int | None:
    """The process's vDSO address (AT_SYSINFO_EHDR of /proc/PID/auxv)."""
    try:
        with open(f"/proc/{pid}/auxv", "rb") as f:
            data = f.read()
    except OSError:
        return None
    for i in range(0, len(data) - 15, 16):
        key, value = struct.unpack_from("<QQ", data, i)
        if key == _AT_SYSINFO_EHDR:
            return value
    return None


def _breakpoint_addresses() -> set[int]:
    out = set()
    for b in gdb.breakpoints():
        for location in getattr(b, "locations", []):
            if location.address is not None:
                out.add(location.address)
    return out


def _trampoline_site(pid: int, pc: int) -> int | None:
    """An address in executable code, clear of the pc and of every breakpoint, where the
    jump for stop_at_checkpoint can be written for one step."""
    size = len(_JUMP) + 8
    taken = _breakpoint_addresses() | {pc}
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[1][2] != "x" or line.endswith(("[vsyscall]", "[vdso]")):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        for at in range(start, min(end - size, start + 0x1000), 0x40):
            if not any(at - size < t < at + size for t in taken):
                return at
    return None


class GdbTarget:
    def __init__(self, exe_path: str | None = None) -> None:
        self.inferior = gdb.selected_inferior()
        self.exe_path = exe_path  # the image's executable, for reload_process
        self._stale = False  # GDB's register cache predates our own ptrace steps or writes
        self._vdso_before: int | None = None  # where the vDSO was when GDB last read it
        self._stop = self._read_stop()  # (tid, siginfo) of the stop GDB reported last
        self._changed = False  # before_changes ran: a restore, not a dump
        self._gdb_resumed = False  # GDB itself stepped or ran the inferior
        self._held = (0, 0)  # (tid, its signal mask) of a table running meanwhile

    def _read_stop(self) -> tuple[int, bytes] | None:
        tid = self._native_tid() if self.inferior.pid else None
        if tid is None:
            return None
        try:
            return tid, native.get_siginfo(tid)
        except RestoreError:
            return None

    def stop_siginfo(self) -> bytes | None:
        """The siginfo of the selected thread's stop as it was before our own steps."""
        return self._stop[1] if self._stop is not None else None

    def put_back_stop(self) -> None:
        """After a dump: the thread's siginfo as before its injected steps ($_siginfo)."""
        if self._stop is not None:
            try:
                native.set_siginfo(*self._stop)
            except RestoreError:
                pass

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
        if self.is_local():
            # Through /proc/PID/mem (as the tracer): no `=memory-changed` MI record for
            # each of a restore's many small writes; GDB's caches are flushed afterwards.
            try:
                fd = os.open(f"/proc/{self.inferior.pid}/mem", os.O_RDWR)
                try:
                    if os.pwrite(fd, data, addr) == len(data):
                        self._stale = True
                        return
                finally:
                    os.close(fd)
            except OSError:
                pass  # GDB's own way says what is wrong
        self.inferior.write_memory(addr, data)

    def _native_tid(self) -> int | None:
        """The selected thread's LWP when steps and registers go through ptrace directly
        (a local native inferior), else None."""
        if not self.is_local():
            return None
        thread = gdb.selected_thread()
        return thread.ptid[1] if thread is not None else None

    def _sync(self) -> None:
        """GDB looks again after steps or register writes it did not make: drop its caches."""
        if self._stale:
            self._stale = False
            gdb.execute("maintenance flush register-cache", to_string=True)
            gdb.execute("maintenance flush dcache", to_string=True)

    def read_registers(self, names: tuple[str, ...]) -> dict[str, int]:
        tid = self._native_tid()
        if tid is not None and all(name in native.USER_REGS for name in names):
            regs = native.get_regs(tid)
            return {name: regs[name] for name in names}
        self._sync()
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
        tid = self._native_tid()
        if tid is not None and all(name in native.USER_REGS for name in values):
            regs = native.get_regs(tid)
            for name, value in values.items():
                regs[name] = value & _MASK
                if name == "rip":  # as GDB does: no system call restart at the new pc
                    regs["orig_rax"] = _MASK
            native.set_regs(tid, regs)
            self._stale = True
            return
        self._sync()
        # `set $reg` writes the selected frame's register: in an outer frame (after `up`)
        # that is the slot where the callee saved it, on the stack. Frame 0 is the CPU's.
        gdb.newest_frame().select()
        for name, value in values.items():
            gdb.execute(f"set ${name} = {value & _MASK:#x}", to_string=True)

    def step_instruction(self) -> None:
        tid = self._native_tid()
        if tid is not None:
            regs = native.get_regs(tid)
            call = regs["rax"] if self.read_memory(regs["rip"], 2) == _SYSCALL else None
            if call == _RT_SIGPROCMASK:
                self._sigprocmask(tid, regs)
                return
            if call not in _GDB_STEPS:
                native.single_step(tid)
                self._stale = True
                return
        self._sync()
        self._gdb_resumed = True
        # The commands set scheduler-locking on around a restore or dump: one thread moves.
        # (Under MI this step shows: `*running`, `*stopped` and a frame line. Running it as
        # an MI command instead would hide the line but answer the outer command's token.)
        gdb.execute("stepi", to_string=True)

    def _sigprocmask(self, tid: int, regs: dict[str, int]) -> None:
        """rt_sigprocmask done from here with PTRACE_GET/SETSIGMASK: a native step runs
        with every signal blocked, which the call would read or undo."""
        how, new, old, size = regs["rdi"], regs["rsi"], regs["rdx"], regs["r10"]
        result = 0
        mask = native.get_sigmask(tid)
        if size != 8 or (new and how not in (0, 1, 2)):
            result = -22  # EINVAL, as the kernel says
        else:
            if old:
                self.write_memory(old, mask.to_bytes(8, "little"))
            if new:
                value = int.from_bytes(self.read_memory(new, 8), "little")
                mask = (mask | value if how == 0 else mask & ~value if how == 1 else value)
                native.set_sigmask(tid, mask)
        regs.update(rax=result & _MASK, rip=regs["rip"] + 2, rcx=regs["rip"] + 2,
                    r11=regs["eflags"], orig_rax=_RT_SIGPROCMASK)
        native.set_regs(tid, regs)
        self._stale = True

    def sync(self) -> None:
        """After a restore or dump: GDB's caches match the process again."""
        self._sync()

    def stop_at_checkpoint(self, from_tty: bool, siginfo: bytes | None = None) -> bool:
        """End a restore with a stop GDB makes itself at the checkpoint's pc: GDB then knows
        the thread stopped there (a breakpoint at that pc is stepped over by `continue`, not
        hit again), reports it as after any stop (the stop line, MI's `*stopped` with the
        frame, a breakpoint there as hit), and its views are fresh. The selected thread
        `stepi`s a `jmp [rip]` to the pc, written for that step into code elsewhere. False
        where it cannot (not a local native inferior, no spot for the jump). `siginfo`: what
        the checkpoint's stop had, for `$_siginfo`."""
        tid = self._native_tid()
        if tid is None:
            return False
        regs = native.get_regs(tid)
        pc = regs["rip"]
        at = _trampoline_site(self.inferior.pid, pc)
        if at is None:
            return False
        saved = self.read_memory(at, len(_JUMP) + 8)
        self.write_memory(at, _JUMP + pc.to_bytes(8, "little"))
        try:
            # No system call restart on this resume (the kernel would move rip back at the
            # jump); orig_rax and rax are put back once stopped at the pc.
            native.set_regs(tid, {**regs, "rip": at, "orig_rax": _MASK})
            self._stale = True
            self._sync()
            mode = gdb.parameter("scheduler-locking")
            gdb.execute("set scheduler-locking on", to_string=True)
            try:
                gdb.execute("stepi", from_tty)
            finally:
                gdb.execute(f"set scheduler-locking {mode}", to_string=True)
        finally:
            self.write_memory(at, saved)
            now = native.get_regs(tid)
            if now["rip"] == pc:
                native.set_regs(tid, {**now, "rax": regs["rax"], "orig_rax": regs["orig_rax"]})
                if siginfo is not None:
                    native.set_siginfo(tid, siginfo)
            gdb.execute("maintenance flush register-cache", to_string=True)
        return True

    def run_to_trap(self, traps: tuple[int, ...] = ()) -> None:
        """Resume the selected thread alone (the commands set scheduler-locking on) until it
        stops: at one of the restorer's int3s `traps`, or wherever a signal stopped it (the
        core checks). Internal breakpoints on the int3s make the stop a breakpoint's, which
        suppress-cli-notifications keeps quiet (a SIGTRAP's report it does not)."""
        tid = self._native_tid()
        if tid is not None:  # as the steps: behind GDB's back, signals held back
            native.run_to_trap(tid)
            regs = native.get_regs(tid)
            if regs["rip"] - 1 in traps:  # on the int3, as a debugger's breakpoint stop is
                native.set_regs(tid, {**regs, "rip": regs["rip"] - 1})
            self._stale = True
            return
        self._continue_to(traps)

    def resume_to_trap(self, traps: tuple[int, ...] = ()) -> bool:
        """The selected thread runs its table (signals held back) while the caller goes on;
        await_trap waits for it. False (nothing done) for a remote inferior."""
        tid = self._native_tid()
        if tid is None:
            return False
        self._held = (tid, native.resume_held(tid))
        self._stale = True
        return True

    def await_trap(self, traps: tuple[int, ...] = ()) -> None:
        tid, saved = self._held
        native.await_held(tid, saved)
        regs = native.get_regs(tid)
        if regs["rip"] - 1 in traps:  # on the int3, as a debugger's breakpoint stop is
            native.set_regs(tid, {**regs, "rip": regs["rip"] - 1})

    def _continue_to(self, traps: tuple[int, ...]) -> None:
        self._sync()
        self._gdb_resumed = True
        breakpoints = [gdb.Breakpoint(f"*{at:#x}", internal=True) for at in traps]
        try:
            gdb.execute("continue", to_string=True)
        finally:
            for breakpoint in breakpoints:
                breakpoint.delete()

    def run_to_trap_spawning(self, traps: tuple[int, ...] = ()) -> None:
        """run_to_trap for a table of clones: through GDB's own `continue`, so that GDB
        follows them (its threads list holds the children; they run, each in a loop of the
        restorer, until GDB stops them with the thread that hit the trap)."""
        self._continue_to(traps)

    def run_threads_to_trap(self, tids: list[int], traps: tuple[int, ...] = ()) -> int:
        """Several threads' restorer tables in one resume, behind GDB's back as the steps
        are (a remote inferior: one `continue` per thread)."""
        if self._native_tid() is None:
            selected = gdb.selected_thread()
            for tid in tids:
                self.select_thread(tid)
                self._continue_to(traps)
            if selected is not None:
                selected.switch()
            return len(tids)
        native.run_threads_to_trap(tids)
        for tid in tids:
            regs = native.get_regs(tid)
            if regs["rip"] - 1 in traps:  # on the int3, as a debugger's breakpoint stop is
                native.set_regs(tid, {**regs, "rip": regs["rip"] - 1})
        self._stale = True
        return 1

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
        self._stale = False
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

    def before_changes(self, libraries_kept: bool = False) -> None:
        """libthread_db reads the process's libc data, which a restore replaces mid-way, and
        GDB then cannot step. Attach again without it (reload_process brings it back).
        Not needed where the image keeps libc and the dynamic linker where they are and
        every step goes behind GDB's back (a local inferior): GDB next looks at the threads
        once the restore is done, and libthread_db then finds the same library with its
        data whole again (a detach and attach costs 0.2-0.4 s)."""
        self._sync()
        self._changed = True
        self._vdso_before = _vdso(self.inferior.pid) if self.is_local() else None
        if libraries_kept and self._native_tid() is not None:
            return
        if self.is_local() and "Thread 0x" in gdb.execute("info threads", to_string=True):
            self._attach_again({"libthread-db-search-path": "/nonexistent"})

    def reload_process(self) -> None:
        """Make GDB read the restored process afresh: the executable loaded again (which
        drops the cached auxv), then the library search path set to what it is, which reruns
        GDB's solib start-up: the PIE from the new auxv, the dynamic linker's breakpoint, the
        libraries from the restored link map. GDB keeps the process as it had it (one it
        started is killed by `quit`, not detached). Only where the vDSO moved, which GDB
        reads once per process start, does it detach and attach again. After a dump whose
        steps all went behind GDB's back (registers put back), GDB's view is still right:
        only its caches are dropped (a detach would make a process GDB started an attached
        one, which `quit` detaches)."""
        if not self._changed and not self._gdb_resumed:
            self.memory_changed()
            return
        self._sync()
        pid = self.inferior.pid
        exe = self.exe_path if self.exe_path and os.path.exists(self.exe_path) else None
        if exe is not None:
            gdb.execute(f"file {gdb_quoted(exe)}", to_string=True)
        if self.is_local() and _vdso(pid) != self._vdso_before:
            linked = exe is not None and (os.path.realpath(f"/proc/{pid}/exe")
                                          == os.path.realpath(exe))
            # Where the kernel kept the old exe link, trust the file loaded above.
            self._attach_again({} if linked else {"exec-file-mismatch": "off"})
            return
        path = gdb.parameter("solib-search-path") or ""
        gdb.execute(f"set solib-search-path {path}", to_string=True)
        if self.is_local():
            gdb.execute("sharedlibrary", to_string=True)
        gdb.execute("maintenance flush register-cache", to_string=True)

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
