"""Runs system calls and a few instructions inside the inferior, one single-step each."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import USER_TOP
from binfmt_img.live import codename, restorer
from binfmt_img.live import syscalls as sc
from binfmt_img.live.procfs import ProcMem
from binfmt_img.live.target import Target

SCRATCH_SIZE = 0x10000  # code on the first page, data on the rest
SYSCALL = b"\x0f\x05"
CODE = SYSCALL + b"\xcc" * 2  # syscall at +0; the int3s are never reached
XRSTOR64_RDI = b"\x48\x0f\xae\x2f"  # xrstor64 [rdi], features in edx:eax
XSAVE64_RDI = b"\x48\x0f\xae\x27"  # xsave64 [rdi]
SPIN = b"\xeb\xfe"  # jmp . : holds the inferior still while no debugger is attached
XRSTOR_AT, XSAVE_AT = 8, 16
CLONE_AT = 32  # `syscall; jmp .`: a clone made by single steps leaves its child waiting here
CHILD_STACK_AT = 0xF00  # a new thread's rsp until it gets its registers; it never pushes
DATA_AT = 0x1000
RESTORER_AT = 0x100  # the restorer program (binfmt_img/live/restorer.py), in the code page
# An ELF image naming the code before it (binfmt_img/live/codename.py), for a debugger that
# wants a symbol at every pc it stops at.
NAME_AT = 0x400
# Zeros: rsp and rbp while named code runs, so that a debugger unwinding the thread finds a
# return address of 0 (the end of the stack) instead of asking about a stranger address.
FRAME_AT = 0xE00
# A batch too large for the data pages goes to the table area, mapped on first use this far
# from the scratch area's start (past the restore's vDSO parking place), TABLE_ROOM long.
TABLE_GAP, TABLE_ROOM = 0x100000, 0x4000000
RESERVED = TABLE_GAP + TABLE_ROOM  # the address range an Injector may use from its scratch
MAP_NORESERVE = 0x4000
ARG_REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
# Registers an injected step may change; saved before and put back after a dump.
SAVED_REGISTERS = ("rip", "rax", "rdi", "rsi", "rdx", "r10", "r8", "r9", "rcx", "r11",
                   "rbx", "r12", "r13", "r14", "rsp", "rbp", "eflags", "orig_rax")


ENOSYS = (1 << 64) - 38


def check_not_in_syscall_entry(target: Target) -> None:
    """At a system call's entry stop (`catch syscall`), the kernel runs the pending call with
    whatever registers the next resume finds: an injected call would be lost and the
    program's own call run with our arguments. Refuse before any change."""
    regs = target.read_registers(("rax", "orig_rax"))
    if regs.get("rax") == ENOSYS and regs.get("orig_rax", -1) not in (-1, (1 << 64) - 1):
        raise RestoreError(f"the inferior is stopped at the entry of system call "
                           f"{regs['orig_rax']} (catch syscall): `stepi` or `continue` to "
                           "its return first")


def free_area(taken: list[tuple[int, int]], size: int) -> int:
    """An address range of `size` bytes clear of every range in `taken`, for the scratch
    area: tried at 256 MiB steps from 256 MiB up."""
    step = 0x10000000
    for candidate in range(step, USER_TOP - size, step):
        if not any(candidate < end and start < candidate + size for start, end in taken):
            return candidate
    raise RestoreError("no free address range for the scratch area")


def _unsigned(value: int) -> int:
    return value & 0xFFFFFFFFFFFFFFFF


def checked(nr: int, result: int, step: str, address: int | None = None) -> int:
    """A system call's result, or the RestoreError naming the step, address and errno."""
    if sc.is_error(result):
        where = f" at {address:#x}" if address is not None else ""
        raise RestoreError(f"{step}{where}: {sc.NAMES.get(nr, nr)} failed: "
                           f"{sc.errno_text(result)}")
    return result


