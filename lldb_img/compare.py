"""LLDB commands img-diff (a command of the family: commands.Command, parsed by LLDB 18+) and
img-bisect (binfmt_img/compare), a raw command: its expression is the user's own text, quotes
and all."""

from __future__ import annotations

import argparse
import json
from typing import Any

import lldb

from binfmt_img.arguments import one_line
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
from binfmt_img.errors import ImageError, RestoreError
from lldb_img.commands import Command, Option
from lldb_img.family import stopped_process, synchronous
from lldb_img.target import LldbTarget


def _text(value: lldb.SBValue) -> str:
    """A value as `frame variable` shows it, on one line."""
    if value.GetNumChildren() == 0 or value.GetType().IsPointerType():
        summary = value.GetSummary()
        shown = value.GetValue() or ""
        return f"{shown} {summary}".strip() if summary else shown
    array = value.GetType().IsArrayType()
    parts = [(_text(child) if array else f"{child.GetName()} = {_text(child)}")
             for child in (value.GetChildAtIndex(i) for i in range(value.GetNumChildren()))]
    return "{" + ", ".join(parts) + "}"


class LldbValues:
    """Variables typed by LLDB's symbols: SBTarget.FindGlobalVariables for the type,
    SBTarget.CreateValueFromData for the value made from the bytes."""

    def __init__(self, target: lldb.SBTarget) -> None:
        self.target = target

    def format_value(self, name: str, path: str, data: bytes) -> tuple[str, str] | None:
        if not self.target.IsValid():
            return None
        found = self.target.FindGlobalVariables(name, 1)
        if found.GetSize() == 0:
            return None
        kind = found.GetValueAtIndex(0).GetType()
        if not kind.IsValid() or kind.GetByteSize() != len(data):
            return None
        error = lldb.SBError()
        raw = lldb.SBData()
        raw.SetData(error, data, self.target.GetByteOrder(), self.target.GetAddressByteSize())
        if error.Fail():
            return None
        value = self.target.CreateValueFromData(name, raw, kind)
        if not value.IsValid():
            return None
        return _text(value), kind.GetName()


class _CompareTarget(LldbTarget):
    """The live process, with LLDB's unwinder for stack frames."""

    def stack_frames(self) -> list[tuple[int, str]]:
        """(rsp in the frame, function) of the selected thread's frames, innermost first."""
        thread = self.process.GetSelectedThread()
        return [(frame.GetSP(), frame.GetFunctionName() or f"{frame.GetPC():#x}")
                for frame in list(thread)[:256]]


class ImgDiff(Command):
    """img-diff A B [--json] [--store DIR]

Compares two checkpoints, images or the live process. A and B are each an image file, a
checkpoint of the store (number or name) or `live` (the stopped process). Shows registers per
thread, VMAs added, removed or changed, the pages changed, and the changed memory as global
and static variables by name (old and new values, typed by LLDB where it knows the type), heap
ranges and stack frames by function."""

    name = "img-diff"
    short_help = "Compare two checkpoints, images or the live process."
    arguments = (("a", "plain"), ("b", "plain"))
    options = (
        Option("j", "json", "Print one JSON object instead of text."),
        Option("s", "store", "The checkpoint store A and B may name checkpoints of.",
               value=True),
    )

    def invoke(self, debugger: lldb.SBDebugger, args: argparse.Namespace,
               result: lldb.SBCommandReturnObject) -> None:
        target = debugger.GetSelectedTarget()
        with synchronous(debugger):
            live = (_CompareTarget(stopped_process(debugger)) if LIVE in (args.a, args.b)
                    else None)
            a = open_side(args.a, live, args.store)
            b = open_side(args.b, live, args.store)
            diff = compare(a, b, LldbValues(target))
        result.AppendMessage(json.dumps(diff.to_json()) if args.json else render(diff))


