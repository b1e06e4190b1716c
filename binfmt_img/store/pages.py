"""Pages stored once, by content: the store's page index, its pack files of compressed chunks,
and the page reader a restore takes its pages from (docs/STORE.md)."""

from __future__ import annotations

import functools
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import xxhash
import zstandard

from binfmt_img.errors import ImageError
from binfmt_img.formats import zstdfast
from binfmt_img.formats.model import PAGE_SIZE

CHUNK_PAGES = 64  # new pages are compressed together in chunks of this many
# zstd fast mode -7: on data of many short matches it decodes twice as fast as -1 (a restore
# keeps pace with its page writes) and compresses faster; output up to twice -1's (python and
# perl heaps: a quarter and two fifths of their size, against an eighth and a fifth).
LEVEL = -7
RAW_ABOVE = 0.9  # a chunk compressing to more than this fraction is stored raw
# One record of pages.idx per stored page: its hash, then where it is (pack file number,
# chunk offset and stored length in that pack, slot in the chunk, flags).
INDEX_RECORD = struct.Struct("<16sIQIHH")
HASH_AND_PACK = struct.Struct("<16sI16x")  # the same record, its first two fields
FLAG_ZSTD = 1
WORKERS = max(1, min(4, os.cpu_count() or 1))


def page_hash(page: memoryview | bytes) -> bytes:
    return xxhash.xxh3_128_digest(page)


_scratch = threading.local()


def compress(data: memoryview | bytes, level: int = LEVEL) -> tuple[bytes, int]:
    """(stored bytes, flags): zstd when it pays, else the bytes as they are. Runs without the
    GIL (binfmt_img.formats.zstdfast): the writer's helper threads compress in parallel."""
    out = getattr(_scratch, "buffer", None)
    if out is None or len(out) < zstdfast.bound(len(data)):
        out = _scratch.buffer = memoryview(bytearray(zstdfast.bound(max(len(data),
                                                                         CHUNK_PAGES * PAGE_SIZE))))
    size = zstdfast.compress_into(data, out, level)
    if size > RAW_ABOVE * len(data):
        return bytes(data), 0
    return bytes(out[:size]), FLAG_ZSTD


def decompress(stored: bytes, flags: int, limit: int) -> bytes:
    """A chunk's bytes, at most `limit` of them (an image is untrusted input)."""
    if not flags & FLAG_ZSTD:
        return stored[:limit]
    try:
        params = zstandard.get_frame_parameters(stored)
        if params.content_size > limit:
            raise ImageError(f"a compressed chunk claims {params.content_size} bytes, more "
                             f"than {limit}")
        return zstandard.ZstdDecompressor().decompress(stored, max_output_size=limit)
    except zstandard.ZstdError as error:
        raise ImageError(f"a compressed chunk does not decompress: {error}") from None


class Location:
    """Where one stored page is: pack number, chunk offset and length, slot, flags."""

    __slots__ = ("pack", "offset", "length", "slot", "flags")

    def __init__(self, pack: int, offset: int, length: int, slot: int, flags: int) -> None:
        self.pack, self.offset, self.length = pack, offset, length
        self.slot, self.flags = slot, flags


class PageIndex:
    """pages.idx: page id (its record number) -> hash and location; hash -> id for pages
    whose pack file still exists (ids of removed packs are dead: never matched again)."""

    def __init__(self, path: str, packs: set[int]) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        whole = len(data) - len(data) % INDEX_RECORD.size  # a torn last append is ignored
        # The records stay packed (36 bytes a page, not a Python tuple): unpacked when used.
        self.data = bytearray(memoryview(data)[:whole])
        self.packs = packs

    @functools.cached_property
    def by_hash(self) -> dict[bytes, int]:
        """Made when first asked (a writer): a restore reads by id only."""
        return {digest: number for number, (digest, pack)
                in enumerate(HASH_AND_PACK.iter_unpack(self.data)) if pack in self.packs}

    @property
    def count(self) -> int:
        return len(self.data) // INDEX_RECORD.size

    def location(self, page_id: int) -> Location:
        if not 0 <= page_id < self.count:
            raise ImageError(f"page id {page_id} is not in the store's page index")
        _, pack, offset, length, slot, flags = INDEX_RECORD.unpack_from(
            self.data, page_id * INDEX_RECORD.size)
        return Location(pack, offset, length, slot, flags)

    def pack_of(self, page_id: int) -> int | None:
        if not 0 <= page_id < self.count:
            return None
        return HASH_AND_PACK.unpack_from(self.data, page_id * INDEX_RECORD.size)[1]

    def append(self, records: list[tuple[bytes, int, int, int, int, int]]) -> None:
        packed = b"".join(INDEX_RECORD.pack(*r) for r in records)
        with open(self.path, "r+b" if os.path.exists(self.path) else "wb") as f:
            f.truncate(len(self.data))
            f.seek(len(self.data))
            f.write(packed)
            f.flush()
        for record in records:
            self.by_hash[record[0]] = self.count
            self.data += INDEX_RECORD.pack(*record)


