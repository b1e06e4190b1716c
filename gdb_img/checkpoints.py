"""GDB commands img-checkpoint and img-checkpoints: a store of checkpoints (binfmt_img.store),
and img-restore's store references (a number or a name where a FILE goes)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

import gdb

from binfmt_img import state
from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import Image
from binfmt_img.live.restore import load_image
from binfmt_img.store import frontend
from gdb_img import commands
from gdb_img.family import ImgCommand, progress_line, quiet, scheduler_locked
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


class ImgCheckpoint(ImgCommand):
    """Save the stopped process as a checkpoint in a store, or manage the store.

Usage: img-checkpoint [NAME] [--store DIR] [--progress] [--pack]   (or `img checkpoint ...`)
       img-checkpoint --delete N|NAME     remove a checkpoint
       img-checkpoint --prune KEEP        remove all but the last KEEP checkpoints
       img-checkpoint --export N|NAME FILE   write one checkpoint as a single image file
       img-checkpoint --import FILE [NAME]   add a single image file (v0 or v1)

The store is the directory --store DIR, else $BINFMT_IMG_STORE, else ./img-checkpoints.
Each checkpoint gets a number and an optional NAME; its pages are stored once by content
(pages already in the store cost nothing) and compressed. `img-checkpoints` lists them,
`img-restore N|NAME` restores one. --pack: the mapped files too, each stored once in the
store (img-dump --pack). The process is left stopped as it was: in a breakpoint's
command list, a `continue` after img-checkpoint goes on."""

    name = "img-checkpoint"

    def make_parser(self) -> argparse.ArgumentParser:
        return frontend.checkpoint_parser()

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        message = frontend.manage(args)
        if message is None:
            message = self._take(args)
        gdb.write(message + "\n")

    def _take(self, args: argparse.Namespace) -> str:
        if not gdb.selected_inferior().pid:
            raise RestoreError("no live process to checkpoint")
        store = frontend.open_store(args)
        with quiet(), scheduler_locked():  # as img-dump
            line = progress_line(self.name, args.progress)
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
            gdb.write(f"{self.name}: warning: {warning}\n", gdb.STDERR)
        return frontend.taken_line(entry, result)


class ImgCheckpoints(ImgCommand):
    """List the checkpoints of a store.

Usage: img-checkpoints [--store DIR] [--json]   (or `img checkpoints ...`)
Number, name, time, thread count, pc (with GDB's function and line for it), size on disk and
the bytes new in each checkpoint (pages the store did not hold before it)."""

    name = "img-checkpoints"
    completer = gdb.COMPLETE_NONE

    def make_parser(self) -> argparse.ArgumentParser:
        return frontend.list_parser()

    def run(self, args: argparse.Namespace, from_tty: bool) -> None:
        store = frontend.open_store(args, create=False)
        if args.json:
            gdb.write(json.dumps(frontend.table_json(store, describe_pc)) + "\n")
        else:
            gdb.write(frontend.table(store, describe_pc) + "\n")


def register() -> None:
    ImgCheckpoint()
    ImgCheckpoints()
