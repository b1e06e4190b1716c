"""img-restore's --exe, --map and --sysroot and img-dump's --pack in LLDB (the core is
binfmt_img/live/relocate.py). LLDB's modules are then loaded from the files the restore
used: lldb_img.modules reads image.moved."""

from __future__ import annotations

import argparse
import os

import lldb

from binfmt_img.formats import identity
from binfmt_img.formats.model import Image
from binfmt_img.live import relocate


def prepare(debugger: lldb.SBDebugger, image: Image, args: argparse.Namespace,
            result: lldb.SBCommandReturnObject) -> None:
    """Before a process is started for the image: its files found here."""
    how = relocate.Relocation(
        exe=os.path.expanduser(args.exe) if args.exe else None,
        maps=[relocate.parse_map(os.path.expanduser(m)) for m in args.map or []],
        sysroot=os.path.expanduser(args.sysroot) if args.sysroot else None)
    for note in relocate.prepare(image, how):
        result.AppendMessage(f"img-restore: {note}")


def pack(image: Image, args: argparse.Namespace, sources: dict[str, str]) -> None:
    """img-dump --pack: the files the image needs, into it (read from `sources`, the
    dump's DumpPlan.sources, where it names them)."""
    if getattr(args, "pack", False):
        if image.format != "v1":
            raise ValueError("--pack needs the v1 format")
        image.packed = identity.pack(image, sources)


def add_module(target: lldb.SBTarget, image: Image, path: str) -> lldb.SBModule:
    """A module for `path` (a file a restore used); for a moved one, also known by the
    image's own path (its platform file), which the restored link map names: LLDB's loader
    then finds it rather than adding that path a second time."""
    original = next((o for o, n in image.moved.items() if n == path), None)
    if original is None:
        return target.AddModule(path, None, None)
    spec = lldb.SBModuleSpec()
    spec.SetFileSpec(lldb.SBFileSpec(path))
    spec.SetPlatformFileSpec(lldb.SBFileSpec(original))
    return target.AddModule(spec)
