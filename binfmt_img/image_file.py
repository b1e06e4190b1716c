"""Opening, validating and atomically writing image files of either version."""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from collections.abc import Iterable

from . import v0, v1
from .errors import ImageError
from .model import Image
from .validate import validate

FORMATS = ("v0", "v1")


def parse(buf: memoryview) -> Image:
    """Parse and validate an image held in memory; any damage raises ImageError."""
    if len(buf) < 8:
        raise ImageError(f"truncated header: {len(buf)} bytes", 0)
    magic, version = struct.unpack_from("<II", buf, 0)
    if magic != v0.MAGIC:
        raise ImageError(f"not an image: magic {magic:#010x}, expected {v0.MAGIC:#010x}", 0)
    if version == v0.VERSION:
        image, offsets = v0.read(buf)
    elif version == v1.VERSION:
        image, offsets = v1.read(buf)
    else:
        raise ImageError(f"unknown image version {version:#x}", 4)
    validate(image, offsets)
    return image


def load(path: str) -> Image:
    """Map an image file read-only and parse it; the pages stay in the file until used."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageError(f"{path}: empty file", 0)
            mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    except OSError as error:
        raise ImageError(f"{path}: {error.strerror}") from None
    try:
        image = parse(memoryview(mapped))
        image.mapping = mapped
        return image
    except ImageError as error:
        raise ImageError(f"{path}: {error.what}", error.offset) from None


def save(path: str, image: Image, fmt: str = "v1",
         pages: Iterable[tuple[int, memoryview | bytes]] | None = None) -> None:
    """Write an image to a temporary file beside `path`, then rename it into place."""
    if fmt not in FORMATS:
        raise ImageError(f"unknown format {fmt!r}; choose v0 or v1")
    if pages is None:
        pages = ((run.vaddr, b"".join(image.run_data(run)) if run.stride != 4096
                  else next(image.run_data(run))) for run in image.runs)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".img-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            (v0 if fmt == "v0" else v1).write(out, image, pages)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
