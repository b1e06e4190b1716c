"""img-pack IMAGE [-o OUT]: put the files a v1 image needs (its executable, libraries and
mapped data files) into it, once per distinct content, as img-dump --pack does, so that it
restores on a machine where they are missing or different.

The files are read where the image names them and must still be the ones it recorded (by
ELF build-id or content hash). Without -o the image is replaced (atomically). Exit status: 0
written, 2 refused (one line on stderr).
"""

from __future__ import annotations

import sys

from binfmt_img.cli import parser, run
from binfmt_img.errors import ImageError
from binfmt_img.formats import identity, image_file


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    output = args.output or args.image
    try:
        image = image_file.load(args.image)
        if image.format != "v1":
            raise ImageError(f"{args.image}: a {image.format} image; packing needs v1")
        if not image.contents:
            print("img-pack: warning: the image records no file contents (an older image): "
                  "the files are packed as they are now", file=sys.stderr)
        kept = {p for f in image.packed for p in f.paths}
        image.packed += [f for f in identity.pack(image) if not kept & set(f.paths)]
        # A compressed image (its pages read through a reader) stays so, with its codec.
        codec = getattr(image.reader, "codec", "zstd") if image.reader is not None else None
        image_file.save(output, image, "v1", compress=codec)
    except ImageError as error:
        print("img-pack: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    except OSError as error:
        print(f"img-pack: {error.filename or output}: {error.strerror}", file=sys.stderr)
        return 2
    size = sum(f.size for f in image.packed)
    print(f"img-pack: {output}: {len(image.packed)} files packed ({size} bytes)")
    return 0


def _parser():
    result = parser("img-pack", __doc__)
    result.add_argument("image", help="the v1 image to pack")
    result.add_argument("-o", "--output", help="image to write (default: replace IMAGE)")
    return result


def console() -> None:
    """The `img-pack` console script."""
    run(main)
