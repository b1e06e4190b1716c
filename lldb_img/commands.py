"""LLDB commands img-restore, img-dump and img-info, thin wrappers over binfmt_img."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

import lldb

from binfmt_img import report
from binfmt_img.arguments import ArgumentError, Parser, one_line
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.formats import elfcore, image_file, packed
from binfmt_img.formats.model import PAGE_SIZE, Image
from binfmt_img.live import progress
from binfmt_img.live.dump import DumpPlan
from binfmt_img.live.outcome import failure_line
from binfmt_img.live.restore import RestorePlan
from binfmt_img.safeio import executable_problem, printable
from lldb_img import relocation
from lldb_img.allocations import leave_out_lldb_memory, lldb_memory, put_back
from lldb_img.family import batch, breakpoints_lifted, masked_pages, stopped_process, synchronous
from lldb_img.modules import sync_modules
from lldb_img.pidlaunch import launch_with_pid
from lldb_img.stop import stop_at_checkpoint
from lldb_img.target import LldbTarget


def _path(text: str) -> str:
    return os.path.abspath(os.path.expanduser(text))


def _auto_confirm(debugger: lldb.SBDebugger) -> bool:
    value = debugger.GetInternalVariableValue("auto-confirm", debugger.GetInstanceName())
    return value.GetSize() > 0 and value.GetStringAtIndex(0) == "true"


def _confirmed(debugger: lldb.SBDebugger, question: str, yes: bool) -> bool:
    """As LLDB's own confirmations (`process launch` over a live process): the default answer
    (yes) in batch mode, with auto-confirm or with no terminal to ask on."""
    if yes or batch() or _auto_confirm(debugger) or not os.isatty(0):
        return True
    try:
        answer = input(f"{question}: [Y/n] ")
    except EOFError:
        return True
    return answer.strip().lower() in ("", "y", "yes")


def _same_program(target: lldb.SBTarget, image: Image) -> bool:
    current = target.GetExecutable().fullpath
    try:
        return image.exe_path is None or bool(current) and os.path.samefile(current,
                                                                             image.exe_path)
    except OSError:
        return False


def _replace_live(debugger: lldb.SBDebugger, image: Image, process: lldb.SBProcess,
                  yes: bool) -> bool:
    """A live process: confirmed, the image is restored into it when it runs the image's
    program on one thread, else it is killed (True: start a new one)."""
    stopped_process(debugger)
    if not _confirmed(debugger, "There is a running process, replace it with the image?",
                      yes):
        raise RestoreError("not confirmed: the running process is left as it was")
    if process.GetNumThreads() == 1 and _same_program(process.GetTarget(), image):
        return False
    error = process.Kill()
    if error.Fail():
        raise RestoreError(f"killing the running process: {error.GetCString()}")
    return True


def _kill(process: lldb.SBProcess) -> None:
    """Kill, and wait until LLDB shows the process gone (its state can lag the kill)."""
    error = process.Kill()
    if error.Fail():
        raise RestoreError(f"killing the running process: {error.GetCString()}")
    deadline = time.monotonic() + 10
    while process.GetState() not in (lldb.eStateExited, lldb.eStateDetached):
        if time.monotonic() > deadline:
            raise RestoreError("killing the running process: it did not exit")
        time.sleep(0.01)


def _launch_once(target: lldb.SBTarget) -> lldb.SBProcess:
    # The target's launch info carries the user's settings (output-path, env, args); the
    # SB launch also avoids the CLI's two-second wait after `process launch --stop-at-entry`.
    # A fresh one each time: a launch uses up its file actions.
    info = target.GetLaunchInfo()
    info.SetLaunchFlags(info.GetLaunchFlags() | lldb.eLaunchFlagStopAtEntry)
    error = lldb.SBError()
    process = target.Launch(info, error)
    if error.Fail():
        raise RestoreError(f"launching {target.GetExecutable().fullpath}: "
                           f"{error.GetCString()}")
    return process


def _launch(target: lldb.SBTarget, pid: int | None) -> lldb.SBProcess:
    """Launch, the process getting the checkpoint's pid where it may be arranged
    (pidlaunch: held while LLDB launches, tried again a few times)."""
    return launch_with_pid(lambda: _launch_once(target), lambda p: p.GetProcessID(),
                           lambda p: p.Kill().Success(), pid)


def _launch_info_for(old: lldb.SBTarget, program: str) -> lldb.SBLaunchInfo:
    """The old target's launch settings for another program: its arguments stay behind."""
    info = old.GetLaunchInfo()
    info.SetArguments([], False)
    info.SetExecutableFile(lldb.SBFileSpec(program), True)
    return info


