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

    def before_changes(self) -> None:
        """Optional. Called once all checks passed, just before the first change."""

    def reload_process(self) -> None:
        """Optional. Make the debugger read the process afresh (exe link, auxv, libraries),
        e.g. by detaching and attaching again; the inferior spins on a loop meanwhile."""

    def memory_changed(self) -> None:
        """The address space was changed behind the debugger: drop its caches."""
