"""GDB commands img-restore, img-dump and img-info, thin wrappers over binfmt_img."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gdb

from binfmt_img import elfcore, image_file, progress, report
from binfmt_img.dump import dump
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.outcome import failure_line
from binfmt_img.pids import ask_next_pid
from binfmt_img.restore import RestorePlan
from binfmt_img.safeio import executable_problem, printable

from .target import GdbTarget, forget_detached, gdb_quoted, kill_started_here


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line through gdb.GdbError, not an exit
        raise _ArgumentError(f"{self.prog}: {message}")


class _HelpShown(Exception):
    pass


def _parse(parser: argparse.ArgumentParser, argument: str) -> argparse.Namespace:
    try:
        words = shlex.split(argument)
    except ValueError as error:
        raise gdb.GdbError(f"{parser.prog}: {error}") from None
    if "-h" in words or "--help" in words:
        gdb.execute(f"help {parser.prog}")
        raise _HelpShown
    try:
        return parser.parse_args(words)
    except _ArgumentError as error:
        raise gdb.GdbError(str(error)) from None


def _path(text: str) -> str:
    return os.path.abspath(os.path.expanduser(text))


def _ensure_process(image: image_file.Image) -> bool:
    """With no live inferior, start the image's executable (or the program loaded in GDB,
    for an image that names none) stopped at its first instruction; True when it did."""
    if gdb.selected_inferior().pid:
        return False
    current = gdb.current_progspace().filename
    program = image.exe_path
    problem = executable_problem(program) if program else None
    if program is None or problem is not None:
        what = (f"the image's executable {printable(program)} cannot be started: {problem}"
                if program else "the image names no executable (a v0 image)")
        if current is None and program is not None:
            raise RestoreError(f"{what}; load the program first (`file PATH`), then "
                               "img-restore")
        fallback = current or "/bin/true"  # a v0 image restores into any process
        gdb.write(f"img-restore: warning: {what}; restoring into {fallback}"
                  + ("" if current else " (symbols need the program: gdb PROGRAM)") + "\n")
        program = fallback
    if program != current:
        gdb.execute(f"file {gdb_quoted(program)}", to_string=True)
    gdb.write(f"img-restore: starting {printable(program)} to restore into\n")
    if image.pid:  # GDB's fork (then the shell's exec) makes the inferior: the next task
        ask_next_pid(image.pid)
    gdb.execute("starti", to_string=True)
    return True


def _machine_interface() -> bool:
    """True when GDB talks MI on its stdout (started with --interpreter=mi*)."""
    args = progress.command_line()
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if "=" in arg else (
            args[i + 1] if i + 1 < len(args) else "")
        if arg.lstrip("-").split("=")[0] in ("interpreter", "i") and value.startswith("mi"):
            return True
    return False


def _progress(label: str, asked: bool) -> progress.ProgressLine:
    quiet = _machine_interface() or progress.started_with(("-batch", "--batch"))
    return progress.on_stderr(label, asked, quiet)


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide the stop reports of the many single steps a restore or dump makes (to_string
    does not: GDB prints stops through its own channel)."""
    saved = gdb.parameter("suppress-cli-notifications")
    gdb.execute("set suppress-cli-notifications on", to_string=True)
    try:
        yield
    finally:
        gdb.execute(f"set suppress-cli-notifications {'on' if saved else 'off'}",
                    to_string=True)


@contextmanager
def _scheduler_locked() -> Iterator[None]:
    """Only the stepped thread moves during the many single steps (GDB's default lets the
    others run); set once, not per step."""
    if not gdb.selected_inferior().pid:
        yield  # no process: the command itself says so
        return
    mode = gdb.parameter("scheduler-locking")
    gdb.execute("set scheduler-locking on", to_string=True)
    try:
        yield
    finally:
        gdb.execute(f"set scheduler-locking {mode}", to_string=True)


def _warn(command: str) -> Callable[[str], None]:
    return lambda message: gdb.write(f"{command}: warning: {message}\n")


def _fault_again(name: str, from_tty: bool) -> None:
    """A crash core: run the faulting instruction again, so that the kernel raises the same
    signal and GDB reports it as a live fault, $_siginfo included. The signal is then not
    passed on, so that `continue` after a fix retries the instruction."""
    pc = int(gdb.parse_and_eval("$pc"))
    gdb.execute("stepi", from_tty)
    if int(gdb.parse_and_eval("$pc")) != pc:
        gdb.write(f"img-restore: warning: the instruction at {pc:#x} did not fault again\n")
        return
    gdb.execute("queue-signal 0", to_string=True)
    gdb.write(f"img-restore: {name} is not passed on: `continue` retries the instruction, "
              f"`signal {name}` delivers it\n")


# The last reports, for scripts/bench and other callers that want the figures.
last_restore = None
last_dump = None


