"""Opening, validating and atomically writing image files of either version."""

from __future__ import annotations

import errno
import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Iterable

from . import elfcore, v0, v1
from .errors import ImageError
from .model import Image
from .safeio import open_regular_file
from .validate import validate

FORMATS = ("v0", "v1")


class DirectWriter:
    """Writes page data with O_DIRECT, past the page cache: several times faster here for
    large images. Buffers that are not page aligned, and file systems without O_DIRECT
    (tmpfs), take the ordinary path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.direct: int | None = None
        self.plain: int | None = None

    def __enter__(self) -> DirectWriter:
        try:
            self.direct = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
        except OSError:
            self.direct = None
        self.plain = os.open(self.path, os.O_WRONLY)
        return self

    def __exit__(self, *_exc: object) -> None:
        for fd in (self.direct, self.plain):
            if fd is not None:
                os.close(fd)

    def write(self, offset: int, data: memoryview) -> None:
        fd = self.direct if self.direct is not None and _aligned(data) else self.plain
        assert fd is not None
        view = memoryview(data)
        while view:
            try:
                done = os.pwrite(fd, view, offset)
            except OSError as error:
                if fd != self.direct or error.errno != errno.EINVAL:
                    raise
                fd = self.plain  # O_DIRECT refused this one: write it plainly
                continue
            view, offset = view[done:], offset + done


def _aligned(data: memoryview) -> bool:
    """True when the buffer's address is page aligned, as O_DIRECT needs."""
    try:
        import ctypes

        view = memoryview(data)
        if view.readonly:
            return False  # ctypes cannot take the address of read-only memory
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return False
    return address % 4096 == 0 and len(data) % 4096 == 0


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
        with open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageError(f"{path}: empty file", 0)
            mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    except OSError as error:
        raise ImageError(f"{path}: {error.strerror}") from None
    try:
        image = parse(memoryview(mapped))
        image.mapping = mapped
        image.path = path
        return image
    except ImageError as error:
        raise ImageError(f"{path}: {error.what}", error.offset) from None


def load_any(path: str, warn: Callable[[str], None] | None = None) -> Image:
    """An image file, or an ELF core (by its magic) converted in memory as core2img does;
    the conversion's remarks (files gone or changed since the core) go to `warn`."""
    if elfcore.is_elf(path):
        return elfcore.read_core(path, warn=warn)
    return load(path)


def save(path: str, image: Image, fmt: str = "v1",
         pages: Iterable[tuple[int, memoryview | bytes]] | None = None) -> None:
    """Write an image to a temporary file beside `path`, then rename it into place."""
    if fmt not in FORMATS:
        raise ImageError(f"unknown format {fmt!r}; choose v0 or v1")
    if pages is None:
        pages = ((run.vaddr, b"".join(image.run_data(run)) if run.stride != 4096
                  else next(image.run_data(run))) for run in image.runs)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory; give a file name")
    try:
        fd, temporary = tempfile.mkstemp(prefix=".img-", dir=directory)
    except OSError as error:
        raise ImageError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            if fmt == "v0":
                v0.write(out, image, pages)
            else:
                with DirectWriter(temporary) as direct:
                    v1.write(out, image, pages, direct.write)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