class Injector:
    """Executes system calls in the inferior from a scratch area that the image does not use."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.scratch: int | None = None
        self._data_used = 0
        self._table_mapped = False
        self._whole = False  # the table area mapped with the scratch area, as one
        self._batch: Batch | None = None
        self._frame: dict[str, int] = {}  # rsp and rbp for named code (FRAME_AT)

    def open_scratch(self, address: int, code: int | None = None, whole: bool = False) -> None:
        """Map the scratch area, borrowing two bytes of mapped code for that one syscall: at
        `code` when given (rip may point nowhere), else at the current rip. `whole`: the
        table area too, in the same mapping from `address` to RESERVED past it (a dump,
        whose threads' tables take it whatever their number: no stop to map it later)."""
        rip = code if code is not None else self.target.read_registers(("rip",))["rip"]
        saved = self.target.read_memory(rip, len(SYSCALL))
        write = _borrowing_writer(self.target, rip, saved)
        write(rip, SYSCALL)
        try:
            result = self._run(rip, sc.MMAP, address, RESERVED if whole else SCRATCH_SIZE, 7,
                               0x22 | sc.MAP_FIXED_NOREPLACE | (MAP_NORESERVE * whole), -1, 0)
        finally:
            write(rip, saved)
        if sc.is_error(result) or result != address:
            detail = sc.errno_text(result) if sc.is_error(result) else f"got {result:#x}"
            raise RestoreError(f"mapping the scratch area at {address:#x} failed: {detail}")
        self.scratch = address
        self._table_mapped = self._whole = whole
        code = CODE.ljust(XRSTOR_AT, b"\xcc") + XRSTOR64_RDI.ljust(8, b"\xcc") + XSAVE64_RDI
        code = code.ljust(CLONE_AT, b"\xcc") + SYSCALL + SPIN
        code = (code + b"\xcc" * 4).ljust(RESTORER_AT, b"\xcc") + restorer.CODE
        name_code = getattr(self.target, "name_code", None)
        if name_code is not None:
            code = code.ljust(NAME_AT, b"\xcc") + codename.image(address + NAME_AT, address,
                                                                 NAME_AT)
        write_bulk(self.target, address, code)
        if name_code is not None and name_code(address + NAME_AT):
            self._frame = {"rsp": address + FRAME_AT, "rbp": address + FRAME_AT}

    def close_scratch(self) -> None:
        """Unmap the scratch area; the single-step stops before the next fetch from it."""
        assert self.scratch is not None
        if self._table_mapped and not self._whole:
            self.raw(sc.MUNMAP, self.scratch + TABLE_GAP, TABLE_ROOM)
        size = RESERVED if self._whole else SCRATCH_SIZE
        self._table_mapped = self._whole = False
        self.call(sc.MUNMAP, self.scratch, size, step="unmapping the scratch area")
        self.scratch = None
        self._frame = {}
        forget_code = getattr(self.target, "forget_code", None)
        if forget_code is not None:  # after the step: its stop is still in named code
            forget_code()

    def _run(self, at: int, nr: int, *args: int) -> int:
        regs = {"rip": at, "rax": nr, **self._frame}
        regs.update({name: _unsigned(value) for name, value in zip(ARG_REGISTERS, args)})
        self.target.write_registers(regs)
        self.target.step_instruction()
        after = self.target.read_registers(("rax", "rip"))
        if after.get("rip", at + len(SYSCALL)) != at + len(SYSCALL):
            # A signal the thread does not block was delivered by that step (the debugger
            # passed it on): its handler or restart moved rip, and the call did not happen.
            raise RestoreError(f"system call {sc.NAMES.get(nr, nr)}: a signal arrived during "
                               f"the injected step (rip {after['rip']:#x}, not "
                               f"{at + len(SYSCALL):#x})")
        return after["rax"]

    def raw(self, nr: int, *args: int) -> int:
        """One system call; returns rax as the kernel left it (an error is -errno)."""
        assert self.scratch is not None, "no scratch area"
        return self._run(self.scratch, nr, *args)

    def call(self, nr: int, *args: int, step: str, address: int | None = None) -> int:
        """One system call that must succeed; a failure names the step, address and errno."""
        return checked(nr, self.raw(nr, *args), step, address)

    def call_at(self, at: int, nr: int, *args: int, step: str) -> int:
        """Like call, from a `syscall` instruction of the caller's own at `at` (clone needs
        one followed by a loop for the new thread)."""
        result = self._run(at, nr, *args)
        if sc.is_error(result):
            raise RestoreError(f"{step}: {sc.NAMES.get(nr, nr)} failed: {sc.errno_text(result)}")
        return result

    # Data passed by pointer lives in the scratch area's data pages.
    def reset_data(self) -> None:
        self._data_used = 0

    def put(self, data: bytes, align: int = 16) -> int:
        assert self.scratch is not None
        at = -(-self._data_used // align) * align
        if DATA_AT + at + len(data) > SCRATCH_SIZE:
            self._data_used = at = 0
        write_bulk(self.target, self.scratch + DATA_AT + at, data)
        self._data_used = at + len(data)
        return self.scratch + DATA_AT + at

    def reserve(self, size: int, align: int = 16) -> int:
        return self.put(bytes(size), align)

    def put_string(self, text: str) -> int:
        return self.put(text.encode() + b"\0", 1)

    def xrstor(self, area: bytes, features: int) -> None:
        self._xstate(XRSTOR_AT, self.put(area, 64), features)

    def xsave(self, size: int, features: int) -> bytes:
        addr = self.reserve(size, 64)
        self._xstate(XSAVE_AT, addr, features)
        return self.target.read_memory(addr, size)


    def _xstate(self, at: int, area: int, features: int) -> None:
        """One xsave64/xrstor64 on the 64-byte aligned `area`, features in edx:eax."""
        assert self.scratch is not None
        self.target.write_registers({"rip": self.scratch + at, "rdi": area,
                                     "rax": features & 0xFFFFFFFF, "rdx": features >> 32,
                                     **self._frame})
        self.target.step_instruction()


    # ---- batches: many system calls in one resume (binfmt_img/live/restorer.py) ----
    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Calls queued in the block run together when it ends (not when it raises). Inside
        the block, current_batch() is this batch: a step that can join it does."""
        batch = Batch(self)
        outer, self._batch = self._batch, batch
        try:
            yield batch
        finally:
            self._batch = outer
        batch.run()

    def current_batch(self) -> Batch | None:
        return self._batch

    @contextmanager
    def joined_batch(self) -> Iterator[Batch]:
        """The batch being built when there is one (its calls then run when it ends, after
        what was queued before), else a batch of the block's own."""
        if self._batch is not None:
            yield self._batch
            return
        with self.batch() as batch:
            yield batch

    def _table_area(self, size: int) -> int:
        assert self.scratch is not None
        if size > TABLE_ROOM:
            raise RestoreError(f"a batch of {size} bytes of system calls: more than the "
                               f"{TABLE_ROOM >> 20} MiB table area")
        at = self.scratch + TABLE_GAP
        if not self._table_mapped:
            self.call(sc.MMAP, at, TABLE_ROOM, 3, 0x22 | MAP_NORESERVE | sc.MAP_FIXED_NOREPLACE,
                      -1, 0, step="mapping the restorer's table area", address=at)
            self._table_mapped = True
        return at

    def run_table(self, layout: restorer.Layout, entries: list[Entry],
                  spawns: bool = False) -> list[int]:
        """Run the entries written at `layout`; their results, up to the first failure.
        `spawns`: the table makes threads (the debugger must follow the clones)."""
        assert self.scratch is not None
        run_to_trap = getattr(self.target, "run_to_trap", None)
        if spawns:
            run_to_trap = getattr(self.target, "run_to_trap_spawning", run_to_trap)
        if run_to_trap is None:
            return self._step_table(layout, entries)
        self._start_table(layout, len(entries))
        run_to_trap(self.traps())
        return self._table_results(layout, len(entries))

    def run_tables(self, runs: list[tuple[int, restorer.Layout, list[Entry]]]) -> list[list[int]]:
        """Each (tid, layout, entries): thread tid runs its own table, written at layout, all
        of them in one resume where the target can (run_threads_to_trap), else one after the
        other. Their results, in order; the first thread is selected afterwards."""
        select = self.target.select_thread
        run_all = getattr(self.target, "run_threads_to_trap", None)
        run_one = getattr(self.target, "run_to_trap", None)
        if run_one is None:  # single steps, thread by thread
            out = []
            for tid, layout, entries in runs:
                select(tid)
                out.append(self._step_table(layout, entries))
            select(runs[0][0])
            return out
        for tid, layout, entries in runs:
            select(tid)
            self._start_table(layout, len(entries))
        if run_all is not None:
            run_all([tid for tid, _, _ in runs], self.traps())
        else:
            for tid, _, _ in runs:
                select(tid)
                run_one(self.traps())
        out = []
        for tid, layout, entries in runs:
            select(tid)
            out.append(self._table_results(layout, len(entries)))
        select(runs[0][0])
        return out

    def traps(self) -> tuple[int, int]:
        """The restorer's two int3s (failed, end)."""
        assert self.scratch is not None
        code = self.scratch + RESTORER_AT
        return code + restorer.FAILED - 1, code + restorer.END - 1

    def _start_table(self, layout: restorer.Layout, count: int) -> None:
        assert self.scratch is not None
        # rax 0: a thread stopped inside an interrupted system call (LLDB cannot write
        # orig_rax) would otherwise have the kernel restart it, moving rip back 2 bytes.
        self.target.write_registers({"rip": self.scratch + RESTORER_AT, "rbx": layout.table,
                                     "r12": count, "r14": layout.results, "rax": 0,
                                     **self._frame})

    def _table_results(self, layout: restorer.Layout, count: int) -> list[int]:
        """The results of the table run by the selected thread, which stopped: up to the
        failed entry, or all."""
        failed, end = (trap + 1 for trap in self.traps())
        after = self.target.read_registers(("rip", "r13"))
        rip = after.get("rip", 0)
        if rip in (end, end - 1):  # after the int3, or on it (a debugger's breakpoint)
            ran = count
        elif rip in (failed, failed - 1):
            ran = after["r13"] + 1
        else:
            raise RestoreError(f"the restorer stopped at rip {rip:#x}, not at its end "
                               f"({end:#x}): a signal arrived")
        data = self.target.read_memory(layout.results, 8 * ran)
        return list(struct.unpack(f"<{ran}Q", data))

    def _step_table(self, layout: restorer.Layout, entries: list[Entry]) -> list[int]:
        """The same, one single-step per entry (a Target without run_to_trap)."""
        results: list[int] = []
        for entry in entries:
            args = []
            for arg in entry.args:
                imm, ref = layout.resolve(arg)
                add = results[(ref - layout.results) // 8] if ref != layout.zero else 0
                args.append((imm + add) & restorer.MASK)
            if entry.nr == restorer.XRSTOR:
                self._xstate(XRSTOR_AT, args[0], args[1] & 0xFFFFFFFF | args[2] << 32)
                results.append(0)
                continue
            if entry.nr == restorer.XSAVE:
                self._xstate(XSAVE_AT, args[0], args[1] & 0xFFFFFFFF | args[2] << 32)
                results.append(0)
                continue
            if entry.nr == restorer.STORE:
                self.target.write_memory(args[1], struct.pack("<Q", args[0]))
                results.append(0)
                continue
            if entry.spin:  # from the clone code, whose child then waits in a loop
                results.append(self._run(self.scratch + CLONE_AT, entry.nr, *args))
            else:
                results.append(self.raw(entry.nr, *args))
            if sc.is_error(results[-1]) and not entry.may_fail:
                break
        return results


class Entry:
    __slots__ = ("nr", "args", "may_fail", "step", "address", "spin")

    def __init__(self, nr: int, args: tuple[int | restorer.Ref, ...], may_fail: bool,
                 step: str, address: int | None, spin: bool = False) -> None:
        self.nr, self.args, self.may_fail = nr, args, may_fail
        self.step, self.address, self.spin = step, address, spin

    @property
    def flags(self) -> int:
        return (restorer.MAY_FAIL if self.may_fail else 0) | (
            restorer.SPIN_CHILD if self.spin else 0)


class Batch:
    """System calls queued to run in one resume. call() and raw() return a Ref to the result
    (an argument of later calls; Ref + n adds n), put() a Ref to data placed with the table.
    After the run, value(ref) is the number and read(ref, n) the bytes."""

    def __init__(self, injector: Injector) -> None:
        self.injector = injector
        self.entries: list[Entry] = []
        self.data = bytearray()
        self.results: list[int] | None = None
        self.layout: restorer.Layout | None = None
        self._after: list[Callable[[], None]] = []
        self.spawns = False  # holds clones: the debugger must see the new threads come

    def __len__(self) -> int:
        return len(self.entries)

    def call(self, nr: int, *args: int | restorer.Ref, step: str,
             address: int | None = None) -> restorer.Ref:
        """A call that must succeed: a failure stops the batch and raises, as Injector.call."""
        self.entries.append(Entry(nr, args, False, step, address))
        return restorer.Ref("result", len(self.entries) - 1)

    def raw(self, nr: int, *args: int | restorer.Ref) -> restorer.Ref:
        """A call that may fail (value() is then -errno as rax holds it)."""
        self.entries.append(Entry(nr, args, True, "", None))
        return restorer.Ref("result", len(self.entries) - 1)

    def xrstor(self, area: bytes, features: int) -> None:
        """The FPU and vector registers from an xsave area (restorer.XRSTOR)."""
        self.entries.append(Entry(restorer.XRSTOR, (self.put(area, 64), features & 0xFFFFFFFF,
                                                    features >> 32), False, "xrstor", None))

    def xsave(self, size: int, features: int) -> restorer.Ref:
        """An xsave area of `size` bytes filled when the table runs (restorer.XSAVE)."""
        area = self.reserve(size, 64)
        self.entries.append(Entry(restorer.XSAVE, (area, features & 0xFFFFFFFF, features >> 32),
                                  False, "xsave", None))
        return area

    def store(self, value: int | restorer.Ref, address: restorer.Ref) -> None:
        """qword [address] = value when the table runs (restorer.STORE): a result into data."""
        self.entries.append(Entry(restorer.STORE, (value, address), False, "storing", None))

    def clone(self, *args: int, step: str) -> restorer.Ref:
        """clone(2) whose child waits at the restorer's SPIN (a thread to be given its state
        and registers later); the result is the child's tid."""
        self.entries.append(Entry(sc.CLONE, args, False, step, None, spin=True))
        self.spawns = True
        return restorer.Ref("result", len(self.entries) - 1)

    def put(self, data: bytes, align: int = 16) -> restorer.Ref:
        at = -(-len(self.data) // align) * align
        self.data += bytes(at - len(self.data)) + data
        return restorer.Ref("data", at)

    def reserve(self, size: int, align: int = 16) -> restorer.Ref:
        return self.put(bytes(size), align)

    def put_string(self, text: str) -> restorer.Ref:
        return self.put(text.encode() + b"\0", 1)

    def after(self, action: Callable[[], None]) -> None:
        """action() once the batch has run (its results known): a step's checks and
        warnings, when the step was queued into a larger batch."""
        self._after.append(action)

    def run(self) -> None:
        self._run()
        for action in self._after:
            action()

    def _run(self) -> None:
        inj = self.injector
        assert inj.scratch is not None and self.results is None
        if not self.entries:
            self.results = []
            return
        size = self.size()
        base = inj.scratch + DATA_AT if DATA_AT + size <= SCRATCH_SIZE \
            else inj._table_area(size)
        layout = self.place(base)
        inj._data_used = 0  # the data pages may hold the table now
        self.finish(inj.run_table(layout, self.entries, self.spawns))

    def size(self) -> int:
        """The bytes place() needs, with room to align the base."""
        return restorer.Layout(0, len(self.entries), len(self.data) + 64).size + 64

    def place(self, base: int) -> restorer.Layout:
        """Write the table at `base` (rounded up to 64: aligned puts stay aligned in memory,
        as xsave needs)."""
        base = -(-base // 64) * 64
        layout = self.layout = restorer.Layout(base, len(self.entries), len(self.data))
        write_bulk(self.injector.target, base, restorer.build(
            layout, [(e.nr, e.args, e.flags) for e in self.entries], bytes(self.data)))
        return layout

    def complete(self, results: list[int]) -> None:
        """finish(results), then what after() asked for."""
        self.finish(results)
        for action in self._after:
            action()

    def finish(self, results: list[int]) -> None:
        """Take the run's results: the first failing call raises, naming its step."""
        self.results = results
        if len(self.results) < len(self.entries) or (
                self.results and sc.is_error(self.results[-1])
                and not self.entries[len(self.results) - 1].may_fail):
            index = len(self.results) - 1
            entry, result = self.entries[index], self.results[index]
            where = f" at {entry.address:#x}" if entry.address is not None else ""
            raise RestoreError(f"{entry.step}{where}: {sc.NAMES.get(entry.nr, entry.nr)} "
                               f"failed: {sc.errno_text(result)}")

    def value(self, ref: restorer.Ref) -> int:
        assert self.results is not None and self.layout is not None
        if ref.kind == "data":
            return self.layout.data + ref.at + ref.add
        return (self.results[ref.at] + ref.add) & restorer.MASK

    def read(self, ref: restorer.Ref, size: int) -> bytes:
        return self.injector.target.read_memory(self.value(ref), size)


BULK = 1 << 16  # bytes from which a local inferior's memory is written through /proc


def write_bulk(target: Target, addr: int, data: bytes) -> None:
    """A write into memory no debugger breakpoint is in (the Injector's scratch and table
    areas; the restored process's memory, its breakpoints lifted meanwhile), through
    /proc/PID/mem for a local inferior when it is large (a restorer table of thousands of
    entries: LLDB sends it as hex in 64 KiB packets, each preceded by a memory region query)
    or when the debugger's every write costs one (Target.prefers_proc_writes: lldb-server
    reads smaps for the first after each stop). The debugger reads what the inferior made of
    it only after the next stop, its caches dropped."""
    large = len(data) >= BULK or getattr(target, "prefers_proc_writes", False)
    pid = target.pid() if large and target.is_local() else None
    if pid is not None:
        try:
            mem = ProcMem(pid, writable=True)
        except OSError:
            pass  # the debugger's own way says what is wrong
        else:
            try:
                mem.write(addr, data)
                return
            except OSError:
                pass
            finally:
                mem.close()
    target.write_memory(addr, data)


def _borrowing_writer(target: Target, addr: int,
                      shown: bytes) -> Callable[[int, bytes], None]:
    """How to write the program's bytes at `addr` that the scratch area's first syscall
    borrows: through /proc/PID/mem where the debugger prefers it (Target.prefers_proc_writes)
    and no breakpoint trap of its is there (the raw bytes are the ones it shows: it would put
    its own saved bytes back over ours when stepping off a trap), else through the debugger.
    A stop follows each write, which drops what the debugger cached of the old bytes."""
    pid = target.pid() if getattr(target, "prefers_proc_writes", False) and \
        target.is_local() else None
    if pid is None:
        return target.write_memory
    try:
        mem = ProcMem(pid, writable=True)
    except OSError:
        return target.write_memory
    try:
        raw = mem.read(addr, len(shown))
    except OSError:
        raw = b""
    finally:
        mem.close()
    if raw != shown:
        return target.write_memory

    def write(at: int, data: bytes) -> None:
        proc = ProcMem(pid, writable=True)
        try:
            proc.write(at, data)
        finally:
            proc.close()
    return write


def pack_u64(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *(_unsigned(v) for v in values))
