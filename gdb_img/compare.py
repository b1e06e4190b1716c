"""GDB commands img-diff and img-bisect (binfmt_img/compare): comparing checkpoints, images
and the live process, and finding the first checkpoint where an expression holds."""

from __future__ import annotations

import argparse
import json

import gdb

from binfmt_img.arguments import Parser
from binfmt_img.compare.bisect import (
    Step,
    asks_help,
    bisect,
    checkpoints_between,
    header_line,
    outcome_lines,
    split_arguments,
    step_line,
)
from binfmt_img.compare.diff import compare
from binfmt_img.compare.resolve import LIVE, open_side, open_store
from binfmt_img.compare.text import render
from binfmt_img.errors import RestoreError
from gdb_img.family import HelpShown, ImgCommand
from gdb_img.target import GdbTarget, gdb_quoted


class GdbValues:
    """Variables typed by GDB's symbols: the value made from the bytes, printed as `print`
    would (gdb.Value(bytes, type))."""

    def format_value(self, name: str, path: str, data: bytes) -> tuple[str, str] | None:
        try:
            symbol = gdb.lookup_global_symbol(name)
            if symbol is None and hasattr(gdb, "lookup_static_symbol"):
                symbol = gdb.lookup_static_symbol(name)
            if symbol is None or not symbol.is_variable or symbol.type is None:
                return None
            kind = symbol.type
            if kind.sizeof != len(data):
                return None
            return gdb.Value(data, kind).format_string(), str(kind)
        except (gdb.error, RuntimeError, TypeError, ValueError):
            return None


class _CompareTarget(GdbTarget):
    """The live process, with GDB's unwinder for stack frames."""

    def stack_frames(self) -> list[tuple[int, str]]:
        """(rsp in the frame, function) of the selected thread's frames, innermost first."""
        out: list[tuple[int, str]] = []
        frame = gdb.newest_frame()
        while frame is not None and len(out) < 256:
            out.append((int(frame.read_register("rsp")), frame.name() or f"{frame.pc():#x}"))
            frame = frame.older()
        return out


def _live_target() -> GdbTarget:
    if not gdb.selected_inferior().pid:
        raise RestoreError("`live` names the process, and there is none")
    return _CompareTarget()


class ImgDiff(ImgCommand):
    """Compare two checkpoints, images or the live process.

Usage: img-diff A B [--json] [--store DIR]   (or `img diff ...`)

A and B are each an image file, a checkpoint of the store (its number or name) or `live` (the
stopped process). Shows registers per thread, VMAs added, removed or changed, the pages
changed, and the changed memory as global and static variables by name (old and new values,
typed by GDB where it knows the type), heap ranges and stack frames by function."""

    name = "img-diff"

    def make_parser(self) -> argparse.ArgumentParser:
        parser = Parser(prog=self.name, add_help=False)
        parser.add_argument("a")
        parser.add_argument("b")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--store")
        return parser

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        target = _live_target() if LIVE in (args.a, args.b) else None
        a = open_side(args.a, target, args.store)
        b = open_side(args.b, target, args.store)
        diff = compare(a, b, GdbValues())
        gdb.write((json.dumps(diff.to_json()) if args.json else render(diff)) + "\n")


class ImgBisect(ImgCommand):
    """Find the first checkpoint where an expression is true, and stop there.

Usage: img-bisect [--store DIR] [--accept-loss] A B EXPR   (or `img bisect ...`)

A and B are checkpoints of the store (numbers or names), A the earlier. The checkpoints from
A to B are restored as few as a binary search needs, EXPR evaluated by GDB at each (it is
assumed false at A and true at B; both are checked, and said when not so). The process is
left restored at the first checkpoint where EXPR is true; the path taken is printed.
--store DIR: the store (else $BINFMT_IMG_STORE, else ./img-checkpoints); --accept-loss is
passed to each img-restore."""

    name, category = "img-bisect", gdb.COMMAND_RUNNING
    completer = gdb.COMPLETE_EXPRESSION

    def make_parser(self) -> argparse.ArgumentParser:
        """The options, for completion: EXPR is the user's own text (split_arguments)."""
        parser = Parser(prog=self.name, add_help=False)
        parser.add_argument("--store")
        parser.add_argument("--accept-loss", action="store_true")
        return parser

    def parse(self, argument: str) -> argparse.Namespace:
        if asks_help(argument):
            gdb.execute(f"help {self.name}")
            raise HelpShown
        try:
            options, ends, expression = split_arguments(argument)
        except ValueError as error:
            raise gdb.GdbError(f"{self.name}: {error}") from None
        if len(ends) < 2 or not expression:
            raise gdb.GdbError(f"{self.name}: usage: img-bisect [--store DIR] [--accept-loss] "
                               "A B EXPR")
        return argparse.Namespace(store=options.get("store"),
                                  accept_loss=bool(options.get("accept_loss")),
                                  first=ends[0], last=ends[1], expression=expression)

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        _bisect(args.store, args.accept_loss, args.first, args.last, args.expression)


def _bisect(store_dir: str | None, accept_loss: bool, first: str, last: str,
            expression: str) -> None:
    store = open_store(store_dir)
    entries = checkpoints_between(store, first, last)
    # The user's store and flags only: no text of the images goes into the command.
    option = f"--store {gdb_quoted(store.path)} " + (
        "--accept-loss " if accept_loss else "")

    def restore(entry: object) -> None:
        number = int(entry.number)  # type: ignore[attr-defined] # a number, never the name
        try:
            gdb.execute(f"img-restore --yes {option}{number}", to_string=True)
        except gdb.error as error:
            raise RestoreError(f"restoring checkpoint {number}: {error}") from None

    def evaluate() -> tuple[bool, str]:
        try:
            value = gdb.parse_and_eval(expression)
            return bool(value), str(value)
        except gdb.error as error:
            raise RestoreError(f"{expression}: {error}") from None

    def said(step: Step) -> None:
        gdb.write(step_line(expression, step) + "\n")

    gdb.write(header_line(entries) + "\n")
    for line in outcome_lines(bisect(entries, restore, evaluate, said)):
        gdb.write(line + "\n")
    gdb.execute("frame")


def register() -> None:
    ImgDiff()
    ImgBisect()
