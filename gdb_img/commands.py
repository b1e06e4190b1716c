"""GDB commands img-restore, img-dump and img-info, thin wrappers over binfmt_img (the
family's shared machinery: gdb_img.family)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import gdb

from binfmt_img import report
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.formats import elfcore, image_file, packed
from binfmt_img.live import progress
from binfmt_img.live.dump import dump
from binfmt_img.live.outcome import failure_line
from binfmt_img.live.pids import ask_next_pid
from binfmt_img.live.restore import RestorePlan
from binfmt_img.safeio import executable_problem, printable
from binfmt_img.state import stop_reason
from gdb_img import compare, relocation
from gdb_img import tree as gdb_tree
from gdb_img.family import ImgCommand, ImgPrefix, progress_line, quiet, scheduler_locked, warn
from gdb_img.mi import final_stop, start_unseen
from gdb_img.target import (
    GdbTarget,
    forget_detached,
    gdb_quoted,
    kill_started_here,
    machine_interface,
)


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
                  + ("" if current else " (symbols need the program: gdb PROGRAM)") + "\n",
                  gdb.STDERR)
        program = fallback
    if program != current:
        gdb.execute(f"file {gdb_quoted(program)}", to_string=True)
    gdb.write(f"img-restore: starting {printable(program)} to restore into\n")
    if image.pid:  # GDB's fork (then the shell's exec) makes the inferior: the next task
        ask_next_pid(image.pid)
    with start_unseen():  # no "Program stopped." of the internal starti
        gdb.execute("starti", to_string=True)
    return True



def _confirmed(question: str) -> bool:
    """GDB's query: yes without asking with `set confirm off`, in batch mode or under MI,
    and (said so) when the input is not a terminal."""
    if (not gdb.parameter("confirm") or machine_interface()
            or progress.started_with(("-batch", "--batch"))):
        return True
    if not sys.stdin.isatty():
        gdb.write(f"{question}(y or n) [answered Y; input not from terminal]\n")
        return True
    while True:
        gdb.write(f"{question}(y or n) ")
        gdb.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer in ("y", "yes", "n", "no") or not answer and not sys.stdin.isatty():
            return answer.startswith("y")
        gdb.write("Please answer y or n.\n")


def _replace_live_process(yes: bool) -> None:
    """A live process is replaced as `run` replaces one: asked first. One with several
    threads is killed, and a fresh one started for the restore."""
    inferior = gdb.selected_inferior()
    if not inferior.pid:
        return
    if not yes and not _confirmed(f"The program being debugged has been started already "
                                  f"(process {inferior.pid}).\nReplace it with the image? "):
        raise RestoreError("not confirmed; the inferior was not changed")
    if len([t for t in inferior.threads() if t.is_valid()]) > 1:
        gdb.execute("kill", to_string=True)


def _fault_again(name: str, from_tty: bool) -> None:
    """A crash core: run the faulting instruction again, so that the kernel raises the same
    signal and GDB reports it as a live fault, $_siginfo included. The signal is then not
    passed on, so that `continue` after a fix retries the instruction."""
    pc = int(gdb.parse_and_eval("$pc"))
    gdb.execute("stepi", from_tty)
    if int(gdb.parse_and_eval("$pc")) != pc:
        gdb.write(f"img-restore: warning: the instruction at {pc:#x} did not fault again\n",
                  gdb.STDERR)
        return
    gdb.execute("queue-signal 0", to_string=True)
    gdb.write(f"img-restore: {name} is not passed on: `continue` retries the instruction, "
              f"`signal {name}` delivers it\n")


# The last reports, for scripts/bench and other callers that want the figures.
last_restore = None
last_dump = None


class ImgRestore(ImgCommand):
    """Restore a process image into the inferior, stopped at the checkpoint.

Usage: img-restore FILE|N|NAME [--via auto|fast|debugger] [--progress] [--accept-loss]
                   [--yes] [--store DIR] [--exe PATH] [--map OLD=NEW]... [--sysroot DIR]
(or `img restore ...`)

