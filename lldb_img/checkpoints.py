"""LLDB commands img-checkpoint and img-checkpoints (a store of checkpoints, binfmt_img.store),
and img-restore's store references. Commands of the family (commands.Command): parsed by
LLDB 18+ from their option definitions (parsed.py)."""

from __future__ import annotations

import argparse
import json
import os

import lldb

from binfmt_img import state
from binfmt_img.arguments import ArgumentError
from binfmt_img.formats.model import Image
from binfmt_img.live import progress
from binfmt_img.live.restore import load_image
from binfmt_img.store import Store, frontend
from lldb_img.allocations import leave_out_lldb_memory
from lldb_img.commands import Command, Option
from lldb_img.family import (
    batch,
    breakpoints_lifted,
    masked_pages,
    stopped_process,
    synchronous,
)
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


class ImgCheckpoint(Command):
    """img-checkpoint [NAME] [--store DIR] [--progress] [--pack]

Saves the stopped process as the next checkpoint of the store (--store DIR, else
$BINFMT_IMG_STORE, else ./img-checkpoints), named NAME if given; pages already in the store
cost nothing. Or manages the store: --delete N|NAME; --prune KEEP (all but the last KEEP go);
--export N|NAME FILE (one checkpoint as a single image file); --import FILE [NAME] (a single
image into the store). --pack: the mapped files too, each stored once. img-checkpoints lists
the checkpoints, img-restore N|NAME restores one."""

    name = "img-checkpoint"
    short_help = "Save the stopped process as a checkpoint in a store, or manage the store."
    arguments = (("words", "star"),)  # NAME, or --export's FILE, or --import's NAME
    options = (
        Option("s", "store", "The checkpoint store directory.", value=True),
        Option("P", "progress", "Show a progress line, in batch mode too."),
        Option("k", "pack", "Store the mapped files too (executable, libraries), once each."),
        Option("d", "delete", "Remove checkpoint N|NAME.", value=True),
        Option("p", "prune", "Remove all but the last KEEP checkpoints.", value=True),
        Option("e", "export", "Write checkpoint N|NAME as a single image file FILE.",
               value=True),
        Option("i", "import", "Add the single image file FILE (v0 or v1), named NAME if given.",
               value=True),
    )

    def invoke(self, debugger: lldb.SBDebugger, args: argparse.Namespace,
               result: lldb.SBCommandReturnObject) -> None:
        args.import_ = getattr(args, "import")  # the store's name for it (a keyword)
        given = [f"--{o}" for o in ("delete", "prune", "export", "import")
                 if getattr(args, o) is not None]
        if len(given) > 1:
            raise ArgumentError(f"argument {given[1]}: not allowed with argument {given[0]}")
        if args.prune is not None:
            try:
                args.prune = int(args.prune)
            except ValueError:
                raise ArgumentError(f"argument --prune: invalid int value: {args.prune!r}"
                                    ) from None
        message = frontend.manage(args)
        if message is None:
            message = self._take(debugger, args, result)
        result.AppendMessage(message)

    def _take(self, debugger: lldb.SBDebugger, args: argparse.Namespace,
              result: lldb.SBCommandReturnObject) -> str:
        store = frontend.open_store(args)
        with synchronous(debugger):  # img-dump's own steps
            process = stopped_process(debugger)
            inferior = LldbTarget(process)
            target = process.GetTarget()
            line = progress.on_stderr(self.name, args.progress, batch())
            with breakpoints_lifted(target):
                entry, report = frontend.take(
                    inferior, store, args.words[0] if args.words else None,
                    lambda pc: describe_pc(target, pc), line,
                    pages=lambda plan: masked_pages(plan, inferior, line),
                    pack=args.pack, prepare=lambda plan: leave_out_lldb_memory(plan, process))
                line.finish()
            inferior.memory_changed()
        for warning in report.warnings:
            result.AppendWarning(warning)
        return frontend.taken_line(entry, report)


class ImgCheckpoints(Command):
    """img-checkpoints [--store DIR] [--json]

Lists the checkpoints of a store: number, name, time, thread count, pc (with LLDB's function
and line for it), size on disk and the bytes new in each (pages the store did not hold before
it)."""

    name = "img-checkpoints"
    short_help = "List the checkpoints of a store."
    arguments = ()
    options = (
        Option("s", "store", "The checkpoint store directory.", value=True),
        Option("j", "json", "Print one JSON list instead of a table."),
    )

    def invoke(self, debugger: lldb.SBDebugger, args: argparse.Namespace,
               result: lldb.SBCommandReturnObject) -> None:
        store = frontend.open_store(args, create=False)
        target = debugger.GetSelectedTarget()

        def describe(pc: int) -> str:
            return describe_pc(target, pc)
        if args.json:
            result.AppendMessage(json.dumps(frontend.table_json(store, describe)))
        else:
            result.AppendMessage(frontend.table(store, describe))


COMMANDS = (ImgCheckpoint, ImgCheckpoints)
