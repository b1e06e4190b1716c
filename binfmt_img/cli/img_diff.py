"""img-diff A B [--json] [--store DIR]: what changed between two process images or two
checkpoints of a store; no debugger needed.

A and B are each an image file (or an ELF core) or a checkpoint of the store (its number or
name). Shows registers per thread, VMAs added, removed or changed, the pages changed, and the
changed bytes as global and static variables (from the mapped files' symbol tables), heap
ranges and stack frames by function. `live` needs a debugger: the img-diff command of GDB or
LLDB. Exit status: 0 fine, 2 an image or checkpoint that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from binfmt_img.cli import parser, run
from binfmt_img.compare.diff import compare
from binfmt_img.compare.resolve import open_side
from binfmt_img.compare.text import render
from binfmt_img.errors import ImageError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        a = open_side(args.a, None, args.store)
        b = open_side(args.b, None, args.store)
        diff = compare(a, b)
    except (ImageError, OSError) as error:
        print("img-diff: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    print(json.dumps(diff.to_json(), indent=2) if args.json else render(diff))
    return 0


def _parser() -> argparse.ArgumentParser:
    result = parser("img-diff", __doc__)
    result.add_argument("a", help="image file or checkpoint (number or name)")
    result.add_argument("b", help="image file or checkpoint (number or name)")
    result.add_argument("--json", action="store_true", help="print one JSON object")
    result.add_argument("--store", help="the checkpoint store (default: $BINFMT_IMG_STORE, "
                        "else ./img-checkpoints)")
    return result


def console() -> None:
    run(main)
