"""The core's Target interface over LLDB's SB API (lldb-server underneath, even locally)."""

from __future__ import annotations

import lldb

from binfmt_img.errors import RestoreError

_MASK = (1 << 64) - 1
# GDB's register names that LLDB spells differently.
_LLDB_NAMES = {"eflags": "rflags"}
# Registers some LLDBs do not expose; writes of them are dropped, the core works around them.
_OPTIONAL = ("orig_rax", "fs_base", "gs_base")
# -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK as rax holds them.
_RESTART_CODES = {(1 << 64) - n for n in (512, 513, 514)}
_RESTART_BLOCK = (1 << 64) - 516
_NR_RESTART_SYSCALL = 219
_STEPPED = (lldb.eStopReasonPlanComplete, lldb.eStopReasonTrace)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


class LldbTarget:
    # Names to pretend LLDB lacks (tests use it to exercise the arch_prctl fallback).
    hidden: tuple[str, ...] = ()
    # The first memory write after each stop makes lldb-server read /proc/PID/smaps (a region
    # query): the core writes its own scratch memory through /proc/PID/mem instead.
    prefers_proc_writes = True

    def __init__(self, process: lldb.SBProcess) -> None:
        self.process = process
        # The thread select_thread chose: LLDB moves its own selection to whichever thread it
        # finds most interesting after each stop.
        self.tid: int | None = None

    def pid(self) -> int | None:
        if not self.process.IsValid() or self.process.GetState() != lldb.eStateStopped:
            return None
        return self.process.GetProcessID() or None

    def is_local(self) -> bool:
        return self.process.GetTarget().GetPlatform().GetName() == "host"

    def _thread(self) -> lldb.SBThread:
        if self.tid is not None:
            thread = self.process.GetThreadByID(self.tid)
            if thread.IsValid():
                return thread
        thread = self.process.GetSelectedThread()
        return thread if thread.IsValid() else self.process.GetThreadAtIndex(0)

    def _frame(self) -> lldb.SBFrame:
        return self._thread().GetFrameAtIndex(0)

    def threads(self) -> list[int]:
        selected = self._thread().GetThreadID()
        tids = sorted(t.GetThreadID() for t in self.process)
        return [selected] + [tid for tid in tids if tid != selected]

    def select_thread(self, tid: int) -> None:
        if not self.process.SetSelectedThreadByID(tid):
            raise RestoreError(f"LLDB has no thread with tid {tid}")
        self.tid = tid

    def read_memory(self, addr: int, size: int) -> bytes:
        error = lldb.SBError()
        data = self.process.ReadMemory(addr, size, error) if size else b""
        if error.Fail() or len(data) != size:
            raise RestoreError(f"reading {size} bytes at {addr:#x}: {error.GetCString()}")
        return bytes(data)

    def write_memory(self, addr: int, data: bytes | memoryview) -> None:
        error = lldb.SBError()
        done = self.process.WriteMemory(addr, bytes(data), error) if len(data) else 0
        if error.Fail() or done != len(data):
            raise RestoreError(f"writing {len(data)} bytes at {addr:#x}: {error.GetCString()}")

    def _orig_rax(self) -> int | None:
        """LLDB has no orig_rax; for a stopped local task the kernel shows it as the first
        field of /proc/PID/task/TID/syscall ("-1" when not in a system call)."""
        pid = self.pid()
        if pid is None or not self.is_local():
            return None
        try:
            with open(f"/proc/{pid}/task/{self._thread().GetThreadID()}/syscall") as f:
                first = f.read().split()[0]
            return int(first) & _MASK
        except (OSError, IndexError, ValueError):
            return None  # "running", or no such file

    def read_registers(self, names: tuple[str, ...]) -> dict[str, int]:
        frame = self._frame()
        out = {}
        for name in names:
            if name in self.hidden:
                continue
            if name == "orig_rax":
                value = self._orig_rax()
                if value is not None:
                    out[name] = value
                continue
            register = frame.FindRegister(_LLDB_NAMES.get(name, name))
            if register.IsValid():
                out[name] = register.GetValueAsUnsigned() & _MASK
        return out

    def write_registers(self, values: dict[str, int]) -> None:
        values = self._emulate_restart(dict(values))
        frame = self._frame()
        for name, value in values.items():
            register = None if name in self.hidden else frame.FindRegister(
                _LLDB_NAMES.get(name, name))
            if register is None or not register.IsValid():
                if name in _OPTIONAL:
                    continue
                raise RestoreError(f"LLDB shows no register {name}")
            error = lldb.SBError()
            if not register.SetValueFromCString(f"{value & _MASK:#x}", error) or error.Fail():
                raise RestoreError(f"writing {name} = {value & _MASK:#x}: {error.GetCString()}")

    def _emulate_restart(self, values: dict[str, int]) -> dict[str, int]:
        """LLDB cannot write orig_rax, and the kernel only restarts an interrupted system call
        when orig_rax holds its number. Do what the kernel would do on resume (no handler):
        back rip up over the `syscall` and put the number (or restart_syscall) in rax."""
        orig = values.pop("orig_rax", None)
        rax = values.get("rax")
        if orig is None or rax is None or _signed(orig) < 0:
            return values
        if rax not in _RESTART_CODES and rax != _RESTART_BLOCK:
            return values
        rip = values.get("rip")
        if rip is None:
            rip = self.read_registers(("rip",))["rip"]
        values["rip"] = rip - 2
        values["rax"] = _NR_RESTART_SYSCALL if rax == _RESTART_BLOCK else orig
        return values

    def step_instruction(self) -> None:
        thread = self._thread()
        error = lldb.SBError()
        thread.StepInstruction(False, error)
        state = self.process.GetState()
        if error.Fail() or state != lldb.eStateStopped:
            detail = error.GetCString() or lldb.SBDebugger.StateAsCString(state)
            raise RestoreError(f"single-step failed: {detail}")
        if thread.GetStopReason() not in _STEPPED:
            raise RestoreError(f"single-step stopped for another reason: "
                               f"{thread.GetStopDescription(200)}")

    def run_to_trap(self, traps: tuple[int, ...] = ()) -> None:
        """Resume the selected thread alone until it stops (at one of the restorer's int3s
        `traps`, or for a signal: the core checks where). The commands run LLDB
        synchronously."""
        thread = self._thread()
        others = [t for t in self.process if t.GetThreadID() != thread.GetThreadID()]
        for other in others:  # only the restorer's thread runs
            other.Suspend()
        try:
            error = self.process.Continue()
        finally:
            for other in others:
                other.Resume()
        state = self.process.GetState()
        if error.Fail() or state != lldb.eStateStopped:
            detail = error.GetCString() or lldb.SBDebugger.StateAsCString(state)
            raise RestoreError(f"running the restorer failed: {detail}")

    def run_threads_to_trap(self, tids: list[int], traps: tuple[int, ...] = ()) -> int:
        """Resume the threads `tids` together (the others suspended) until each stopped at
        one of the restorer's int3s `traps`: LLDB stops the whole process at the first that
        does, so the ones still running are resumed again. Returns the resumes it took."""
        waiting, resumes = set(tids), 0
        at_trap = set(traps) | {t + 1 for t in traps}
        while waiting and resumes < len(tids) + 16:
            suspended = [t for t in self.process if t.GetThreadID() not in waiting]
            for thread in suspended:
                thread.Suspend()
            try:
                error = self.process.Continue()
                resumes += 1
            finally:
                for thread in suspended:
                    thread.Resume()
            state = self.process.GetState()
            if error.Fail() or state != lldb.eStateStopped:
                detail = error.GetCString() or lldb.SBDebugger.StateAsCString(state)
                raise RestoreError(f"running the restorer failed: {detail}")
            for thread in self.process:
                if thread.GetThreadID() not in waiting:  # unwinding each thread costs time
                    continue
                if (thread.GetStopReason() == lldb.eStopReasonSignal
                        or thread.GetFrameAtIndex(0).GetPC() in at_trap):
                    waiting.discard(thread.GetThreadID())
        return resumes

    def name_code(self, header: int) -> bool:
        """The injected code's ELF image at `header` (binfmt_img/live/codename.py) loaded as a
        module read from memory: at each stop LLDB unwinds frame 0, and a pc without a symbol
        makes it ask lldb-server for the memory region, which reads /proc/PID/smaps afresh
        (0.15 s with 30,000 VMAs)."""
        self.forget_code()
        module = lldb.SBModule(self.process, header)
        self._named = module if module.IsValid() else None
        return self._named is not None

    def forget_code(self) -> None:
        named, self._named = getattr(self, "_named", None), None
        if named is not None:
            self.process.GetTarget().RemoveModule(named)

    def memory_changed(self) -> None:
        """LLDB drops its memory cache at every stop, but SBValue register writes leave the
        thread's unwound frames in place; a register write through the command interpreter
        tosses them, and no SB call does."""
        interpreter = self.process.GetTarget().GetDebugger().GetCommandInterpreter()
        for thread in self.process:  # each thread's frames, in case its registers changed
            frame = thread.GetFrameAtIndex(0)
            rip = frame.FindRegister("rip").GetValueAsUnsigned()
            # An explicit context: inside a command that launched this process, the
            # interpreter's own context predates it.
            context = lldb.SBExecutionContext(frame)
            result = lldb.SBCommandReturnObject()
            interpreter.HandleCommand(f"register write rip {rip:#x}", context, result, False)
            if not result.Succeeded():
                raise RestoreError(f"refreshing LLDB's frames: {result.GetError().strip()}")
