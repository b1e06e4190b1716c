"""Opening, validating and atomically writing image files of either version."""

from __future__ import annotations

import errno
import mmap
import os
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from binfmt_img.errors import ImageError
from binfmt_img.formats import elfcore, filekind, v0, v1
from binfmt_img.formats.model import Image
from binfmt_img.formats.validate import validate
from binfmt_img.safeio import open_regular, open_regular_file

FORMATS = ("v0", "v1")


class DirectWriter:
    """Writes page data through the page cache in pieces of at most PIECE bytes, or, with
    `direct`, with O_DIRECT past it. Measured here (img-dump of a 320 MiB heap and of 1 GiB,
    against gcore, which writes 1 MiB at a time): 1 MiB writes into the page cache cost
    0.08 s of CPU for 320 MiB and never wait for the disk; O_DIRECT writes cost no CPU but
    wait for a disk other processes share (0.25 to 0.9 s for the same 320 MiB); and writes of
    16 MiB into the page cache make the kernel allocate large folios, 0.7 to 0.9 s. With
    O_DIRECT, buffers that are not page aligned and file systems without it (tmpfs) take the
    ordinary path. Small writes that follow each other in the file (a process of many
    one-page mappings gives one per page) are gathered into one buffer first."""

    GATHER = 1 << 22  # bytes gathered before a write; larger pieces go straight out
    PIECE = 1 << 20  # bytes per write into the page cache

    def __init__(self, path: str, direct: bool = False) -> None:
        self.path, self.use_direct = path, direct
        self.direct: int | None = None
        self.plain: int | None = None
        self._buffer: mmap.mmap | None = None
        self._start = 0  # file offset of the gathered bytes
        self._used = 0
        self._helper: ThreadPoolExecutor | None = None

    def __enter__(self) -> DirectWriter:
        try:
            if self.use_direct:
                self.direct = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
        except OSError:
            self.direct = None
        self.plain = os.open(self.path, os.O_WRONLY)
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            if self._helper is not None:
                self._helper.shutdown()
            for fd in (self.direct, self.plain):
                if fd is not None:
                    os.close(fd)
            if self._buffer is not None:
                self._buffer.close()

    def write(self, offset: int, data: memoryview) -> None:
        size = len(data)
        if size >= self.GATHER or size % 4096 or offset % 4096:
            self.flush()
            self._write(offset, data)
            return
        if self._used and (offset != self._start + self._used
                           or self._used + size > self.GATHER):
            self.flush()
        if self._buffer is None:
            self._buffer = mmap.mmap(-1, self.GATHER)  # page aligned, as O_DIRECT needs
        if not self._used:
            self._start = offset
        self._buffer[self._used:self._used + size] = data
        self._used += size

    def writev(self, offset: int, views: list[memoryview]) -> None:
        """Views that follow each other in the file from `offset`. With O_DIRECT, a large
        aligned set goes out as two writes at once, one from a helper thread: the device takes
        two requests in flight faster than one."""
        total = sum(len(v) for v in views)
        if (total < 2 * self.GATHER or self.direct is None or offset % 4096
                or not all(_aligned(v) for v in views)):
            for view in views:
                self.write(offset, view)
                offset += len(view)
            return
        self.flush()
        first, second = _halves(views, total // 2 // 4096 * 4096)
        if self._helper is None:
            self._helper = ThreadPoolExecutor(max_workers=1)
        other = self._helper.submit(self._writev, offset + sum(len(v) for v in first), second)
        try:
            self._writev(offset, first)
        finally:
            other.result()

    def _writev(self, offset: int, views: list[memoryview]) -> None:
        for view in views:
            self._write(offset, view)
            offset += len(view)

    def flush(self) -> None:
        if self._used and self._buffer is not None:
            used, self._used = self._used, 0
            self._write(self._start, memoryview(self._buffer)[:used])

    def _write(self, offset: int, data: memoryview) -> None:
        fd = self.direct if self.direct is not None and _aligned(data) else self.plain
        assert fd is not None
        view = memoryview(data)
        while view:
            try:
                done = os.pwrite(fd, view if fd == self.direct else view[:self.PIECE], offset)
            except OSError as error:
                if fd != self.direct or error.errno != errno.EINVAL:
                    raise
                fd = self.plain  # O_DIRECT refused this one: write it plainly
                continue
            view, offset = view[done:], offset + done


def _halves(views: list[memoryview], cut: int) -> tuple[list[memoryview], list[memoryview]]:
    """The views split at byte `cut` of their concatenation."""
    first: list[memoryview] = []
    for i, view in enumerate(views):
        if cut <= 0:
            return first, views[i:]
        if len(view) > cut:
            return first + [view[:cut]], [view[cut:]] + views[i + 1:]
        first.append(view)
        cut -= len(view)
    return first, []


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
    elif version in v1.VERSIONS:
        image, offsets = v1.read(buf)
    else:
        raise ImageError(f"unknown image version {version:#x}", 4)
    validate(image, offsets)
    return image


def load(path: str) -> Image:
    """Map an image file read-only and parse it; the pages stay in the file until used."""
    return _load(path, "a binfmt-img image")


def _load(path: str, wanted: str) -> Image:
    try:
        fd = open_regular(path)
    except OSError as error:
        raise ImageError(f"{path}: {error.strerror}") from None
    try:
        _check_kind(path, os.pread(fd, filekind.HEAD_SIZE, 0), wanted)
        mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        image = parse(memoryview(mapped))
    except OSError as error:
        os.close(fd)
        raise ImageError(f"{path}: {error.strerror}") from None
    except ImageError as error:
        os.close(fd)
        raise ImageError(error.what if error.what.startswith(path) else f"{path}: {error.what}",
                         error.offset) from None
    image.mapping, image.path, image.fd = mapped, path, fd
    # The descriptor lives as long as the image: closed when it is collected.
    weakref.finalize(image, os.close, fd)
    return image


def _check_kind(path: str, head: bytes, wanted: str) -> None:
    """Refuse, in one line saying what it is instead, a file that is not an image."""
    if filekind.is_image(head):
        return
    if filekind.is_core(head):
        raise ImageError(f"{path}: an ELF core, not {wanted} (core2img converts it to one)")
    raise ImageError(f"{path}: not {wanted}: {filekind.looks_like(head)}")


def load_any(path: str, warn: Callable[[str], None] | None = None) -> Image:
    """An image file, or an ELF core (by its magic) converted in memory as core2img does;
    the conversion's remarks (files gone or changed since the core) go to `warn`."""
    if elfcore.is_elf(path) and _is_core(path):
        return elfcore.read_core(path, warn=warn)
    return _load(path, "a binfmt-img image or an ELF core")


def _is_core(path: str) -> bool:
    """An ELF core, or an ELF file too short to tell (read_core says it is truncated)."""
    try:
        with open_regular_file(path) as f:
            head = f.read(filekind.HEAD_SIZE)
    except OSError:
        return True  # read_core names the problem
    return len(head) < 18 or filekind.is_core(head)


def save(path: str, image: Image, fmt: str = "v1",
         pages: Iterable[tuple[int, memoryview | bytes]] | None = None,
         compress: bool | str = False) -> None:
    """Write an image to a temporary file beside `path`, then rename it into place;
    `compress`: v1 page runs compressed where that pays, with "lz4" or "zstd" (True)."""
    if fmt not in FORMATS:
        raise ImageError(f"unknown format {fmt!r}; choose v0 or v1")
    if compress and fmt != "v1":
        raise ImageError("only v1 images hold compressed pages")
    if pages is None:
        pages = ((run.vaddr, b"".join(image.run_data(run)) if run.stride != 4096
                  or image.reader is not None else next(image.run_data(run)))
                 for run in image.runs)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory; give a file name")
    try:
        fd, temporary = _unnamed_file(directory)
    except OSError as error:
        raise ImageError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            if fmt == "v0":
                v0.write(out, image, pages)
            else:
                with DirectWriter(f"/proc/self/fd/{out.fileno()}") as direct:
                    v1.write(out, image, pages, direct.writev, compress)
            out.flush()
            if temporary is None:  # give the finished file a name, then the one asked for
                temporary = os.path.join(directory, f".img-{os.getpid()}-{id(out):x}")
                _link_unnamed(out.fileno(), temporary)
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _link_unnamed(fd: int, path: str) -> None:
    """linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/FD: os.link uses plain link() (which does
    not follow the magic link) unless given a directory descriptor."""
    proc_fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=proc_fds, follow_symlinks=True)
    finally:
        os.close(proc_fds)


def _unnamed_file(directory: str) -> tuple[int, str | None]:
    """A file to write the image into: unnamed (O_TMPFILE) where the file system allows,
    so that a dump killed half way leaves nothing behind; else a named temporary. The
    image at the destination is replaced only once the new one is whole."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600), None
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, temporary = tempfile.mkstemp(prefix=".img-", dir=directory)
    return fd, temporary
