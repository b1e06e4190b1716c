"""The small interface a debugger front end implements so the core can restore and dump."""

from __future__ import annotations

from typing import Protocol


class Target(Protocol):
    """A stopped x86-64 Linux inferior as seen through one debugger."""

    def pid(self) -> int | None:
        """The process id, or None when the debugger has no live process."""

    def is_local(self) -> bool:
        """True when the inferior runs on this machine, so /proc/PID is its own."""

    def read_memory(self, addr: int, size: int) -> bytes: ...

    def write_memory(self, addr: int, data: bytes | memoryview) -> None: ...

    def read_registers(self, names: tuple[str, ...]) -> dict[str, int]:
        """Registers by GDB's names; names the debugger does not expose are left out."""

    def write_registers(self, values: dict[str, int]) -> None:
        """Write in the order given (writing rip may reset orig_rax, so order matters)."""

    def step_instruction(self) -> None:
        """Execute exactly one instruction of the selected thread and stop again; the other
        threads stay stopped meanwhile."""

    def threads(self) -> list[int]:
        """Optional (without it: one thread). The thread ids (LWPs) of the inferior, the
        selected thread first; a thread created by an injected clone is listed once the
        single-step that created it has returned."""

    def select_thread(self, tid: int) -> None:
        """Optional. Make register reads and writes and single-steps apply to thread `tid`."""

    def read_proc(self, name: str) -> bytes:
        """Optional. /proc/PID/NAME of a remote inferior, fetched by the debugger."""

    def ptrace_available(self) -> bool:
        """Optional (without it: False). True when ptrace(2) called from this Python
        process reaches the inferior's threads (this process is their tracer)."""

    def steps_over_signal_handler(self, number: int) -> bool:
        """Optional (without it: False). True when signal `number`, delivered during
        step_instruction, reaches the program (its handler runs) and the step still ends
        after the instruction, without stopping."""

    def before_changes(self, libraries_kept: bool = False) -> None:
        """Optional. Called once all checks passed, just before the first change.
        `libraries_kept`: the image maps the live process's thread library (libc, the
        dynamic linker) just where it is and brings back one thread (live/samelibs.py)."""

    def reload_process(self) -> None:
        """Optional. Make the debugger read the process afresh (exe link, auxv, libraries),
        e.g. by detaching and attaching again; the inferior spins on a loop meanwhile."""

    def memory_changed(self) -> None:
        """The address space was changed behind the debugger: drop its caches."""

    def name_code(self, header: int) -> bool:
        """Optional. The Injector's code is named by the ELF image at `header` in the
        inferior (binfmt_img/live/codename.py): a debugger that asks the inferior's memory map
        at each stop whose pc has no symbol (LLDB) loads it as a module. True when it did
        (the injected code then runs with rsp and rbp on zeros: the unwind ends there)."""

    def forget_code(self) -> None:
        """Optional, with name_code: the named code is gone (drop the module)."""

    # Optional attribute prefers_proc_writes (bool): each memory write through the debugger
    # costs more than one through /proc/PID/mem (LLDB: a memory region query that makes
    # lldb-server read /proc/PID/smaps), so the core writes memory it owns through /proc.

    def run_to_trap(self, traps: tuple[int, ...] = ()) -> None:
        """Optional (without it: every batched system call is its own single-step). Resume
        the selected thread alone, the others staying stopped, until it stops again: at one
        of the int3s at `traps` (binfmt_img/live/restorer.py; rip then either on it or after it),
        or for a signal."""


    def run_to_trap_spawning(self, traps: tuple[int, ...] = ()) -> None:
        """Optional (without it: run_to_trap). run_to_trap for a table that makes threads
        with clone: the debugger must follow the clones (their children, held in a loop of
        the restorer, become threads it lists)."""

    def run_threads_to_trap(self, tids: list[int], traps: tuple[int, ...] = ()) -> int:
        """Optional (without it: run_to_trap for each thread in turn). Resume the threads
        `tids` together, the others staying stopped, until each has stopped at one of the
        int3s `traps` (or for a signal); returns the number of resumes it took."""

    def resume_to_trap(self, traps: tuple[int, ...] = ()) -> bool:
        """Optional, with await_trap (binfmt_img/live/pagefast.py). Resume the selected
        thread alone, every signal held back, and return at once, the thread running
        meanwhile (its table populates memory while the caller writes pages); False when the
        target cannot (nothing was done)."""

    def await_trap(self, traps: tuple[int, ...] = ()) -> None:
        """After resume_to_trap: wait until the thread stops at one of `traps` (rip then on
        the int3) or for a fault, its signal mask as before."""


# Every stop any CountingTarget asked for in this process (scripts/bench reads it from LLDB,
# whose commands keep no report).
TOTAL = {"stops": 0}


class CountingTarget:
    """A Target that counts the debugger stops it asks for (single-steps and runs to a trap),
    passing everything else through: the figure scripts/bench prints."""

    def __init__(self, target: Target) -> None:
        self.inner = target
        self.stops = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def step_instruction(self) -> None:
        self.stops += 1
        TOTAL["stops"] += 1
        self.inner.step_instruction()

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self.inner)) | {"stops", "inner"})


def counting(target: Target) -> CountingTarget:
    """target wrapped in a CountingTarget; run_to_trap only when the target has it, so that
    getattr(counted, "run_to_trap", None) tells as for the target itself."""
    counted = CountingTarget(target)
    inner_run = getattr(target, "run_to_trap", None)
    if inner_run is not None:
        def run_to_trap(traps: tuple[int, ...] = ()) -> None:
            counted.stops += 1
            TOTAL["stops"] += 1
            inner_run(traps)
        counted.run_to_trap = run_to_trap  # type: ignore[attr-defined]
    inner_spawning = getattr(target, "run_to_trap_spawning", None)
    if inner_spawning is not None:
        def run_to_trap_spawning(traps: tuple[int, ...] = ()) -> None:
            counted.stops += 1
            TOTAL["stops"] += 1
            inner_spawning(traps)
        counted.run_to_trap_spawning = run_to_trap_spawning  # type: ignore[attr-defined]
    inner_all = getattr(target, "run_threads_to_trap", None)
    if inner_all is not None:
        def run_threads_to_trap(tids: list[int], traps: tuple[int, ...] = ()) -> int:
            resumes = inner_all(tids, traps)
            counted.stops += resumes
            TOTAL["stops"] += resumes
            return resumes
        counted.run_threads_to_trap = run_threads_to_trap  # type: ignore[attr-defined]
    inner_await = getattr(target, "await_trap", None)
    if inner_await is not None:
        def await_trap(traps: tuple[int, ...] = ()) -> None:
            counted.stops += 1
            TOTAL["stops"] += 1
            inner_await(traps)
        counted.await_trap = await_trap  # type: ignore[attr-defined]
    return counted