PARSED = (ImgDiff,)  # with option definitions; img-bisect is raw (its EXPR is free text)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImgBisect:
    """Finds the first checkpoint from A to B where the expression EXPR is true, and stops
    there, restored. A and B are checkpoints of the store (numbers or names), A the earlier.
    The checkpoints are restored as few as a binary search needs, EXPR evaluated by LLDB at
    each (assumed false at A and true at B; both are checked, and said when not so); the path
    taken is printed. EXPR is the rest of the line, as typed."""

    name = "img-bisect"
    short_help = "Find the first checkpoint where an expression is true."
    usage = "img-bisect [--store DIR] [--accept-loss] A B EXPR"
    options = (("--store DIR", "The checkpoint store (else $BINFMT_IMG_STORE, else "
                "./img-checkpoints)."),
               ("--accept-loss", "Passed to each img-restore."),
               ("-h (--help)", "Show this command's help."))

    def __init__(self, debugger: lldb.SBDebugger, internal_dict: dict) -> None:
        pass

    def get_short_help(self) -> str:
        return self.short_help

    def get_long_help(self) -> str:
        """LLDB wraps the text itself: one line a paragraph."""
        lines = [f"Usage: {self.usage}", " ".join((self.__doc__ or "").split()), "Options:"]
        return "\n\n".join(lines + [f"{option}: {text}" for option, text in self.options])

    def __call__(self, debugger: lldb.SBDebugger, command: str, exe_ctx: lldb.SBExecutionContext,
                 result: lldb.SBCommandReturnObject) -> None:
        if asks_help(command):
            debugger.GetCommandInterpreter().HandleCommand(f"help {self.name}", result)
            return
        try:
            self.invoke(debugger, command, result)
        except (ValueError, ImageError, RestoreError, OSError) as error:
            result.SetError(one_line(self.name, error))
        except Exception as error:  # noqa: BLE001 - one line, not a traceback
            result.SetError(one_line(self.name, f"internal error: {type(error).__name__}: "
                                                f"{error}"))

    def invoke(self, debugger: lldb.SBDebugger, command: str,
               result: lldb.SBCommandReturnObject) -> None:
        options, ends, expression = split_arguments(command)
        if len(ends) < 2 or not expression:
            raise ValueError(f"usage: {self.usage}")
        store = open_store(options.get("store"))  # type: ignore[arg-type]
        entries = checkpoints_between(store, ends[0], ends[1])
        # The user's store and flags only: no text of the images goes into the command.
        option = f"--store {_quoted(store.path)} " + (
            "--accept-loss " if options.get("accept_loss") else "")
        interpreter = debugger.GetCommandInterpreter()
        lines = [header_line(entries)]

        def restore(entry: Any) -> None:
            number = int(entry.number)  # a number, never the name: no image text
            _fresh_process(debugger)
            done = lldb.SBCommandReturnObject()
            interpreter.HandleCommand(f"img-restore --yes {option}{number}", done)
            if not done.Succeeded():
                raise RestoreError(f"restoring checkpoint {number}: {done.GetError().strip()}")

        def evaluate() -> tuple[bool, str]:
            process = debugger.GetSelectedTarget().GetProcess()
            frame = process.GetSelectedThread().GetSelectedFrame()
            value = frame.EvaluateExpression(expression)
            if value.GetError().Fail():
                raise RestoreError(f"{expression}: {value.GetError().GetCString()}")
            return value.GetValueAsUnsigned() != 0, _text(value)

        def said(step: Step) -> None:
            lines.append(step_line(expression, step))

        with synchronous(debugger):
            outcome = bisect(entries, restore, evaluate, said)
        lines += outcome_lines(outcome)
        result.AppendMessage("\n".join(lines))


def _fresh_process(debugger: lldb.SBDebugger) -> None:
    """Kill the process, so that img-restore starts a new one: LLDB keeps the memory it
    allocated in the process for expressions (a page mapped by the first one) and reuses it,
    but a restore in place unmaps it, and every later expression then fails ("couldn't
    allocate a temporary region for the result")."""
    process = debugger.GetSelectedTarget().GetProcess()
    if process.IsValid() and process.GetState() == lldb.eStateStopped:
        process.Kill()


def register(debugger: lldb.SBDebugger) -> None:
    """img-bisect as a raw command (`command script add -c`): LLDB leaves its text to it."""
    done = lldb.SBCommandReturnObject()
    debugger.GetCommandInterpreter().HandleCommand(
        f"command script add -o -c {__name__}.ImgBisect {ImgBisect.name}", done)
