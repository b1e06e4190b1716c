"""The last stop of a restore: through the dynamic linker's link-map hook.

LLDB's dynamic loader plugin (DynamicLoaderPOSIXDYLD) learns each module's link_map entry,
which `__thread` variables need (the module's TLS id and the thread's dtv), only when its
breakpoint on the linker's r_debug.r_brk hook is hit; the module list rebuilt by
sync_modules does not give it them. So the restored thread runs one `ret` into r_brk (LLDB's
callback reads the restored link map). No code is written: return addresses are placed below
the red zone of the thread's stack, the bytes there put back afterwards. The stop is then
LLDB's link-map stop (or the user's breakpoint at the checkpoint, as at a live stop) rather
than "instruction step into" of the restore's last single-step; a temporary breakpoint would
take the number the user's next breakpoint gets in a live session.
"""

from __future__ import annotations

import struct

import lldb

from binfmt_img.formats.model import PAGE_SIZE, PROT_EXEC, Image
from binfmt_img.live.procfs import ProcMem, read_auxv
from lldb_img.modules import AT_BASE, _Memory, _r_debug
from lldb_img.target import LldbTarget

RET = 0xC3
BELOW = 512  # bytes below rsp: past the 128-byte red zone and what a signal frame would not use


def _auxv(process: lldb.SBProcess, image: Image) -> dict[int, int]:
    try:
        return dict(image.auxv or read_auxv(process.GetProcessID()))
    except OSError:
        return {}


def _r_brk(process: lldb.SBProcess, image: Image) -> int | None:
    """The linker's hook from the restored r_debug; None for a static executable."""
    memory = _Memory(process)
    r_debug = _r_debug(memory, _auxv(process, image))
    brk = memory.u64s(r_debug + 16, 1) if r_debug else None  # r_version, r_map, r_brk
    return brk[0] if brk and brk[0] else None


def _user_sites(target: lldb.SBTarget) -> set[int]:
    return {location.GetLoadAddress() for b in target.breakpoint_iter() if b.IsEnabled()
            for location in b if location.IsEnabled()}


def _ret_byte(process: lldb.SBProcess, image: Image, avoid: set[int]) -> int | None:
    """An address holding a 0xc3 byte in an executable mapping (the dynamic linker's first):
    jumping there runs `ret`, whatever instruction the byte belongs to."""
    at_base = _auxv(process, image).get(AT_BASE, 0)
    vmas = sorted((v for v in image.vmas if v.prot & PROT_EXEC and v.name != "[vdso]"),
                  key=lambda v: (not (at_base <= v.start < at_base + (1 << 22)), v.start))
    for vma in vmas:
        for page in range(vma.start, min(vma.end, vma.start + 16 * PAGE_SIZE), PAGE_SIZE):
            error = lldb.SBError()
            data = process.ReadMemory(page, PAGE_SIZE, error)
            if error.Fail() or not data:
                continue
            for offset, byte in enumerate(data):
                if byte == RET and page + offset not in avoid:
                    return page + offset
    return None


def _register(thread: lldb.SBThread, name: str) -> lldb.SBValue:
    return thread.GetFrameAtIndex(0).FindRegister(name)


def _set(thread: lldb.SBThread, name: str, value: int) -> bool:
    error = lldb.SBError()
    return _register(thread, name).SetValueFromCString(f"{value:#x}", error) and error.Success()


_SETTING = "target.process.stop-on-sharedlibrary-events"


def _setting(debugger: lldb.SBDebugger, value: str | None = None) -> str:
    """Read, or set, LLDB's stop at each link-map event (through the interpreter: the
    setting is the process's)."""
    result = lldb.SBCommandReturnObject()
    command = f"settings set {_SETTING} {value}" if value else f"settings show {_SETTING}"
    debugger.GetCommandInterpreter().HandleCommand(command, result)
    return (result.GetOutput() or "").rsplit("=", 1)[-1].strip()


def _run_alone(process: lldb.SBProcess, thread: lldb.SBThread) -> None:
    """Resume only `thread` until the process stops again."""
    others = [t for t in process if t.GetThreadID() != thread.GetThreadID()
              and not t.IsSuspended()]
    try:
        for other in others:
            other.Suspend()
        process.Continue()
    finally:
        for other in others:
            other.Resume()


def _write_before_run(process: lldb.SBProcess, address: int, data: bytes) -> bool:
    """Stack bytes written for the run: through /proc/PID/mem for a local process, as the
    restore's own writes are (LLDB's first write after a stop makes lldb-server read the
    process's smaps; the run's stop drops what LLDB cached of the old bytes). Putting them
    back after the run goes through LLDB, whose cache then holds the stack."""
    target = LldbTarget(process)
    pid = target.pid()
    if pid is not None and target.is_local():
        try:
            mem = ProcMem(pid, writable=True)
        except OSError:
            pass
        else:
            try:
                mem.write(address, data)
                return True
            except OSError:
                pass
            finally:
                mem.close()
    error = lldb.SBError()
    return process.WriteMemory(address, data, error) == len(data) and error.Success()


def stop_at_checkpoint(process: lldb.SBProcess, image: Image) -> str | None:
    """Run the selected thread through r_brk (LLDB's dynamic loader reads the restored link
    map) and back to the checkpoint. With the user's breakpoint at the checkpoint it returns
    there and stops at it, as at a live stop; else LLDB stops at r_brk as after a link-map
    event and the registers are put back. Returns a warning when it could not be done."""
    target = process.GetTarget()
    debugger = target.GetDebugger()
    thread = process.GetSelectedThread()
    rip = _register(thread, "rip").GetValueAsUnsigned()
    rsp = _register(thread, "rsp").GetValueAsUnsigned()
    brk = _r_brk(process, image)
    users = _user_sites(target)
    if brk is None:  # a static executable: LLDB reads no __thread variables live either
        return None
    ret = _ret_byte(process, image, users | {rip, brk})
    sp = (rsp - BELOW) & ~15
    if ret is None or not any(v.start <= sp and sp + 16 <= v.end for v in image.vmas):
        return "no `ret` byte or stack room found: LLDB cannot read __thread variables"
    error = lldb.SBError()
    saved = process.ReadMemory(sp, 16, error)
    if error.Fail():
        return f"reading the stack at {sp:#x}: {error.GetCString()}"
    at_user_breakpoint = rip in users
    if not _write_before_run(process, sp, struct.pack("<QQ", brk, rip)) \
            or not _set(thread, "rsp", sp) or not _set(thread, "rip", ret):
        _set(thread, "rsp", rsp)
        _set(thread, "rip", rip)
        return "cannot set the thread up to run through r_brk"
    before = _setting(debugger)
    if not at_user_breakpoint:
        _setting(debugger, "true")
    try:
        _run_alone(process, thread)
    finally:
        if not at_user_breakpoint:
            _setting(debugger, before or "false")
    if process.GetState() != lldb.eStateStopped:
        return "the process did not stop again after r_brk"
    pc = _register(thread, "rip").GetValueAsUnsigned()
    if pc not in (rip, brk):
        return f"the run through r_brk stopped at {pc:#x}"
    _set(thread, "rip", rip)
    _set(thread, "rsp", rsp)
    process.WriteMemory(sp, saved, error)
    return None
