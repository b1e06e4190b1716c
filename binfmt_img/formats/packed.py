"""Compressed page runs of a v1 image (versions 0x201 and 0x202, docs/FORMAT.md "Compressed
runs" and "LZ4 runs").

A compressed image stores its pages in runs of at most RUN_PAGES pages, each one zstd frame or
(0x202) one LZ4 block (or, where compression does not pay, the raw pages, page aligned). On
load its runs are given offsets in a page space (page i of the image at byte i * 4096) and a
RunReader as the image's reader: restores, img-info and exports read pages through it,
whatever the runs' encoding, and the compressed ones are decompressed on helper threads a
piece at a time.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from binfmt_img.errors import ImageError
from binfmt_img.formats import crc, lz4fast, zstdfast
from binfmt_img.formats.model import PAGE_SIZE, BadRun, Image, PageRun

RUN_PAGES = 64  # pages per compressed run: 256 KiB, large enough for zstd, small to seek
# zstd fast mode -7: on data of many short matches it decodes twice as fast as -1 (a restore
# keeps pace with its page writes) and compresses faster; output up to twice -1's (python and
# perl heaps: a quarter and two fifths of their size, against an eighth and a fifth).
LEVEL = -7
RAW_ABOVE = 0.9
# A run record's `reserved` field: the stored length, its top bit set for an LZ4 block.
LZ4_BIT = 0x80000000
LENGTH_MASK = 0x7FFFFFFF
CODECS = ("lz4", "zstd")  # img-dump --compress-with; the first is plain --compress's
WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class StoredRun:
    """A run as the file holds it: `length` > 0 marks a zstd frame of that many bytes, or
    with `lz4` an LZ4 block."""

    vaddr: int
    count: int
    offset: int
    crc: int
    length: int
    lz4: bool = False

    @property
    def compressed(self) -> bool:
        return self.length > 0

    @property
    def stored_size(self) -> int:
        return self.length if self.compressed else self.count * PAGE_SIZE


def split(vaddr: int, data: memoryview) -> Iterator[tuple[int, memoryview]]:
    for at in range(0, len(data), RUN_PAGES * PAGE_SIZE):
        yield vaddr + at, data[at:at + RUN_PAGES * PAGE_SIZE]


class RunReader:
    """The page space of an image with compressed runs (see the module's docstring).

    read_into may be called from several threads at once (a restore keeps two pieces in
    flight): each decompresses its runs straight into the caller's buffer, without the GIL
    (binfmt_img.formats.zstdfast), reading the frames of a piece in one pread into a buffer of
    its own thread. Runs cut by a piece's ends go through a small shared cache."""

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
        self.lock = threading.Lock()
        self.scratch = _Scratch()
        self.lz4 = any(run.lz4 for run in stored)

    @property
    def codec(self) -> str:
        """The codec to write this image's pages again with (img-pack keeps it)."""
        return "lz4" if self.lz4 else "zstd"

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
            raise _ends_inside(offset)
        return data

    def _read_exact(self, offset: int, view: memoryview) -> None:
        """The file's bytes at `offset` into `view` (no intermediate copy from a file)."""
        fd = self.image.fd
        if fd is None:
            assert self.image.source is not None
            data = self.image.source[offset:offset + len(view)]
            if len(data) != len(view):
                raise _ends_inside(offset)
            view[:] = data
            return
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise _ends_inside(offset + done)
            done += got

    def _checked(self, i: int, data: memoryview | bytes) -> None:
        run = self.stored[i]
        if crc.crc32(data) != run.crc:
            raise ImageError(f"page run {run.vaddr:#x} no longer matches its checksum (the "
                             "image file changed since it was checked?)", run.offset)

    def _pages(self, i: int) -> bytes:
        """Run i's pages, its checksum checked: a file changed since the check is noticed."""
        run = self.stored[i]
        data = self._bytes(run.offset, run.stored_size)
        self._checked(i, data)
        if not run.compressed:
            return data
        return _decompress(data, run.count * PAGE_SIZE, run.vaddr, run.lz4)

    def bad_runs(self) -> list[BadRun]:
        """The runs whose stored bytes fail their checksum or, compressed, do not decode to
        exactly their pages (img-info --verify, restores): read in large pieces, checked on
        helper threads. A frame whose crc32 is right (someone else's image computes it) is
        decoded here too, or the restore would find it bad only after its first change. An
        image of LZ4 blocks on a system without liblz4 is refused here, before a restore
        changes anything."""
        if self.lz4 and not lz4fast.AVAILABLE:
            raise ImageError(f"the image's pages are LZ4 blocks and {lz4fast.MISSING}")
        batches = _batches(self.stored)
        if len(batches) > 1:
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                bad = [found for each in pool.map(self._bad_in, batches) for found in each]
        else:
            bad = [found for batch in batches for found in self._bad_in(batch)]
        return [BadRun(r.vaddr, r.count, r.offset, PAGE_SIZE, r.crc, problem)
                for r, problem in ((self.stored[i], problem) for i, problem in sorted(bad))]

    def _bad_in(self, batch: list[int]) -> list[tuple[int, str]]:
        first = self.stored[batch[0]].offset
        end = max(self.stored[i].offset + self.stored[i].stored_size for i in batch)
        buffer = self.scratch.get("batch", end - first)
        try:
            self._read_exact(first, buffer)
        except ImageError:  # the file ends inside: each run on its own says which
            found = ((i, self._problem_alone(i)) for i in batch)
        else:
            found = ((i, self._problem(i, buffer[self.stored[i].offset - first:
                                                 self.stored[i].offset - first
                                                 + self.stored[i].stored_size]))
                     for i in batch)
        return [(i, problem) for i, problem in found if problem is not None]

    def _problem_alone(self, i: int) -> str | None:
        run = self.stored[i]
        try:
            data = self._bytes(run.offset, run.stored_size)
        except ImageError:
            return "it lies past the end of the file"
        return self._problem(i, data)

    def _problem(self, i: int, stored: memoryview | bytes) -> str | None:
        """What is wrong with run i's stored bytes, or None: their crc32, or (a frame or
        block) that they do not decode to exactly the run's pages. Decoded into this thread's
        scratch buffer of the run's size, which the decoders never write past; a zstd
        frame's own content checksum checked as well, as a restore checks it."""
        run = self.stored[i]
        if crc.crc32(stored) != run.crc:
            return "its bytes do not match their crc32"
        if not run.compressed:
            return None
        out = self.scratch.get("decoded", run.count * PAGE_SIZE)
        try:
            _inflate(stored, out, run.vaddr, lz4=run.lz4,
                     verify=not run.lz4 and zstdfast.has_checksum(stored))
        except ImageError as error:
            return error.what.removeprefix(f"page run {run.vaddr:#x} ")
        return None

    def read_into(self, offset: int, view: memoryview) -> None:
        if offset < 0 or offset + len(view) > self.size:
            raise ImageError(f"read of {len(view)} bytes at {offset:#x} outside the image's "
                             f"{self.size} bytes of pages")
        if not len(view):
            return
        end = offset + len(view)
        i = bisect.bisect_right(self.starts, offset) - 1
        last = bisect.bisect_right(self.starts, end - 1) - 1
        while i <= last:
            start, run = self.starts[i], self.stored[i]
            size = run.count * PAGE_SIZE
            if start < offset or start + size > end:  # cut by the piece: through the cache
                data = self._cached(i)
                low, high = max(start, offset), min(start + size, end)
                view[low - offset:high - offset] = memoryview(data)[low - start:high - start]
                i += 1
            elif not run.compressed:  # raw pages: read straight into place
                place = view[start - offset:start - offset + size]
                self._read_exact(run.offset, place)
                self._checked(i, place)
                i += 1
            else:
                i = self._frames_into(i, last, offset, view)

    def _frames_into(self, i: int, last: int, offset: int, view: memoryview) -> int:
        """Runs i.. that lie whole in the piece and follow each other in the file as frames:
        read in one go, each decompressed into its place. Returns the next run's index."""
        j = i
        end = offset + len(view)
        while (j < last and self.stored[j + 1].compressed
               and self.stored[j + 1].offset == self.stored[j].offset + self.stored[j].length
               and self.starts[j + 1] + self.stored[j + 1].count * PAGE_SIZE <= end):
            j += 1
        first = self.stored[i].offset
        frames = self.scratch.get("frames", self.stored[j].offset + self.stored[j].length
                                  - first)
        self._read_exact(first, frames)
        for k in range(i, j + 1):
            run = self.stored[k]
            frame = frames[run.offset - first:run.offset - first + run.length]
            out = view[self.starts[k] - offset:self.starts[k] - offset + run.count * PAGE_SIZE]
            if run.lz4 or not zstdfast.has_checksum(frame):
                self._checked(k, frame)
                _inflate(frame, out, run.vaddr, lz4=run.lz4)
                continue
            # The frame's own checksum of its output stands for the crc32 of its bytes (as
            # good against a file changed since the check, and cheaper: the frame is larger
            # than its checksum pass at the fast levels); a failure says which it was.
            try:
                _inflate(frame, out, run.vaddr, verify=True)
            except ImageError:
                self._checked(k, frame)
                raise
        return j + 1

    def _cached(self, i: int) -> bytes:
        with self.lock:
            data = self.cache.get(i)
            if data is not None:
                self.cache.move_to_end(i)
                return data
        data = self._pages(i)
        with self.lock:
            self.cache[i] = data
            while len(self.cache) > 8:
                self.cache.popitem(last=False)
        return data


class _Scratch(threading.local):
    """Buffers of one thread, reused from read to read."""

    def __init__(self) -> None:
        self.buffers: dict[str, bytearray] = {}

    def get(self, name: str, size: int) -> memoryview:
        buffer = self.buffers.get(name)
        if buffer is None or len(buffer) < size:
            buffer = self.buffers[name] = bytearray(max(size, 1 << 20))
        return memoryview(buffer)[:size]


def _batches(stored: list[StoredRun], limit: int = 16 << 20) -> list[list[int]]:
    """Run indexes in groups whose stored bytes lie within `limit` bytes of the file, in order."""
    batches: list[list[int]] = []
    first = end = -1
    for i, run in enumerate(stored):
        if batches and first <= run.offset and run.offset + run.stored_size - first <= limit:
            batches[-1].append(i)
            end = max(end, run.offset + run.stored_size)
        else:
            batches.append([i])
            first, end = run.offset, run.offset + run.stored_size
    return batches


def _ends_inside(offset: int) -> ImageError:
    return ImageError(f"the image file ends inside its page data at {offset:#x} "
                      "(changed since it was checked?)")


def _inflate(frame: memoryview | bytes, out: memoryview, vaddr: int,
             verify: bool = False, lz4: bool = False) -> None:
    """One run's frame decompressed into `out`, which it must fill exactly. Unless `verify`,
    the caller has checked the frame's crc32: zstd's own checksum of the output would add a
    pass for nothing (decoding is deterministic). An LZ4 block has no size of its own: it is
    decoded within `out` and refused unless it fills it."""
    if lz4:
        _unblock(frame, out, vaddr)
        return
    size = len(out)
    try:
        claimed = zstdfast.content_size(frame)
        if claimed is not None and claimed > size:  # refused before writing anything
            raise ImageError(f"page run {vaddr:#x} claims {claimed} bytes, {size} expected")
        got = zstdfast.decompress_into(frame, out, verify=verify)
    except zstdfast.ZstdFailure as error:
        raise ImageError(f"page run {vaddr:#x} does not decompress: {error}") from None
    if got != size:
        raise ImageError(f"page run {vaddr:#x} decompresses to {got} bytes, "
                         f"{size} expected")


def _unblock(block: memoryview | bytes, out: memoryview, vaddr: int) -> None:
    """One run's LZ4 block decoded into `out`: LZ4_decompress_safe never writes past it, so a
    block that would make more fails as it reaches the end, one that makes less after."""
    if not lz4fast.AVAILABLE:
        raise ImageError(f"page run {vaddr:#x} is an LZ4 block and {lz4fast.MISSING}")
    try:
        got = lz4fast.decompress_into(block, out)
    except lz4fast.Lz4Failure as error:
        raise ImageError(f"page run {vaddr:#x} does not decompress (more than its "
                         f"{len(out)} bytes, or damaged): {error}") from None
    if got != len(out):
        raise ImageError(f"page run {vaddr:#x} decompresses to {got} bytes, "
                         f"{len(out)} expected")


def _decompress(frame: bytes, size: int, vaddr: int, lz4: bool = False) -> bytes:
    """A run's frame decompressed into bytes of its own."""
    out = bytearray(size)
    _inflate(frame, memoryview(out), vaddr, lz4=lz4)
    return bytes(out)


def codec_for(requested: str | bool | None) -> tuple[str | None, str | None]:
    """The codec a dump uses when asked for `requested` ("lz4" or "zstd"; True: img-dump
    --compress's, lz4; None or False: none), and a note for the user when it is not the one
    asked for (liblz4 missing: zstd instead)."""
    if requested is True:
        requested = CODECS[0]
    if not requested:
        return None, None
    if requested not in CODECS:
        raise ValueError(f"unknown compression {requested!r}; choose {' or '.join(CODECS)}")
    if requested == "lz4" and not lz4fast.AVAILABLE:
        return "zstd", f"{lz4fast.MISSING}: pages compressed with zstd instead (slower)"
    return requested, None