Replaces the inferior's memory, registers, FPU state, signal state, TLS, threads and open
files with the image's, then leaves it stopped at the checkpoint with symbols reloaded. With
no live inferior, the image's executable is started first (stopped at its first instruction).
Accepts v0 and v1 images and ELF cores; a crash core stops at the faulting instruction with
its signal shown. N or NAME (when no such file exists) is a checkpoint of the store
(img-checkpoint): --store DIR, else $BINFMT_IMG_STORE, else ./img-checkpoints.
--via auto|fast|debugger: fast writes pages through /proc/PID/mem in 16 MiB pieces, debugger
in 1 MiB pieces through GDB's adapter (for a remote target; a local process's memory it also
writes through /proc/PID/mem); auto picks fast for a local process. --progress: a progress
line in batch mode too.
State the restore cannot bring back (a pipe to another process, children, ...) is listed and
the restore refused before any change; --accept-loss restores without it, one warning each.
A live process is replaced after a question, as `run` asks (--yes, batch mode or `set
confirm off` answer it); one with several threads is killed and a fresh one started.
Mapped files are compared with the image by content (ELF build-id, else a hash): a copy is
accepted, another build refused. --exe PATH: the executable is there now; --map OLD=NEW
(repeatable): paths starting with OLD are under NEW; --sysroot DIR: files are looked up
under DIR first. A packed image (img-dump --pack) brings its own copy of a file missing or
different here, kept in ~/.cache/binfmt-img/files; GDB's sysroot then points at them.
An image of a process tree (img-dump --tree) brings back every process as its own inferior,
the children forked from their restored parents (docs/TREES.md)."""

    name, category = "img-restore", gdb.COMMAND_RUNNING

    def __init__(self) -> None:
        super().__init__()
        self.parser.add_argument("--via", default="auto", choices=("auto", "fast", "debugger"))
        self.parser.add_argument("--progress", action="store_true")
        self.parser.add_argument("--accept-loss", action="store_true")
        self.parser.add_argument("--yes", "-y", action="store_true")
        self.parser.add_argument("--store")  # FILE may name a checkpoint of this store
        relocation.add_options(self.parser)

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        global last_restore
        from gdb_img.checkpoints import restore_image  # it imports this module
        image = restore_image(args.file, args.store, warn(self.name))
        relocation.prepare(image, args)
        _replace_live_process(args.yes)
        with quiet():
            started = _ensure_process(image)
            relocation.point_symbols(image)
        target = GdbTarget(image.exe_path)
        plan = RestorePlan(target, image, via=args.via,
                           progress=progress_line(self.name, args.progress),
                           accept_loss=args.accept_loss)
        tree_restore = None
        breakpoints = [b for b in gdb.breakpoints() if b.enabled]
        for b in breakpoints:
            b.enabled = False
        try:
            with quiet(), scheduler_locked():
                tree_restore = gdb_tree.prepare(plan, image, _path(args.file))  # or None
                plan.check()
                result = plan.run()
                if tree_restore is not None:
                    tree_restore.run()
            assert plan.progress is not None
            plan.progress.finish()
        except (ImageError, RestoreError, KeyboardInterrupt, gdb.error) as error:
            raise RestoreError(_failed(plan, started, error)) from None
        finally:
            for b in breakpoints:
                b.enabled = True
        last_restore = result
        for warning in result.warnings:
            gdb.write(f"img-restore: warning: {warning}\n", gdb.STDERR)
        gdb.write(f"img-restore: {result.vmas} VMAs, {result.pages} pages in "
                  f"{result.seconds:.2f} s via {result.path}\n")
        if tree_restore is not None:
            gdb.write(f"img-restore: {tree_restore.summary()}\n")
        final_stop()  # under MI: the stop that follows is the one shown
        try:
            if image.signal is not None and elfcore.is_fault(image.signal):
                _fault_again(report.signal_name(image.signal.number), from_tty)
            else:
                siginfo = _checkpoint_siginfo(image)
                if not target.stop_at_checkpoint(from_tty, siginfo):
                    gdb.execute("frame", from_tty)
                elif siginfo is not None:
                    _pass_on_again(stop_reason.signal_number(siginfo))
        except gdb.error as error:
            raise RestoreError(f"the process is restored, but GDB could not show its stop: "
                               f"{error}") from None


def _checkpoint_siginfo(image: image_file.Image) -> bytes | None:
    value = getattr(image, "states", {}).get("stop_reason")
    if value is None or not stop_reason.valid(value.siginfo):
        return None
    return bytes(value.siginfo)


def _pass_on_again(number: int) -> None:
    """The checkpoint stopped for a signal GDB passes on at the next resume: queue it so
    (its siginfo is already the thread's), as `continue` from the live stop would have."""
    if number == signal.SIGTRAP or not 0 < number <= 64:  # the image's word: a real signal
        return
    name = signal.Signals(number).name if number < 32 else f"SIG{number}"
    try:
        gdb.execute(f"queue-signal {name}", to_string=True)
    except gdb.error:
        pass  # handled `nopass`: GDB would not have passed it either


def _failed(plan: RestorePlan, started: bool, error: BaseException) -> str:
    """A process started for the restore is killed either way."""
    if started:
        gdb.execute("kill", to_string=True)
    return failure_line(error, plan.changed, started)


class ImgDump(ImgCommand):
    """Write the stopped inferior to a process image (a checkpoint).

Usage: img-dump FILE [--format v0|v1] [--compress] [--compress-with lz4|zstd] [--progress]
[--pack] [--tree]
(or `img dump ...`)
With no FILE: PROGRAM.PID.img in the current directory, as gcore writes core.PID.
--tree: the process and every descendant (each attached as another inferior just long
enough; all stopped before any is dumped), the pipes between them with their bytes, process
groups, sessions and zombies: FILE for the process, FILE.PID beside it for each descendant;
img-restore FILE brings the tree back (GDB only). Not the default: it stops and attaches
other processes. Without it, children are named in a warning and left out.

The image holds registers, FPU state, memory mappings with their files, the pages the process
has written, signal state, TLS, threads and open files. v1 (the default) is this project's
format; v0 is the seed's. --compress stores v1 pages compressed where that pays, with LZ4:
twice as fast as zstd, a third to a half of the size (v1 version 0x202, which binfmt-img
before LZ4 runs refuses; docs/FORMAT.md). --compress-with zstd (implies --compress)
takes zstd instead: slower to write, smaller images (a tenth to a sixth on python and perl
heaps, several times on data LZ4 finds few repeats in), version 0x201, which binfmt-img
readers from before LZ4 runs read too. Without the system's liblz4, zstd is used and said.
--pack: the executable, libraries and mapped data files go into the image too (once each),
for a restore on a machine that lacks them."""

    name = "img-dump"
    file_optional = True

    def __init__(self) -> None:
        super().__init__()
        self.parser.add_argument("--format", default="v1", choices=image_file.FORMATS)
        self.parser.add_argument("--progress", action="store_true")
        self.parser.add_argument("--compress", action="store_true")
        self.parser.add_argument("--compress-with", choices=packed.CODECS)
        self.parser.add_argument("--pack", action="store_true")
        self.parser.add_argument("--tree", action="store_true")

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        global last_dump
        with quiet(), scheduler_locked():
            line = progress_line(self.name, args.progress)
            target = GdbTarget()
            try:
                path = _path(args.file or _default_image_name())
                result = (gdb_tree.dump_tree(path, args.format) if args.tree
                          else dump(target, path, args.format, line,
                                    args.compress_with or args.compress,
                                    pack=args.pack))
            finally:
                target.sync()
                target.put_back_stop()
            line.finish()
        last_dump = result
        for warning in result.warnings:
            gdb.write(f"img-dump: warning: {warning}\n", gdb.STDERR)
        gdb.write(f"img-dump: {result.vmas} VMAs, {result.pages} pages, {result.bytes} bytes "
                  f"in {result.seconds:.2f} s\n")


def _default_image_name() -> str:
    """PROGRAM.PID.img, as gcore writes core.PID."""
    inferior = gdb.selected_inferior()
    program = gdb.current_progspace().filename or "process"
    return f"{os.path.basename(program)}.{inferior.pid}.img"


class ImgInfo(ImgCommand):
    """Describe a process image (or core) without changing anything.

Usage: img-info FILE [--json] [--verify]   (or `img info ...`)

Shows registers, mm fields, the VMA table, threads, open files and the code at rip;
--verify checks every page run's checksum; --json prints one JSON object."""

    name = "img-info"

    def __init__(self) -> None:
        super().__init__()
        self.parser.add_argument("--json", action="store_true")
        self.parser.add_argument("--verify", action="store_true")

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        image = image_file.load_any(_path(args.file), warn=warn(self.name))
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
    ImgPrefix()
    ImgRestore()
    ImgDump()
    ImgInfo()
    from gdb_img import checkpoints  # it imports this module
    checkpoints.register()
    compare.register()  # img-diff, img-bisect
