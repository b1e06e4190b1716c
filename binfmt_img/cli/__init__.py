"""The command-line tools (img-info, core2img, img2core): the console scripts of an installed
package and the checkout's scripts/ call the same `run` functions."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from binfmt_img import __version__


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser whose description is the whole first paragraph of `doc` (the
    usage line dropped) and which answers --version."""
    summary = doc.strip().split("\n\n")[0]
    summary = " ".join(summary.split(": ", 1)[1].split()) if ": " in summary else summary
    result = argparse.ArgumentParser(prog=prog, description=summary[:1].upper() + summary[1:],
                                     epilog=_epilog(doc))
    result.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return result


def _epilog(doc: str) -> str | None:
    rest = doc.strip().split("\n\n")[1:]
    return " ".join(" ".join(part.split()) for part in rest) or None


def run(main: Callable[[list[str] | None], int]) -> None:
    """Run a tool's main and exit with its status; `TOOL | head` ends quietly."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(None))
