"""The `img` command family in GDB: what every img command shares (img restore, dump, info,
checkpoint, checkpoints, diff, bisect). Each is `img NAME` with `img-NAME` as its alias, its
options parsed by argparse and completed with TAB, `-h`/`--help` showing its help, every
expected failure one line through gdb.GdbError, and under GDB/MI one `^done` or `^error`
answer (gdb_img.mi.one_answer)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gdb

from binfmt_img.arguments import ArgumentError, Parser, one_line
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.live import progress
from gdb_img.mi import one_answer
from gdb_img.target import machine_interface


class HelpShown(Exception):
    """-h or --help: the help was shown, the command does nothing else."""


def parse(parser: argparse.ArgumentParser, argument: str) -> argparse.Namespace:
    try:
        words = shlex.split(argument)
    except ValueError as error:
        raise gdb.GdbError(f"{parser.prog}: {error}") from None
    if "-h" in words or "--help" in words:
        gdb.execute(f"help {parser.prog}")
        raise HelpShown
    try:
        args = parser.parse_args(words)
    except ArgumentError as error:
        raise gdb.GdbError(str(error)) from None
    if isinstance(getattr(args, "file", None), list):
        # A path with spaces needs no quotes, as with GDB's own file commands.
        args.file = " ".join(args.file) if args.file else None
    return args


def progress_line(label: str, asked: bool) -> progress.ProgressLine:
    quiet = machine_interface() or progress.started_with(("-batch", "--batch"))
    return progress.on_stderr(label, asked, quiet)


@contextmanager
def quiet() -> Iterator[None]:
    """Hide the stop reports of the steps a restore or dump makes through GDB (to_string
    does not: GDB prints stops through its own channel)."""
    saved = gdb.parameter("suppress-cli-notifications")
    gdb.execute("set suppress-cli-notifications on", to_string=True)
    try:
        yield
    finally:
        gdb.execute(f"set suppress-cli-notifications {'on' if saved else 'off'}",
                    to_string=True)


@contextmanager
def scheduler_locked() -> Iterator[None]:
    """Only the stepped thread moves during the steps (GDB's default lets the others run);
    set once, not per step."""
    if not gdb.selected_inferior().pid:
        yield  # no process: the command itself says so
        return
    mode = gdb.parameter("scheduler-locking")
    gdb.execute("set scheduler-locking on", to_string=True)
    try:
        yield
    finally:
        gdb.execute(f"set scheduler-locking {mode}", to_string=True)


def warn(command: str) -> Callable[[str], None]:
    return lambda message: gdb.write(f"{command}: warning: {message}\n", gdb.STDERR)


class ImgCommand(gdb.Command):
    """A command of the family: `img NAME` and its alias `img-NAME`. Subclasses set `name`
    (the dashed one), add their options in __init__ (or give make_parser), and run()."""

    name = ""  # the dashed name: messages and the alias, `img-dump`
    category = gdb.COMMAND_DATA
    file_optional = False
    completer = gdb.COMPLETE_FILENAME  # what a word that is not an option completes to

    def __init__(self) -> None:
        super().__init__(self.name.replace("-", " ", 1), self.category)  # complete() below
        try:
            gdb.execute(f"alias {self.name} = {self.name.replace('-', ' ', 1)}",
                        to_string=True)
        except gdb.error:
            pass  # the plugin loaded a second time (from ~/.gdbinit and by hand): it exists
        self.parser = self.make_parser()

    def make_parser(self) -> argparse.ArgumentParser:
        """A FILE (words joined: spaces need no quotes); __init__ adds the options."""
        parser = Parser(prog=self.name, add_help=False)
        parser.add_argument("file", nargs="*" if self.file_optional else "+")
        return parser

    def complete(self, text: str, word: str | None) -> object:
        """Options (and an option's choices) complete like GDB's own; the rest is a file.
        GDB breaks words at '-': `word` is the end of an option being typed."""
        tokens = text.split()
        token = tokens[-1] if tokens and not text[-1:].isspace() else ""
        if token.startswith("-"):
            cut = len(token) - len(word or "")
            return [o[cut:] for o in self._options() if o.startswith(token)]
        previous = (tokens[:-1] if token else tokens)[-1:]
        for action in self.parser._actions:  # noqa: SLF001 - argparse has no public list
            if previous and previous[0] in action.option_strings and action.choices:
                return [c for c in action.choices if c.startswith(token)]
        return self.completer

    def _options(self) -> list[str]:
        return sorted(o for a in self.parser._actions  # noqa: SLF001
                      for o in a.option_strings if o.startswith("--")) + ["--help"]

    def parse(self, argument: str) -> argparse.Namespace:
        return parse(self.parser, argument)

    def invoke(self, argument: str, from_tty: bool) -> None:
        try:
            args = self.parse(argument)
        except HelpShown:
            return
        try:
            with one_answer():  # under MI: ^done or ^error, not the steps' records
                self.run(args, from_tty)
        except (ArgumentError, ImageError, RestoreError, OSError) as error:
            raise gdb.GdbError(one_line(self.name, error)) from None
        except KeyboardInterrupt:
            raise gdb.GdbError(f"{self.name}: interrupted") from None

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        raise NotImplementedError


class ImgPrefix(gdb.Command):
    """Checkpoint a stopped process into an image file and restore it later.

img dump FILE       write the stopped inferior to a process image (img-dump)
img restore FILE    restore an image into the inferior, stopped at the checkpoint (img-restore)
img info FILE       describe an image without changing anything (img-info)
img checkpoint      save the stopped process in a checkpoint store (img-checkpoint)
img checkpoints     list the checkpoints of a store (img-checkpoints)
img diff A B        compare two checkpoints, images or the live process (img-diff)
img bisect A B EXPR the first checkpoint where EXPR is true (img-bisect)
The dashed names are the same commands. `help img restore` and the like give the options."""

    def __init__(self) -> None:
        super().__init__("img", gdb.COMMAND_DATA, gdb.COMPLETE_COMMAND, True)
