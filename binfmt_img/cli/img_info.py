"""img-info IMAGE [--json] [--verify]: describe a process image or an ELF core of one; no
debugger needed.

Exit status: 0 fine, 2 a broken image (one line on stderr) or page runs failing --verify.
"""

from __future__ import annotations

import json
import sys

from binfmt_img import report
from binfmt_img.cli import parser, run
from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        image = image_file.load_any(args.image, warn=lambda text: print(
            f"img-info: warning: {text}", file=sys.stderr))
    except ImageError as error:
        print("img-info: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    bad = report.bad_runs(image) if args.verify else None
    if args.json:
        print(json.dumps(report.report_json(image, bad), indent=2))
    else:
        print(report.report_text(image, verify=args.verify, bad=bad))
    if bad:
        print(f"img-info: {report.plural(len(bad), 'page run')} failing --verify",
              file=sys.stderr)
        return 2
    return 0


def _parser():
    result = parser("img-info", __doc__)
    result.add_argument("image", help="image file (v0 or v1) or an ELF core")
    result.add_argument("--json", action="store_true", help="print one JSON object")
    result.add_argument("--verify", action="store_true", help="check every page run's crc32")
    return result


def console() -> None:
    """The `img-info` console script."""
    run(main)