class PackWriter:
    """Collects a checkpoint's new pages into chunks, compresses them on helper threads and
    appends them to one pack file. Page ids are given as pages arrive; their records reach
    the index only when the pack is complete (`finish`)."""

    def __init__(self, path: str, number: int, index: PageIndex, level: int = LEVEL) -> None:
        self.path, self.number, self.index, self.level = path, number, index, level
        self.file = open(path, "wb")  # noqa: SIM115 - closed by finish/abort
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        self.pending: list = []  # futures of compressed chunks, in order
        self.chunk = bytearray()
        self.hashes: list[bytes] = []  # of the pages in the current chunk
        self.new: dict[bytes, int] = {}  # hash -> id, for pages added by this checkpoint
        self.records: list[tuple[bytes, int, int, int, int, int]] = []
        self.at = 0
        self.new_pages = 0
        self.stored_bytes = 0

    def page_id(self, page: memoryview, digest: bytes) -> int:
        """The id of a page with this content, stored now when the store lacks it."""
        known = self.index.by_hash.get(digest)
        if known is None:
            known = self.new.get(digest)
        if known is not None:
            return known
        page_id = self.index.count + self.new_pages
        self.new[digest] = page_id
        self.new_pages += 1
        self.chunk += page
        self.hashes.append(digest)
        if len(self.hashes) == CHUNK_PAGES:
            self._flush()
        return page_id

    def _flush(self) -> None:
        if not self.hashes:
            return
        data, hashes = bytes(self.chunk), self.hashes
        self.pending.append((self.pool.submit(compress, data, self.level), hashes))
        self.chunk, self.hashes = bytearray(), []
        while len(self.pending) > 4 * WORKERS or (self.pending and self.pending[0][0].done()):
            self._write_one()

    def _write_one(self) -> None:
        future, hashes = self.pending.pop(0)
        stored, flags = future.result()
        self.file.write(stored)
        for slot, digest in enumerate(hashes):
            self.records.append((digest, self.number, self.at, len(stored), slot, flags))
        self.at += len(stored)
        self.stored_bytes += len(stored)

    def finish(self) -> None:
        self._flush()
        while self.pending:
            self._write_one()
        self.pool.shutdown()
        self.file.close()  # no fsync, as img-dump: a crash of the machine may lose the last
        # checkpoints, which then fail to load with one line
        if self.records:
            self.index.append(self.records)
        else:
            os.unlink(self.path)

    def abort(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.file.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def pack_path(directory: str, number: int) -> str:
    return os.path.join(directory, "packs", f"{number:06d}.pack")


class PageReader:
    """A checkpoint's pages as one page space: page i (of the checkpoint's page map) at byte
    i * 4096. read_into may run on several threads at once (a restore keeps two pieces in
    flight): a chunk whose pages a piece takes whole and in order is decompressed straight
    into place without the GIL (binfmt_img.formats.zstdfast), and chunks that follow each
    other in a pack are read in one pread. Chunks used in part (pages shared with earlier
    checkpoints) are decompressed on their own and kept for a while: a restore reads pieces
    in order, and a chunk serves many consecutive pages."""

    def __init__(self, directory: str, index: PageIndex, ids: list[int]) -> None:
        self.directory, self.index, self.ids = directory, index, ids
        self.cache: OrderedDict[tuple[int, int, int, int], bytes | bytearray] = OrderedDict()
        self.lock = threading.Lock()
        self.files: dict[int, int] = {}
        self.scratch = threading.local()

    def open_packs(self) -> None:
        packs = {self.index.pack_of(i) for i in set(self.ids)}
        if None in packs:
            raise ImageError(f"page ids past the end of the store's index of "
                             f"{self.index.count} pages (a damaged or incomplete store)")
        for pack in sorted(packs):
            self._fd(pack)

    def close(self) -> None:
        with self.lock:
            for fd in self.files.values():
                os.close(fd)
            self.files.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _fd(self, pack: int) -> int:
        with self.lock:
            fd = self.files.get(pack)
            if fd is None:
                try:
                    fd = os.open(pack_path(self.directory, pack), os.O_RDONLY | os.O_CLOEXEC)
                except OSError as error:
                    raise ImageError(f"pack {pack} of the store: {error.strerror}") from None
                self.files[pack] = fd
            return fd

    def _stored(self, pack: int, offset: int, size: int) -> memoryview:
        """`size` bytes of a pack, read into this thread's buffer (valid until its next read)."""
        buffer = getattr(self.scratch, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = self.scratch.buffer = bytearray(max(size, 1 << 20))
        view = memoryview(buffer)[:size]
        fd, done = self._fd(pack), 0
        while done < size:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise ImageError(f"pack {pack} of the store ends inside a chunk at "
                                 f"{offset + done:#x}")
            done += got
        return view

    def _pages(self, first: int, count: int) -> list[Location]:
        if first < 0 or first + count > len(self.ids):
            raise ImageError(f"pages {first}..{first + count} outside the checkpoint's "
                             f"{len(self.ids)}")
        return [self.index.location(i) for i in self.ids[first:first + count]]

    def read_into(self, offset: int, view: memoryview) -> None:
        if offset % PAGE_SIZE or len(view) % PAGE_SIZE:
            raise ImageError(f"unaligned read of the page space at {offset:#x}")
        places = self._pages(offset // PAGE_SIZE, len(view) // PAGE_SIZE)
        spans = list(_spans(places))
        k = 0
        while k < len(spans):
            # Spans whose chunks follow each other in one pack: one read for them all.
            j = k
            while (j + 1 < len(spans) and spans[j + 1][1][0].pack == spans[j][1][0].pack
                   and spans[j + 1][1][0].offset == spans[j][1][0].offset
                   + spans[j][1][0].length):
                j += 1
            first, last = spans[k][1][0], spans[j][1][0]
            stored = self._stored(first.pack, first.offset,
                                  last.offset + last.length - first.offset)
            for i, span in spans[k:j + 1]:
                at = span[0].offset - first.offset
                self._span_into(span, stored[at:at + span[0].length],
                                view[i * PAGE_SIZE:(i + len(span)) * PAGE_SIZE])
            k = j + 1

    def _span_into(self, span: list[Location], stored: memoryview, out: memoryview) -> None:
        """Consecutive slots of one chunk into `out`: decompressed in place when they are
        the whole chunk, else taken from the chunk decompressed on its own (and kept)."""
        where = span[0]
        # The whole location: two records naming one offset with another length or flags
        # (a damaged index) are not served each other's pages.
        key = (where.pack, where.offset, where.length, where.flags)
        with self.lock:
            data = self.cache.get(key)
            if data is not None:
                self.cache.move_to_end(key)
        if data is None and where.slot == 0 and _holds(stored, where) == len(out):
            _into(stored, where, out)
            return
        if data is None:
            data = _whole_pages(_decoded(stored, where), where)
            with self.lock:
                self.cache[key] = data
                if len(self.cache) > 4 * CHUNK_PAGES:
                    self.cache.popitem(last=False)
        start = where.slot * PAGE_SIZE
        if start + len(out) > len(data):
            raise ImageError(f"slot {span[-1].slot} past the end of its chunk")
        out[:] = memoryview(data)[start:start + len(out)]


def _holds(stored: memoryview, where: Location) -> int | None:
    """The bytes a chunk holds, from its frame header (None: it does not say)."""
    if not where.flags & FLAG_ZSTD:
        return len(stored)
    try:
        return zstdfast.content_size(stored)
    except zstdfast.ZstdFailure as error:
        raise ImageError(f"a compressed chunk does not decompress: {error}") from None


def _into(stored: memoryview, where: Location, out: memoryview) -> None:
    """A whole chunk into `out`, which its frame header said it fills."""
    if not where.flags & FLAG_ZSTD:
        out[:] = stored
        return
    try:
        got = zstdfast.decompress_into(stored, out)
    except zstdfast.ZstdFailure as error:
        raise ImageError(f"a compressed chunk does not decompress: {error}") from None
    if got != len(out):
        raise ImageError(f"a compressed chunk of pack {where.pack} holds {got} bytes, "
                         f"{len(out)} expected")


def _decoded(stored: memoryview, where: Location) -> bytes | bytearray:
    """A whole chunk, at most CHUNK_PAGES pages of it, decoded as _into and the check before a
    restore (binfmt_img.store.check) decode it: every frame of the chunk, its checksum too."""
    if not where.flags & FLAG_ZSTD:
        return bytes(stored[:CHUNK_PAGES * PAGE_SIZE])
    out = bytearray(CHUNK_PAGES * PAGE_SIZE)
    try:
        got = zstdfast.decompress_into(stored, memoryview(out))
    except zstdfast.ZstdFailure as error:
        raise ImageError(f"a compressed chunk does not decompress: {error}") from None
    del out[got:]
    return out


def _whole_pages(data: bytes | bytearray, where: Location) -> bytes | bytearray:
    if len(data) % PAGE_SIZE:
        raise ImageError(f"a chunk of pack {where.pack} holds {len(data)} bytes, not "
                         "whole pages")
    return data


def _spans(places: list[Location]) -> Iterator[tuple[int, list[Location]]]:
    """Consecutive pages that are consecutive slots of one chunk: copied in one go."""
    start = 0
    for i in range(1, len(places) + 1):
        if i == len(places) or not (
                places[i].pack == places[i - 1].pack and places[i].offset == places[i - 1].offset
                and places[i].slot == places[i - 1].slot + 1):
            yield start, places[start:i]
            start = i
