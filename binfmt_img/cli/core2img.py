"""core2img CORE [-o IMAGE] [--exe PATH]: convert an ELF core of an x86-64 Linux process (the
kernel's, or GDB's gcore) into a v1 image that img-restore resumes.

Exit status: 0 written (remarks on stderr), 2 a core that cannot be used (one line on stderr).
"""

from __future__ import annotations

import sys

from binfmt_img.cli import parser, run
from binfmt_img.errors import ImageError
from binfmt_img.formats import elfcore, image_file
from binfmt_img.formats.model import signal_name


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    output = args.output or args.core + ".img"

    def warn(message: str) -> None:
        print(f"core2img: warning: {message}", file=sys.stderr)

    try:
        image = elfcore.read_core(args.core, exe=args.exe, warn=warn)
        image_file.save(output, image, "v1")
    except ImageError as error:
        print("core2img: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    except OSError as error:
        print(f"core2img: {output}: {error.strerror}", file=sys.stderr)
        return 2
    stopped = f", {signal_name(image.signal.number)}" if image.signal else ""
    print(f"core2img: {output}: {len(image.threads)} threads, {len(image.vmas)} VMAs, "
          f"{image.page_count} pages{stopped}")
    return 0


def _parser():
    result = parser("core2img", __doc__)
    result.add_argument("core", help="ELF core file")
    result.add_argument("-o", "--output", help="image to write (default: CORE.img)")
    result.add_argument("--exe", help="the executable, where the core's path is wrong")
    return result


def console() -> None:
    """The `core2img` console script."""
    run(main)
