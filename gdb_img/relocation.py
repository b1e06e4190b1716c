"""img-restore's --exe, --map and --sysroot in GDB, and the symbols of moved files: GDB's
sysroot set to a tree mirroring the image's paths (binfmt_img/live/relocate.py)."""

from __future__ import annotations

import argparse
import os

import gdb

from binfmt_img.formats.model import Image
from binfmt_img.live import relocate
from gdb_img.target import gdb_quoted


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exe", metavar="PATH")
    parser.add_argument("--map", metavar="OLD=NEW", action="append", default=[])
    parser.add_argument("--sysroot", metavar="DIR")


def prepare(image: Image, args: argparse.Namespace) -> None:
    """Before a process is started for the image: its files found here."""
    how = relocate.Relocation(
        exe=os.path.expanduser(args.exe) if args.exe else None,
        maps=[relocate.parse_map(os.path.expanduser(m)) for m in args.map],
        sysroot=os.path.expanduser(args.sysroot) if args.sysroot else None)
    # Connected to a remote target (gdbserver): the files are on its machine, not here.
    connection = getattr(gdb.selected_inferior(), "connection", None)
    local = connection is None or connection.type == "native"
    for note in relocate.prepare(image, how, local):
        gdb.write(f"img-restore: {note}\n")


# GDB's sysroot and solib-search-path before a restore changed them, to put back for the
# next restore that moved nothing.
_saved: tuple[str, str] | None = None


def point_symbols(image: Image) -> None:
    """Where files moved, GDB reads the libraries the restored link map names (the
    original paths) from the tree of the files used."""
    global _saved
    root = relocate.debugger_root(image)
    if root is None:
        if _saved is not None:
            for name, value in zip(("sysroot", "solib-search-path"), _saved):
                gdb.execute(f"set {name} {value}", to_string=True)
            _saved = None
        return
    if _saved is None:
        _saved = (gdb.parameter("sysroot") or "", gdb.parameter("solib-search-path") or "")
    gdb.execute(f"set sysroot {gdb_quoted(root)}", to_string=True)
    gdb.execute(f"set solib-search-path {gdb_quoted(relocate.flat_dir(root))}",
                to_string=True)
    gdb.write(f"img-restore: GDB's sysroot is {root} (the files this restore used)\n")
