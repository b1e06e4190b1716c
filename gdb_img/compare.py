"""GDB commands img-diff and img-bisect (binfmt_img/compare): comparing checkpoints, images
and the live process, and finding the first checkpoint where an expression holds."""

from __future__ import annotations

import argparse
import json
import shlex

import gdb

from binfmt_img.compare.bisect import Step, bisect, split_arguments
from binfmt_img.compare.diff import compare
from binfmt_img.compare.resolve import LIVE, open_side, open_store
from binfmt_img.compare.text import render
from binfmt_img.errors import ImageError, RestoreError
from gdb_img.target import GdbTarget, gdb_quoted


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise _ArgumentError(f"{self.prog}: {message}")


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


class ImgDiff(gdb.Command):
    """Compare two checkpoints, images or the live process.

Usage: img-diff A B [--json] [--store DIR]

A and B are each an image file, a checkpoint of the store (its number or name) or `live` (the
stopped process). Shows registers per thread, VMAs added, removed or changed, the pages
changed, and the changed memory as global and static variables by name (old and new values,
typed by GDB where it knows the type), heap ranges and stack frames by function."""

    def __init__(self) -> None:
        super().__init__("img-diff", gdb.COMMAND_DATA, gdb.COMPLETE_FILENAME)
        self.parser = _Parser(prog="img-diff", add_help=False)
        self.parser.add_argument("a")
        self.parser.add_argument("b")
        self.parser.add_argument("--json", action="store_true")
        self.parser.add_argument("--store")

    def invoke(self, argument: str, from_tty: bool) -> None:
        try:
            args = self.parser.parse_args(shlex.split(argument))
        except (_ArgumentError, ValueError) as error:
            raise gdb.GdbError(str(error)) from None
        try:
            target = _live_target() if LIVE in (args.a, args.b) else None
            a = open_side(args.a, target, args.store)
            b = open_side(args.b, target, args.store)
            diff = compare(a, b, GdbValues())
        except (ImageError, RestoreError, OSError) as error:
            raise gdb.GdbError(f"img-diff: {error}") from None
        gdb.write((json.dumps(diff.to_json()) if args.json else render(diff)) + "\n")


class ImgBisect(gdb.Command):
    """Find the first checkpoint from A to B where an expression is true, and stop there.

Usage: img-bisect [--store DIR] [--accept-loss] A B EXPR

A and B are checkpoints of the store (numbers or names), A the earlier. The checkpoints from
A to B are restored as few as a binary search needs, EXPR evaluated by GDB at each (it is
assumed false at A and true at B; both are checked, and said when not so). The process is
left restored at the first checkpoint where EXPR is true; the path taken is printed.
--accept-loss is passed to each img-restore."""

    def __init__(self) -> None:
        super().__init__("img-bisect", gdb.COMMAND_RUNNING, gdb.COMPLETE_EXPRESSION)

    def invoke(self, argument: str, from_tty: bool) -> None:
        try:
            options, ends, expression = split_arguments(argument)
        except ValueError as error:
            raise gdb.GdbError(f"img-bisect: {error}") from None
        if len(ends) < 2 or not expression:
            raise gdb.GdbError("img-bisect: usage: img-bisect [--store DIR] [--accept-loss] A B "
                               "EXPR")
        try:
            _bisect(options, ends[0], ends[1], expression)
        except (ImageError, RestoreError, OSError) as error:
            raise gdb.GdbError(f"img-bisect: {error}") from None


def _bisect(options: dict[str, str | bool], first: str, last: str, expression: str) -> None:
    store = open_store(options.get("store"))  # type: ignore[arg-type]
    a, b = store.resolve(first), store.resolve(last)
    if a.number > b.number:
        raise ImageError(f"checkpoint {a.number} comes after {b.number}: give the earlier first")
    entries = [e for e in store.entries() if a.number <= e.number <= b.number]
    # The user's store and flags only: no text of the images goes into the command.
    option = f"--store {gdb_quoted(store.path)} " + (
        "--accept-loss " if options.get("accept_loss") else "")

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
        gdb.write(f"img-bisect: {_name(step.entry)}: {expression} = {step.value} "
                  f"({'true' if step.true else 'false'})\n")

    gdb.write(f"img-bisect: {len(entries)} checkpoints from {a.number} to {b.number}\n")
    outcome = bisect(entries, restore, evaluate, said)
    if outcome.note:
        gdb.write(f"img-bisect: {outcome.note}\n")
    if outcome.first is not None:
        gdb.write(f"img-bisect: first true at {_name(outcome.first)}, after "
                  f"{outcome.restores} restores; the process is restored there\n")
    elif outcome.restored is not None:
        gdb.write(f"img-bisect: the process is left at {_name(outcome.restored)}\n")
    gdb.execute("frame")


def _name(entry: object) -> str:
    name = getattr(entry, "name", None)
    return f"checkpoint {entry.number}" + (f" ({name})" if name else "")  # type: ignore[attr-defined]


def register() -> None:
    ImgDiff()
    ImgBisect()
