"""LLDB commands img-checkpoint and img-checkpoints (a store of checkpoints, binfmt_img.store),
and img-restore's store references. Raw commands with argparse: their options take values."""

from __future__ import annotations

import json
import os
import shlex

import lldb

from binfmt_img import state
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.formats.model import Image
from binfmt_img.live import progress
from binfmt_img.live.restore import load_image
from binfmt_img.store import Store, frontend
from lldb_img import commands
from lldb_img.target import LldbTarget


def describe_pc(target: lldb.SBTarget, pc: int) -> str:
    """What LLDB knows of an address: "main at prog.c:12", or ""."""
    if not target.IsValid():
        return ""
    address = target.ResolveLoadAddress(pc)
    if not address.IsValid() or not address.GetModule().IsValid():
        address = lldb.SBAddress(pc, target)  # no process: the file addresses
    name = address.GetFunction().GetName() or address.GetSymbol().GetName() or ""
    line = address.GetLineEntry()
    where = ""
    if line.IsValid() and line.GetLine():
        where = f"{line.GetFileSpec().GetFilename()}:{line.GetLine()}"
    return " ".join(p for p in (name, f"at {where}" if where else "") if p)


def restore_image(argument: str, store: str | None,
                  result: lldb.SBCommandReturnObject) -> Image:
    """img-restore's FILE: a path that exists, else a checkpoint of the store."""
    found = frontend.restore_source(argument, store)
    if found is not None:
        image, what = found
        result.AppendMessage(f"img-restore: {what} of "
                             f"{Store.default_path(os.getcwd(), store)}")
        return state.decode(image)
    return load_image(os.path.abspath(os.path.expanduser(argument)), warn=result.AppendWarning)


class _Raw:
    """A raw LLDB command: the whole line parsed by argparse, errors as one line."""

    name = ""
    short_help = ""

    def __init__(self, debugger: lldb.SBDebugger, internal_dict: dict) -> None:
        pass

    def get_short_help(self) -> str:
        return self.short_help

    def get_long_help(self) -> str:
        return " ".join((self.__doc__ or "").split())

    def parser(self):
        raise NotImplementedError

    def __call__(self, debugger: lldb.SBDebugger, command: str, exe_ctx: lldb.SBExecutionContext,
                 result: lldb.SBCommandReturnObject) -> None:
        try:
            words = shlex.split(command)
            if "-h" in words or "--help" in words:
                result.AppendMessage(f"{self.short_help}\n{self.parser().format_usage()}"
                                     f"{self.get_long_help()}")
                return
            self.invoke(debugger, self.parser().parse_args(words), result)
        except (frontend.ArgumentError, ValueError, ImageError, RestoreError,
                OSError) as error:
            text = str(error)
            result.SetError(" ".join((text if text.startswith(self.name)
                                      else f"{self.name}: {text}").split()))
        except Exception as error:  # a bug still comes back as one line
            result.SetError(f"{self.name}: internal error: {type(error).__name__}: {error}")

    def invoke(self, debugger, args, result) -> None:
        raise NotImplementedError


class ImgCheckpoint(_Raw):
    """img-checkpoint [NAME] [--store DIR] [--progress] [--pack] saves the stopped process as
    the next checkpoint of the store (--store DIR, else $BINFMT_IMG_STORE, else ./img-checkpoints);
    pages already in the store cost nothing. img-checkpoint --delete N|NAME, --prune KEEP
    (all but the last KEEP go), --export N|NAME FILE (a single image file), --import FILE
    [NAME] (a single image into the store). --pack: the mapped files too, stored once."""

    name = "img-checkpoint"
    short_help = "Save the stopped process as a checkpoint in a store, or manage the store."

    def parser(self):
        return frontend.checkpoint_parser()

    def invoke(self, debugger, args, result) -> None:
        message = frontend.manage(args)
        if message is None:
            message = self._take(debugger, args, result)
        result.AppendMessage(message)

    def _take(self, debugger, args, result) -> str:
        store = frontend.open_store(args)
        with commands._synchronous(debugger):  # noqa: SLF001 - img-dump's own steps
            process = commands._stopped_process(debugger)  # noqa: SLF001
            inferior = LldbTarget(process)
            target = process.GetTarget()
            line = progress.on_stderr("img-checkpoint", args.progress,
                                      commands._batch())  # noqa: SLF001
            with commands._breakpoints_lifted(target):  # noqa: SLF001
                entry, report = frontend.take(
                    inferior, store, args.words[0] if args.words else None,
                    lambda pc: describe_pc(target, pc), line,
                    pages=lambda plan: commands._masked_pages(plan, inferior,  # noqa: SLF001
                                                              line),
                    pack=args.pack)
                line.finish()
            inferior.memory_changed()
        for warning in report.warnings:
            result.AppendWarning(warning)
        return frontend.taken_line(entry, report)


class ImgCheckpoints(_Raw):
    """img-checkpoints [--store DIR] [--json] lists the checkpoints of a store: number, name,
    time, thread count, pc (with LLDB's function and line for it), size on disk and the bytes
    new in each (pages the store did not hold before it)."""

    name = "img-checkpoints"
    short_help = "List the checkpoints of a store."

    def parser(self):
        return frontend.list_parser()

    def invoke(self, debugger, args, result) -> None:
        store = frontend.open_store(args, create=False)
        target = debugger.GetSelectedTarget()

        def describe(pc: int) -> str:
            return describe_pc(target, pc)
        if args.json:
            result.AppendMessage(json.dumps(frontend.table_json(store, describe)))
        else:
            result.AppendMessage(frontend.table(store, describe))


COMMANDS = (ImgCheckpoint, ImgCheckpoints)