def _ensure_process(debugger: lldb.SBDebugger, image: Image,
                    result: lldb.SBCommandReturnObject, yes: bool = False) -> lldb.SBProcess:
    """With no live process (or one replaced), start the image's executable (or the target's
    program, for an image that names none) stopped at its first instruction."""
    target = debugger.GetSelectedTarget()
    process = target.GetProcess()
    if process.IsValid() and process.GetState() not in (lldb.eStateExited,
                                                         lldb.eStateDetached):
        if not _replace_live(debugger, image, process, yes):
            return process
    current = target.GetExecutable().fullpath if target.IsValid() else None
    program = image.exe_path
    problem = executable_problem(program) if program else None
    if program is None or problem is not None:
        what = (f"the image's executable {printable(program)} cannot be started: {problem}"
                if program else "the image names no executable (a v0 image)")
        usable = current if current and os.path.exists(current) else None
        if usable is None and program is not None:
            raise RestoreError(f"{what}; create a target for the program first "
                               "(`target create PATH`), then img-restore")
        program = usable or "/bin/true"  # a v0 image restores into any process
        result.AppendWarning(f"{what}; restoring into {program}")
    error = lldb.SBError()
    if program != current:
        old = target
        target = debugger.CreateTarget(program, None, None, True, error)
        if error.Fail():
            raise RestoreError(f"cannot debug {program}: {error.GetCString()}")
        if old.IsValid():  # the user's settings (output-path, environment) carry over
            target.SetLaunchInfo(_launch_info_for(old, program))
        debugger.SetSelectedTarget(target)
    process = _launch(target, image.pid)
    # Now, not with the result: the progress line that follows goes out while the command runs.
    _say_now(debugger, result, f"img-restore: started {program} "
                               f"(pid {process.GetProcessID()}) to restore into")
    return stopped_process(debugger)


def _say_now(debugger: lldb.SBDebugger, result: lldb.SBCommandReturnObject, text: str) -> None:
    """One line on LLDB's output at once (the result is printed when the command ends)."""
    out = debugger.GetOutputFile()
    if out is not None and out.IsValid():
        error, _ = out.Write(f"{text}\n".encode())
        out.Flush()
        if error.Success():
            return
    result.AppendMessage(text)


@dataclass(frozen=True)
class Option:
    """One option, for both LLDB's parsed commands and the argparse fallback."""

    short: str
    long: str
    help: str
    choices: tuple[str, ...] = ()  # none: a flag (or a value, with `value`; with both: None
    # unless given)
    # Takes any string (a path), default None; a str names it in the help ("PATH").
    value: bool | str = False
    repeat: bool = False  # given several times: a list of values, default []

    @property
    def dest(self) -> str:
        return self.long.replace("-", "_")

    @property
    def default(self) -> str | bool | list[str] | None:
        if self.value:
            return [] if self.repeat else None
        return self.choices[0] if self.choices else False


HELP = Option("h", "help", "Show this command's help.")


