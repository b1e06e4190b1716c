"""What the GDB and LLDB checkpoint commands share: their arguments, the live checkpoint, the
table, and the store operations that need no process. No debugger here: the adapters pass
what they know (a Target, a function naming a pc) in."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable

from tabulate import tabulate

from binfmt_img.arguments import ArgumentError, Parser
from binfmt_img.errors import ImageError
from binfmt_img.formats import identity
from binfmt_img.formats.model import Image
from binfmt_img.live.dump import DumpPlan, DumpReport
from binfmt_img.live.target import Target
from binfmt_img.live.threads import while_spinning
from binfmt_img.store import Entry, Store

Describe = Callable[[int], str]  # pc -> "main at prog.c:12", or ""

CHECKPOINT_USAGE = """\
img-checkpoint [NAME] [--store DIR] [--progress] [--pack]
img-checkpoint --delete N|NAME | --prune KEEP | --export N|NAME FILE | --import FILE [NAME]"""


def checkpoint_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="img-checkpoint", add_help=False, usage=CHECKPOINT_USAGE)
    parser.add_argument("words", nargs="*")
    parser.add_argument("--store")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--pack", action="store_true")  # the mapped files too, as blobs
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--delete", metavar="N|NAME")
    what.add_argument("--prune", metavar="KEEP", type=int)
    what.add_argument("--export", metavar="N|NAME")
    what.add_argument("--import", dest="import_", metavar="FILE")
    return parser


def list_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="img-checkpoints", add_help=False,
                     usage="img-checkpoints [--store DIR] [--json]")
    parser.add_argument("--store")
    parser.add_argument("--json", action="store_true")
    return parser


def open_store(args: argparse.Namespace, create: bool = True) -> Store:
    return Store(Store.default_path(os.getcwd(), args.store), create=create)


def manage(args: argparse.Namespace) -> str | None:
    """The store operations of img-checkpoint that need no process: the message to print,
    or None when the command is a checkpoint of the live process."""
    if args.delete is not None:
        store = open_store(args, create=False)
        _no_words(args, 0)
        entry = store.delete(args.delete)
        return f"img-checkpoint: deleted checkpoint {entry.label}"
    if args.prune is not None:
        store = open_store(args, create=False)
        _no_words(args, 0)
        gone = store.prune(args.prune)
        return (f"img-checkpoint: deleted {len(gone)} checkpoints"
                + (f" ({', '.join(e.label for e in gone)})" if gone else "")
                + f", kept the last {args.prune}")
    if args.export is not None:
        store = open_store(args, create=False)
        if len(args.words) != 1:
            raise ArgumentError("img-checkpoint: --export N|NAME FILE: give one FILE")
        path = os.path.abspath(os.path.expanduser(args.words[0]))
        entry = store.export(args.export, path)
        return (f"img-checkpoint: checkpoint {entry.label} exported to {path} "
                f"({os.path.getsize(path)} bytes)")
    if args.import_ is not None:
        store = open_store(args)
        _no_words(args, 1)
        entry = store.import_image(os.path.abspath(os.path.expanduser(args.import_)),
                                   args.words[0] if args.words else None)
        return (f"img-checkpoint: imported {args.import_} as checkpoint {entry.label} "
                f"({_size(entry.new_bytes)} new)")
    _no_words(args, 1)
    return None


def _no_words(args: argparse.Namespace, most: int) -> None:
    if len(args.words) > most:
        raise ArgumentError(f"img-checkpoint: unexpected {' '.join(args.words[most:])!r}")


def take(target: Target, store: Store, name: str | None, describe: Describe,
         progress: Callable[[int, int], None] | None = None,
         pages: Callable[[DumpPlan], Iterable[tuple[int, memoryview | bytes]]] | None = None,
         pack: bool = False,
         prepare: Callable[[DumpPlan], None] | None = None) -> tuple[Entry, DumpReport]:
    """A checkpoint of the stopped process into the store (img-dump's work, into a store).
    `pages(plan)` gives the page chunks when the adapter must filter them (LLDB's traps);
    `prepare(plan)` adjusts the plan before it collects (LLDB leaves its own pages out)."""
    started = time.monotonic()
    plan = DumpPlan(target, "v1")
    if prepare is not None:
        prepare(plan)
    try:
        image = plan.collect()
        if pack:  # img-checkpoint --pack: the files, stored once in the store's blobs
            image.packed = identity.pack(image, plan.sources)
        label = describe(image.registers.get("rip", 0))
        chunks = pages(plan) if pages is not None else plan.pages(progress)
        entry = store.add(image, name, chunks, pc_label=label)
    finally:  # as img-dump: the next command finds the stop as it was
        reload_process = getattr(target, "reload_process", None)
        if reload_process is not None:
            while_spinning(target, reload_process)
    plan.report.bytes = entry.size
    plan.report.seconds = time.monotonic() - started
    return entry, plan.report


def taken_line(entry: Entry, report: DumpReport) -> str:
    return (f"img-checkpoint: checkpoint {entry.label}: {report.pages} pages, "
            f"{_size(entry.new_bytes)} new ({entry.new_pages} pages), "
            f"{_size(entry.size)} on disk, in {report.seconds:.2f} s")


def table(store: Store, describe: Describe) -> str:
    entries = store.entries()
    if not entries:
        return f"No checkpoints in {store.path}."
    rows = []
    for e in entries:
        where = describe(e.pc) or e.pc_label
        rows.append([e.number, e.name or "", time.strftime("%Y-%m-%d %H:%M:%S",
                                                           time.localtime(e.time)),
                     e.threads, f"{e.pc:#x}" + (f" {where}" if where else ""),
                     _size(e.size), _size(e.new_bytes)])
    return tabulate(rows, headers=["#", "name", "time", "threads", "pc", "on disk", "new"],
                    tablefmt="simple", disable_numparse=True)


def table_json(store: Store, describe: Describe) -> list[dict]:
    out = []
    for e in store.entries():
        fields = dict(e.__dict__)
        fields["where"] = describe(e.pc) or e.pc_label
        out.append(fields)
    return out


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def restore_source(ref: str, store_dir: str | None) -> tuple[Image, str] | None:
    """img-restore's argument as a store reference: a path that exists wins (None here);
    else a checkpoint number or name in the store. (image, what) or None."""
    if os.path.exists(os.path.expanduser(ref)):
        return None
    path = Store.default_path(os.getcwd(), store_dir)
    if not os.path.isdir(path):
        if store_dir is not None:
            raise ImageError(f"{path}: no such checkpoint store")
        return None  # not a checkpoint either: the file error names the path
    store = Store(path, create=False)
    entry = store.resolve(ref)
    return store.load(entry.number), f"checkpoint {entry.label}"