class _ImgCommand(gdb.Command):
    """What the three commands share: a file argument with completion, options parsed with
    argparse, -h/--help, and every expected failure as one line through gdb.GdbError."""

    name = ""
    category = gdb.COMMAND_DATA

    def __init__(self) -> None:
        super().__init__(self.name, self.category, gdb.COMPLETE_FILENAME)
        self.parser = _Parser(prog=self.name, add_help=False)
        self.parser.add_argument("file")

    def invoke(self, argument: str, from_tty: bool) -> None:
        try:
            args = _parse(self.parser, argument)
        except _HelpShown:
            return
        try:
            self.run(args, from_tty)
        except (ImageError, RestoreError, OSError) as error:
            raise gdb.GdbError(f"{self.name}: {error}") from None
        except KeyboardInterrupt:
            raise gdb.GdbError(f"{self.name}: interrupted") from None

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        raise NotImplementedError


class ImgRestore(_ImgCommand):
    """Restore a process image into the inferior: img-restore FILE [--via V] [--accept-loss]

Replaces the inferior's memory, registers, FPU state, signal state, TLS, threads and open
files with the image's, then leaves it stopped at the checkpoint with symbols reloaded. With
no live inferior, the image's executable is started first (stopped at its first instruction).
Accepts v0 and v1 images and ELF cores; a crash core stops at the faulting instruction with
its signal shown.
--via auto|fast|debugger: fast writes pages through /proc/PID/mem, debugger through GDB's
memory API (slower); auto picks fast. --progress: a progress line in batch mode too.
State the restore cannot bring back (a pipe to another process, children, ...) is listed and
the restore refused before any change; --accept-loss restores without it, one warning each."""

    name, category = "img-restore", gdb.COMMAND_RUNNING

    def __init__(self) -> None:
        super().__init__()
        self.parser.add_argument("--via", default="auto", choices=("auto", "fast", "debugger"))
        self.parser.add_argument("--progress", action="store_true")
        self.parser.add_argument("--accept-loss", action="store_true")

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        global last_restore
        image = image_file.load_any(_path(args.file), warn=_warn(self.name))
        with _quiet():
            started = _ensure_process(image)
        plan = RestorePlan(GdbTarget(image.exe_path), image, via=args.via,
                           progress=_progress(self.name, args.progress),
                           accept_loss=args.accept_loss)
        breakpoints = [b for b in gdb.breakpoints() if b.enabled]
        for b in breakpoints:
            b.enabled = False
        try:
            with _quiet(), _scheduler_locked():
                plan.check()
                result = plan.run()
            assert plan.progress is not None
            plan.progress.finish()
        except (ImageError, RestoreError, KeyboardInterrupt, gdb.error) as error:
            raise RestoreError(_failed(plan, started, error)) from None
        finally:
            for b in breakpoints:
                b.enabled = True
        last_restore = result
        for warning in result.warnings:
            gdb.write(f"img-restore: warning: {warning}\n")
        gdb.write(f"img-restore: {result.vmas} VMAs, {result.pages} pages in "
                  f"{result.seconds:.2f} s via {result.path}\n")
        if image.signal is not None and elfcore.is_fault(image.signal):
            _fault_again(report.signal_name(image.signal.number), from_tty)
        else:
            gdb.execute("frame", from_tty)


def _failed(plan: RestorePlan, started: bool, error: BaseException) -> str:
    """A process started for the restore is killed either way."""
    if started:
        gdb.execute("kill", to_string=True)
    return failure_line(error, plan.changed, started)


class ImgDump(_ImgCommand):
    """Write the stopped inferior to a process image: img-dump FILE [--format v0|v1] [--progress]

The image holds registers, FPU state, memory mappings with their files, the pages the process
has written, signal state, TLS, threads and open files. v1 (the default) is this project's
format; v0 is the seed's."""

    name = "img-dump"

    def __init__(self) -> None:
        super().__init__()
        self.parser.add_argument("--format", default="v1", choices=image_file.FORMATS)
        self.parser.add_argument("--progress", action="store_true")

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        global last_dump
        with _quiet(), _scheduler_locked():
            line = _progress(self.name, args.progress)
            result = dump(GdbTarget(), _path(args.file), args.format, line)
            line.finish()
        last_dump = result
        for warning in result.warnings:
            gdb.write(f"img-dump: warning: {warning}\n")
        gdb.write(f"img-dump: {result.vmas} VMAs, {result.pages} pages, {result.bytes} bytes "
                  f"in {result.seconds:.2f} s\n")


class ImgInfo(_ImgCommand):
    """Describe a process image without changing anything: img-info FILE [--json] [--verify]

Shows registers, mm fields, the VMA table, threads, open files and the code at rip;
--verify checks every page run's checksum; --json prints one JSON object."""

    name = "img-info"

    def __init__(self) -> None:
        super().__init__()
        self.parser.add_argument("--json", action="store_true")
        self.parser.add_argument("--verify", action="store_true")

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        image = image_file.load_any(_path(args.file), warn=_warn(self.name))
        bad = report.bad_runs(image) if args.verify else None
        if args.json:
            gdb.write(json.dumps(report.report_json(image, bad)) + "\n")
        else:
            gdb.write(report.report_text(image, verify=args.verify, bad=bad) + "\n")


def register() -> None:
    exiting = getattr(gdb.events, "gdb_exiting", None)
    if exiting is not None:
        exiting.connect(kill_started_here)
        gdb.events.before_prompt.connect(forget_detached)
    ImgRestore()
    ImgDump()
    ImgInfo()
