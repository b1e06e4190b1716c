"""Compressed page runs of a v1 image (version 0x201, docs/FORMAT.md "Compressed runs").

A compressed image stores its pages in runs of at most RUN_PAGES pages, each one zstd frame
(or, where zstd does not pay, the raw pages, page aligned). On load its runs are given offsets
in a page space (page i of the image at byte i * 4096) and a RunReader as the image's reader:
restores, img-info and exports read pages through it, whatever the runs' encoding, and the
compressed ones are decompressed on helper threads a piece at a time.
"""

from __future__ import annotations

import bisect
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zstandard

from binfmt_img.errors import ImageError
from binfmt_img.formats.model import PAGE_SIZE, Image, PageRun

RUN_PAGES = 64  # pages per compressed run: 256 KiB, large enough for zstd, small to seek
LEVEL = -1  # zstd fast mode: twice the speed of level 1 both ways, a tenth larger
RAW_ABOVE = 0.9
WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class StoredRun:
    """A run as the file holds it: `length` > 0 marks a zstd frame of that many bytes."""

    vaddr: int
    count: int
    offset: int
    crc: int
    length: int

    @property
    def compressed(self) -> bool:
        return self.length > 0

    @property
    def stored_size(self) -> int:
        return self.length if self.compressed else self.count * PAGE_SIZE


def compress_run(data: memoryview | bytes, level: int = LEVEL) -> bytes | None:
    """The zstd frame of a run's pages, or None where it would not save enough."""
    frame = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    return frame if len(frame) <= RAW_ABOVE * len(data) else None


def split(vaddr: int, data: memoryview) -> Iterator[tuple[int, memoryview]]:
    for at in range(0, len(data), RUN_PAGES * PAGE_SIZE):
        yield vaddr + at, data[at:at + RUN_PAGES * PAGE_SIZE]


class RunReader:
    """The page space of an image with compressed runs (see the module's docstring)."""

    def __init__(self, image: Image, stored: list[StoredRun]) -> None:
        self.image = image
        self.stored = stored  # in the file's order: the image's runs keep it
        self.starts: list[int] = []
        at = 0
        for run in self.stored:
            self.starts.append(at)
            at += run.count * PAGE_SIZE
        self.size = at
        self.cache: OrderedDict[int, bytes] = OrderedDict()
        self.pool: ThreadPoolExecutor | None = None
        self.lock = threading.Lock()

    def runs(self) -> list[PageRun]:
        """The image's runs in the page space (their checks are done on reading)."""
        return [PageRun(r.vaddr, r.count, start, PAGE_SIZE, None)
                for r, start in zip(self.stored, self.starts)]

    def _bytes(self, offset: int, size: int) -> bytes:
        fd = self.image.fd
        if fd is not None:
            data = os.pread(fd, size, offset)
        else:
            assert self.image.source is not None
            data = bytes(self.image.source[offset:offset + size])
        if len(data) != size:
            raise ImageError(f"the image file ends inside its page data at {offset:#x} "
                             "(changed since it was checked?)")
        return data

    def _pages(self, i: int) -> bytes:
        """Run i's pages, its checksum checked: a file changed since the check is noticed."""
        run = self.stored[i]
        data = self._bytes(run.offset, run.stored_size)
        if zlib.crc32(data) != run.crc:
            raise ImageError(f"page run {run.vaddr:#x} no longer matches its checksum (the "
                             "image file changed since it was checked?)", run.offset)
        if not run.compressed:
            return data
        return _decompress(data, run.count * PAGE_SIZE, run.vaddr)

    def bad_runs(self) -> list[PageRun]:
        """The runs whose stored bytes fail their checksum (img-info --verify, restores)."""
        return [PageRun(r.vaddr, r.count, r.offset, PAGE_SIZE, r.crc) for r in self.stored
                if zlib.crc32(self._bytes(r.offset, r.stored_size)) != r.crc]

    def read_into(self, offset: int, view: memoryview) -> None:
        if offset < 0 or offset + len(view) > self.size:
            raise ImageError(f"read of {len(view)} bytes at {offset:#x} outside the image's "
                             f"{self.size} bytes of pages")
        first = bisect.bisect_right(self.starts, offset) - 1
        last = bisect.bisect_right(self.starts, offset + len(view) - 1) - 1
        wanted = [i for i in range(first, last + 1) if i not in self.cache]
        got = dict((i, self.cache[i]) for i in range(first, last + 1) if i in self.cache)
        if len(wanted) > 1:
            with self.lock:
                if self.pool is None:
                    self.pool = ThreadPoolExecutor(max_workers=WORKERS)
            got.update(zip(wanted, self.pool.map(self._pages, wanted)))
        elif wanted:
            got[wanted[0]] = self._pages(wanted[0])
        for i in (first, last):  # the ends may be shared with the next read
            self.cache[i] = got[i]
            while len(self.cache) > 4:
                self.cache.popitem(last=False)
        for i in range(first, last + 1):
            start = self.starts[i]
            low, high = max(start, offset), min(start + len(got[i]), offset + len(view))
            view[low - offset:high - offset] = memoryview(got[i])[low - start:high - start]


def _decompress(frame: bytes, size: int, vaddr: int) -> bytes:
    try:
        claimed = zstandard.get_frame_parameters(frame).content_size
        if claimed > size:  # refused before zstd allocates what a damaged frame claims
            raise ImageError(f"page run {vaddr:#x} claims {claimed} bytes, {size} expected")
        data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as error:
        raise ImageError(f"page run {vaddr:#x} does not decompress: {error}") from None
    if len(data) != size:
        raise ImageError(f"page run {vaddr:#x} decompresses to {len(data)} bytes, "
                         f"{size} expected")
    return data
