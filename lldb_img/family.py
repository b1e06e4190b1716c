"""What the LLDB img commands share (img-restore, img-dump, img-info in commands.py,
img-checkpoint and img-checkpoints in checkpoints.py, img-diff and img-bisect in compare.py):
the process they work on, LLDB held synchronous, the user's breakpoints lifted, and the
dump's page stream. The command classes and their options: commands.Command, Option."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import lldb

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import PROT_EXEC
from binfmt_img.live import progress
from binfmt_img.live.dump import DumpPlan
from lldb_img.target import LldbTarget


def batch() -> bool:
    """lldb's batch mode: no progress line unless asked for."""
    return progress.started_with(("-b", "--batch", "-batch"))


@contextlib.contextmanager
def synchronous(debugger: lldb.SBDebugger) -> Iterator[None]:
    """Single-steps must return only once the inferior has stopped again."""
    was_async = debugger.GetAsync()
    debugger.SetAsync(False)
    try:
        yield
    finally:
        debugger.SetAsync(was_async)


@contextlib.contextmanager
def breakpoints_lifted(target: lldb.SBTarget) -> Iterator[None]:
    """LLDB keeps breakpoint traps in memory while stopped; lift the user's for the duration,
    so no trap is dumped, overwritten by a restore, or stepped over in place of a syscall."""
    enabled = [b for b in target.breakpoint_iter() if b.IsEnabled()]
    for b in enabled:
        b.SetEnabled(False)
    try:
        yield
    finally:
        for b in enabled:
            b.SetEnabled(True)


def stopped_process(debugger: lldb.SBDebugger) -> lldb.SBProcess:
    process = debugger.GetSelectedTarget().GetProcess()
    if not process.IsValid() or process.GetState() in (lldb.eStateExited, lldb.eStateDetached):
        raise RestoreError("no live process")
    if process.GetState() != lldb.eStateStopped:
        raise RestoreError("the process is running: interrupt it first")
    return process


def masked_pages(plan: DumpPlan, inferior: LldbTarget,
                 line: progress.ProgressLine) -> Iterator[tuple[int, bytes]]:
    """The dump's pages, those of executable mappings read again through LLDB: it shows the
    original bytes where its own breakpoint traps (ld.so's link-map one) sit, which
    /proc/PID/mem shows as int3. Only code pages the process wrote are stored: few."""
    executable = [(m.start, m.end) for m in plan.maps if m.prot & PROT_EXEC]
    for vaddr, data in plan.pages(line):
        if any(start <= vaddr < end for start, end in executable):
            data = inferior.read_memory(vaddr, len(data))
        yield vaddr, data


def parsed_commands() -> tuple[type, ...]:
    """The commands with option definitions (commands.Command), parsed by LLDB 18+ (parsed.py)
    and by argparse before it; img-bisect is raw: its EXPR is the user's own text."""
    from lldb_img import checkpoints, commands, compare  # they import this module

    return commands.COMMANDS + checkpoints.COMMANDS + compare.PARSED