class Command:
    """What LLDB's `command script add -c` expects of a raw command class (the fallback for an
    LLDB without parsed commands: parsed.py wraps these for LLDB 18+)."""

    name = ""
    short_help = ""
    # The positional arguments: (name, LLDB's repeat: plain, optional or star).
    arguments: tuple[tuple[str, str], ...] = (("file", "plain"),)
    argument_type = lldb.eArgTypeFilename  # what LLDB completes them with
    options: tuple[Option, ...] = ()

    def __init__(self, debugger: lldb.SBDebugger, internal_dict: dict) -> None:
        self.parser = Parser(prog=self.name, add_help=False)
        for name, repeat in self.arguments:
            self.parser.add_argument(name, nargs={"optional": "?", "star": "*"}.get(repeat))
        for option in self.options:
            if option.value:
                self.parser.add_argument(f"--{option.long}", f"-{option.short}",
                                         default=option.default, choices=option.choices or None,
                                         action="append" if option.repeat else "store")
            elif option.choices:
                self.parser.add_argument(f"--{option.long}", f"-{option.short}",
                                         default=option.default, choices=option.choices)
            else:
                self.parser.add_argument(f"--{option.long}", f"-{option.short}",
                                         action="store_true")

    def get_short_help(self) -> str:
        return self.short_help

    def get_long_help(self, usage: bool = True) -> str:
        """The docstring, its first line the usage (LLDB's parsed commands print their own
        usage and options: usage=False); LLDB wraps the text itself: one line a paragraph."""
        paragraphs = (self.__doc__ or "").strip().split("\n\n")
        if not usage:
            paragraphs = ["", *paragraphs[1:]]
        else:  # the raw fallback: the options are said here
            paragraphs[0] = f"{self.short_help} Usage: {paragraphs[0]}"
            paragraphs += [f"--{o.long} (-{o.short})"
                           + (f" {'|'.join(o.choices)}" if o.choices else "")
                           + (f" {o.value}" if isinstance(o.value, str) else "")
                           + f": {o.help}"
                           for o in self.options]
        return "\n\n".join(" ".join(p.split()) for p in paragraphs)

    def __call__(self, debugger: lldb.SBDebugger, command: str, exe_ctx: lldb.SBExecutionContext,
                 result: lldb.SBCommandReturnObject) -> None:
        self.run(debugger, lambda: self.parser.parse_args(shlex.split(command)), result)

    def run(self, debugger: lldb.SBDebugger, parse: Callable[[], argparse.Namespace],
            result: lldb.SBCommandReturnObject) -> None:
        """Parse, then invoke; every error comes back as one line."""
        try:
            self.invoke(debugger, parse(), result)
        except (ArgumentError, ValueError, ImageError, RestoreError, OSError) as error:
            result.SetError(one_line(self.name, error))
        except Exception as error:  # a bug must still come back as one line, not a traceback
            result.SetError(one_line(self.name, f"internal error: {type(error).__name__}: "
                                                f"{error}"))

    def invoke(self, debugger: lldb.SBDebugger, args: argparse.Namespace,
               result: lldb.SBCommandReturnObject) -> None:
        raise NotImplementedError


