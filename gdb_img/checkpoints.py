"""GDB commands img-checkpoint and img-checkpoints: a store of checkpoints (binfmt_img.store),
and img-restore's store references (a number or a name where a FILE goes)."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable

import gdb

from binfmt_img import state
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.formats.model import Image
from binfmt_img.live.restore import load_image
from binfmt_img.store import frontend
from gdb_img import commands
from gdb_img.target import GdbTarget


def describe_pc(pc: int) -> str:
    """What GDB knows of an address: "main at prog.c:12", "in libc.so.6", or ""."""
    name = None
    try:
        block = gdb.block_for_pc(pc)
        while block is not None and block.function is None:
            block = block.superblock
        if block is not None:
            name = block.function.print_name
    except RuntimeError:
        pass
    if name is None:
        try:
            text = gdb.execute(f"info symbol {pc:#x}", to_string=True).strip()
        except gdb.error:
            text = ""
        if text and not text.startswith("No symbol"):
            name = text.split(" in section ")[0]
    where = ""
    try:
        sal = gdb.find_pc_line(pc)
        if sal.symtab is not None and sal.line:
            where = f"{os.path.basename(sal.symtab.filename)}:{sal.line}"
    except RuntimeError:
        pass
    return " ".join(p for p in ((name or ""), f"at {where}" if where else "") if p)


def restore_image(argument: str, store: str | None, warn: Callable[[str], None]) -> Image:
    """img-restore's FILE: a path that exists, else a checkpoint of the store."""
    found = frontend.restore_source(argument, store)
    if found is not None:
        image, what = found
        gdb.write(f"img-restore: {what} of {frontend.Store.default_path(os.getcwd(), store)}"
                  "\n")
        return state.decode(image)
    return load_image(os.path.abspath(os.path.expanduser(argument)), warn=warn)


class _HelpShown(Exception):
    pass


def _parse(parser, argument: str):
    try:
        words = shlex.split(argument)
        if "-h" in words or "--help" in words:
            gdb.execute(f"help {parser.prog}")
            raise _HelpShown
        return parser.parse_args(words)
    except ValueError as error:
        raise gdb.GdbError(f"{parser.prog}: {error}") from None
    except frontend.ArgumentError as error:
        raise gdb.GdbError(str(error)) from None


class ImgCheckpoint(gdb.Command):
    """Save the stopped process as a checkpoint in a store, or manage the store.

Usage: img-checkpoint [NAME] [--store DIR] [--progress] [--pack]
       img-checkpoint --delete N|NAME     remove a checkpoint
       img-checkpoint --prune KEEP        remove all but the last KEEP checkpoints
       img-checkpoint --export N|NAME FILE   write one checkpoint as a single image file
       img-checkpoint --import FILE [NAME]   add a single image file (v0 or v1)

The store is the directory --store DIR, else $BINFMT_IMG_STORE, else ./img-checkpoints.
Each checkpoint gets a number and an optional NAME; its pages are stored once by content
(pages already in the store cost nothing) and compressed. `img-checkpoints` lists them,
`img-restore N|NAME` restores one. --pack: the mapped files too, each stored once in the
store (img-dump --pack)."""

    def __init__(self) -> None:
        super().__init__("img-checkpoint", gdb.COMMAND_DATA, gdb.COMPLETE_FILENAME)

    def invoke(self, argument: str, from_tty: bool) -> None:
        try:
            args = _parse(frontend.checkpoint_parser(), argument)
        except _HelpShown:
            return
        try:
            message = frontend.manage(args)
            if message is None:
                message = self._take(args)
        except frontend.ArgumentError as error:
            raise gdb.GdbError(str(error)) from None
        except (ImageError, RestoreError, OSError) as error:
            raise gdb.GdbError(f"img-checkpoint: {error}") from None
        except KeyboardInterrupt:
            raise gdb.GdbError("img-checkpoint: interrupted") from None
        gdb.write(message + "\n")

    def _take(self, args) -> str:
        if not gdb.selected_inferior().pid:
            raise RestoreError("no live process to checkpoint")
        store = frontend.open_store(args)
        with commands._quiet(), commands._scheduler_locked():  # noqa: SLF001 - img-dump's
            line = commands._progress("img-checkpoint", args.progress)  # noqa: SLF001
            target = GdbTarget()
            try:
                entry, result = frontend.take(target, store, args.words[0] if args.words
                                              else None, describe_pc, line,
                                              pack=args.pack)
            finally:
                target.sync()
                target.put_back_stop()
            line.finish()
        commands.last_dump = result
        for warning in result.warnings:
            gdb.write(f"img-checkpoint: warning: {warning}\n", gdb.STDERR)
        return frontend.taken_line(entry, result)


class ImgCheckpoints(gdb.Command):
    """List the checkpoints of a store.

Usage: img-checkpoints [--store DIR] [--json]
Number, name, time, thread count, pc (with GDB's function and line for it), size on disk and
the bytes new in each checkpoint (pages the store did not hold before it)."""

    def __init__(self) -> None:
        super().__init__("img-checkpoints", gdb.COMMAND_DATA, gdb.COMPLETE_NONE)

    def invoke(self, argument: str, from_tty: bool) -> None:
        try:
            args = _parse(frontend.list_parser(), argument)
        except _HelpShown:
            return
        try:
            store = frontend.open_store(args, create=False)
            if args.json:
                gdb.write(json.dumps(frontend.table_json(store, describe_pc)) + "\n")
            else:
                gdb.write(frontend.table(store, describe_pc) + "\n")
        except (ImageError, OSError) as error:
            raise gdb.GdbError(f"img-checkpoints: {error}") from None


def register() -> None:
    ImgCheckpoint()
    ImgCheckpoints()
