"""img2core IMAGE [-o CORE]: write a process image (v0 or v1) as an ELF core that stock GDB
opens: `gdb EXE CORE`.

Exit status: 0 written, 2 an image that cannot be used or written (one line on stderr).
"""

from __future__ import annotations

import sys

from binfmt_img.cli import parser, run
from binfmt_img.errors import ImageError
from binfmt_img.formats import corefile, image_file


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    output = args.output or args.image.removesuffix(".img") + ".core"
    try:
        report = corefile.write_core(output, image_file.load(args.image))
    except ImageError as error:
        print("img2core: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    except OSError as error:
        print(f"img2core: {output}: {error.strerror}", file=sys.stderr)
        return 2
    print(f"img2core: {output}: {report.segments} segments, {report.bytes} bytes")
    return 0


def _parser():
    result = parser("img2core", __doc__)
    result.add_argument("image", help="image file (v0 or v1)")
    result.add_argument("-o", "--output", help="core to write (default: IMAGE without .img, "
                                               "plus .core)")
    return result


def console() -> None:
    """The `img2core` console script."""
    run(main)