class ImgRestore(Command):
    """img-restore FILE|N|NAME [--via auto|fast|debugger] [--progress] [--accept-loss] [--yes]
[--store DIR]

Replaces the inferior's memory, registers, FPU state, signal state and TLS with the image's,
then leaves it stopped at the checkpoint with LLDB's modules set to the image's files at the
image's addresses. With no live process, the image's executable (or /bin/true) is launched
first, stopped at its first instruction; a live process is replaced after a confirmation
(--yes, batch mode or auto-confirm answer it). State the restore cannot bring back (a pipe to
another process, children, ...) is listed and the restore refused; --accept-loss restores
without it, one warning each. Accepts v0 and v1 images and ELF cores: a crash core stops at
the faulting instruction with its signal raised again. N or NAME, when no such file exists,
is a checkpoint of the store (img-checkpoint): --store DIR, else $BINFMT_IMG_STORE, else
./img-checkpoints."""

    name = "img-restore"
    short_help = "Restore a process image into the inferior."

    options = (
        Option("v", "via", "How pages are written: fast through /proc/PID/mem, debugger "
               "through LLDB; auto picks fast for a local process.",
               ("auto", "fast", "debugger")),
        Option("P", "progress", "Show a progress line, in batch mode too."),
        Option("a", "accept-loss", "Restore without the state that cannot come back, one "
               "warning each, instead of refusing."),
        Option("y", "yes", "Replace a live process without asking."),
        Option("s", "store", "The checkpoint store FILE may name a checkpoint of (a number or "
               "a name, when no such file exists).", value=True),
        Option("e", "exe", "The image's executable is at PATH now.", value="PATH"),
        Option("m", "map", "Paths starting with OLD are under NEW now (repeatable).",
               value="OLD=NEW", repeat=True),
        Option("R", "sysroot", "Look the image's files up under DIR first.", value="DIR"),
    )

    def invoke(self, debugger: lldb.SBDebugger, args: argparse.Namespace,
               result: lldb.SBCommandReturnObject) -> None:
        from lldb_img.checkpoints import restore_image  # it imports this module
        image = restore_image(args.file, args.store, result)
        relocation.prepare(debugger, image, args, result)
        with synchronous(debugger):
            before = debugger.GetSelectedTarget().GetProcess()
            before_pid = before.GetProcessID() if before.IsValid() else None
            process = _ensure_process(debugger, image, result, args.yes)
            had_process = process.GetProcessID() == before_pid
            held, clash = lldb_memory(process, image) if had_process else ([], None)
            if clash is not None:  # LLDB's own pages where the image maps: a fresh process
                _say_now(debugger, result, f"warning: {clash}")
                _kill(process)
                process, had_process, held = _ensure_process(debugger, image, result), False, []
            target = process.GetTarget()
            plan = RestorePlan(LldbTarget(process), image, via=args.via,
                               progress=progress.on_stderr("img-restore", args.progress,
                                                           batch()),
                               accept_loss=args.accept_loss)
            with breakpoints_lifted(target):
                try:
                    plan.check()
                    done = plan.run()
                except (ImageError, RestoreError, KeyboardInterrupt) as error:
                    plan.target.forget_code()  # the scratch code's module, if still loaded
                    if not had_process:  # refused or half-restored: no use for it
                        process.Kill()
                    raise RestoreError(failure_line(error, plan.changed,
                                                    not had_process)) from None
                assert plan.progress is not None
                plan.progress.finish()
                kept, unkept = put_back(process, held)
                warnings = done.warnings + sync_modules(target, image) + ([unkept] if unkept
                                                                            else [])
            problem = stop_at_checkpoint(process, image)
            LldbTarget(process).memory_changed()
        if problem is not None:
            warnings.append(problem)
        for warning in warnings:
            result.AppendWarning(warning)
        result.AppendMessage(f"img-restore: {_restored_counts(image, done.vmas, done.pages)} in "
                             f"{done.seconds:.2f} s via {done.path}")
        if kept is not None:
            result.AppendMessage(f"img-restore: {kept}")
        if image.signal is not None and elfcore.is_fault(image.signal):
            # A crash core: the faulting instruction runs again and raises the same signal,
            # which LLDB then shows as the stop reason, as for a live fault.
            name = report.signal_name(image.signal.number)
            with synchronous(debugger):
                # A continue, not a step: a step's plan would outlive the signal and stop the
                # next continue after one instruction.
                process.Continue()
                # As in GDB: not passed on, so `continue` after a fix retries the instruction.
                debugger.GetCommandInterpreter().HandleCommand(
                    f"process handle {name} --pass false", lldb.SBCommandReturnObject())
            result.AppendMessage(f"img-restore: {name} raised again at the faulting "
                                 f"instruction; not passed on (process handle {name} "
                                 "--pass true delivers it)")
        if problem is None:
            result.AppendMessage("img-restore: stopped at the checkpoint")
        # As `frame select 0` shows it; the interpreter's own context may predate the process.
        frame = lldb.SBCommandReturnObject()
        context = lldb.SBExecutionContext(process.GetSelectedThread().GetFrameAtIndex(0))
        debugger.GetCommandInterpreter().HandleCommand("frame select 0", context, frame, False)
        result.AppendMessage(frame.GetOutput().rstrip("\n"))


def _restored_counts(image: Image, vmas: int, pages: int) -> str:
    """What the restore mapped and wrote, said against the image's totals (img-dump's and
    img-info's numbers): the vDSO block is the live kernel's, moved into place, not written."""
    total_vmas, total_pages = len(image.vmas), image.page_count
    text = f"{vmas} VMAs, {pages} pages"
    if (vmas, pages) != (total_vmas, total_pages):
        text = (f"{vmas} of the image's {total_vmas} VMAs mapped, {pages} of its "
                f"{total_pages} pages written (the others are the kernel's: the vDSO block, "
                "moved into place, and [vsyscall]; or a shared file's own pages)")
    return text


class ImgDump(Command):
    """img-dump FILE [--format v1|v0] [--compress] [--compress-with lz4|zstd] [--progress]

The image holds registers, FPU state, memory mappings with their files, the pages the process
has written, signal state and TLS. v1 (the default) is this project's format; v0 is the seed's.
The process is left as it was and can be continued."""

    name = "img-dump"
    short_help = "Write the stopped inferior to a process image."

    options = (
        Option("f", "format", "The image format: v1, this project's, or v0, the seed's.",
               tuple(sorted(image_file.FORMATS, key=lambda f: f != "v1"))),
        Option("P", "progress", "Show a progress line, in batch mode too."),
        Option("c", "compress", "Store v1 pages compressed where that pays, with LZ4: twice "
               "as fast as zstd, a third to a half of the size (v1 version 0x202)."),
        Option("C", "compress-with", "Compress with this codec (implies --compress): zstd "
               "is slower to write, its images smaller (a tenth to a sixth on python and perl "
               "heaps, several times on data LZ4 finds few repeats in), version 0x201, which "
               "readers from before LZ4 runs read too. Without liblz4, zstd is used.",
               packed.CODECS, value=True),
        Option("k", "pack", "Put the executable, libraries and mapped data files in the "
               "image too, for a restore where they are missing or different."),
    )

    def invoke(self, debugger: lldb.SBDebugger, args: argparse.Namespace,
               result: lldb.SBCommandReturnObject) -> None:
        path = _path(args.file)
        started = time.monotonic()
        with synchronous(debugger):
            inferior = LldbTarget(stopped_process(debugger))
            with breakpoints_lifted(inferior.process.GetTarget()):
                codec, note = packed.codec_for(args.compress_with or args.compress)
                plan = DumpPlan(inferior, args.format)
                plan.report.warnings += [note] if note else []
                leave_out_lldb_memory(plan, inferior.process)
                image = plan.collect()
                relocation.pack(image, args, plan.sources)
                line = progress.on_stderr("img-dump", args.progress, batch())
                image_file.save(path, image, args.format, masked_pages(plan, inferior, line),
                                codec)
                line.finish()
            inferior.memory_changed()
        for warning in plan.report.warnings:
            result.AppendWarning(warning)
        pages = plan.report.pages
        result.AppendMessage(f"img-dump: {plan.report.vmas} VMAs, {pages} pages "
                             f"({pages * PAGE_SIZE} bytes) in a file of "
                             f"{os.path.getsize(path)} bytes, in "
                             f"{time.monotonic() - started:.2f} s")


class ImgInfo(Command):
    """img-info FILE [--json] [--verify]

Describes a process image without changing anything: the registers, mm fields, VMAs, signal
handlers, threads and the code at rip."""

    name = "img-info"
    short_help = "Describe a process image without changing anything."

    options = (
        Option("j", "json", "Print one JSON object instead of text."),
        Option("V", "verify", "Check every page run against its crc32 (v1 images)."),
    )

    def invoke(self, debugger: lldb.SBDebugger, args: argparse.Namespace,
               result: lldb.SBCommandReturnObject) -> None:
        image = image_file.load_any(_path(args.file))
        bad = report.bad_runs(image) if args.verify else None
        if args.json:
            result.AppendMessage(json.dumps(report.report_json(image, bad)))
        else:
            result.AppendMessage(report.report_text(image, verify=args.verify, bad=bad))
        if bad:
            result.SetError(f"img-info: {report.plural(len(bad), 'page run')} failing --verify")


COMMANDS = (ImgRestore, ImgDump, ImgInfo)
