"""The check of a store checkpoint's pages before a restore's first change (and before an
export): every page the checkpoint uses, read from its chunk and hashed, against the xxh3-128
the page index records for it. A raw chunk has no checksum of its own: without this a flipped
byte would be restored silently; a zstd chunk that does not decode would be found only half
way through the restore.

Each chunk is read once, in pack order, chunks close together in one pread; a zstd chunk is
decoded into a scratch buffer of one chunk's size (CHUNK_PAGES pages) per thread, which the
decoder never writes past, exactly as the restore decodes it (its frame's own checksum
included). Two threads: the reads and the decoding run without the GIL; xxhash holds it for
a page (4 KiB), so the hashing of one thread overlaps the other's decoding.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import xxhash

from binfmt_img.errors import ImageError
from binfmt_img.formats import zstdfast
from binfmt_img.formats.model import PAGE_SIZE, BadRun, PageRun
from binfmt_img.store.pages import CHUNK_PAGES, FLAG_ZSTD, PageIndex, PageReader, pack_path

THREADS = 2
BATCH = 16 << 20  # bytes of a pack read in one pread
GAP = 1 << 20  # chunks at most this far apart in a pack are read in the same pread
# An index record's location fields (pack, chunk offset, stored length, slot, flags).
LOCATION = struct.Struct("<16xIQIHH")
RECORD = LOCATION.size
# The hashes of n records in a row, and of n records their location, slot and flags fields.
HASHES = [struct.Struct("<" + "16s20x" * n) for n in range(CHUNK_PAGES + 1)]
SAME = [struct.Struct("<" + "16x16s2s2s" * n) for n in range(CHUNK_PAGES + 1)]
SLOTS = b"".join(struct.pack("<H", slot) for slot in range(CHUNK_PAGES))
CHUNK_BYTES = CHUNK_PAGES * PAGE_SIZE
LIMIT = zstdfast.bound(CHUNK_BYTES)  # no chunk is stored longer than this

Key = tuple[int, int, int, int]  # a chunk as the index records it: pack, offset, length, flags
Use = list[int]  # pages of a chunk: first slot, first page id, count (both consecutive)


class _Scratch(threading.local):
    """A thread's buffer of one decoded chunk, and its pages as views."""

    decoded: memoryview | None = None
    views: list[memoryview] = []


class CheckedReader(PageReader):
    """A checkpoint's PageReader that can check all its pages against the index first."""

    def __init__(self, directory: str, index: PageIndex, ids: list[int], label: str,
                 runs: list[PageRun]) -> None:
        super().__init__(directory, index, ids)
        self.label, self.runs = label, runs
        self.chunks: list[tuple[Key, list[Use]]] | None = None

    def open_packs(self) -> None:
        """The packs the checkpoint's chunks lie in, opened (found from its chunks, which the
        check then reads: not page by page)."""
        self.chunks = _chunks(self)
        for pack in sorted({key[0] for key, _ in self.chunks}):
            self._fd(pack)

    def bad_runs(self) -> list[BadRun]:
        """The stretches of the checkpoint's pages that would not come back exactly: their
        chunk lies outside its pack, does not decode to whole pages holding their slots, or
        a page's bytes do not match its hash. Empty: all good (img-info --verify's answer)."""
        chunks = self.chunks if self.chunks is not None else _chunks(self)
        sizes = {pack: os.fstat(self._fd(pack)).st_size for pack in {k[0] for k, _ in chunks}}
        batches = list(_batches(chunks))
        scratch = _Scratch()
        if len(batches) > 1:
            with ThreadPoolExecutor(max_workers=THREADS) as pool:
                found = list(pool.map(lambda b: _check_batch(self, b, sizes, scratch), batches))
        else:
            found = [_check_batch(self, b, sizes, scratch) for b in batches]
        bad = {page_id: what for each in found for page_id, what in each.items()}
        return _places(self, bad) if bad else []

    def check_pages(self) -> None:
        """Refuses (one line) a checkpoint with a damaged page: before a restore's first
        change, before an export writes anything."""
        bad = self.bad_runs()
        if bad:
            first, pages = bad[0], sum(run.count for run in bad)
            more = f" ({pages} damaged pages in all)" if pages > 1 else ""
            raise ImageError(f"checkpoint {self.label}: page {first.vaddr:#x} is damaged: "
                             f"{first.problem}{more}")


def _chunks(reader: CheckedReader) -> list[tuple[Key, list[Use]]]:
    """The chunks the checkpoint uses, in pack order, each with its stretches of pages."""
    used = sorted(set(reader.ids))
    count = reader.index.count
    if used and (used[0] < 0 or used[-1] >= count):
        raise ImageError(f"page ids past the end of the store's index of {count} pages "
                         "(a damaged or incomplete store)")
    data = reader.index.data
    chunks: dict[Key, list[Use]] = {}
    i = 0
    while i < len(used):
        page_id = used[i]
        pack, offset, length, slot, flags = LOCATION.unpack_from(data, page_id * RECORD)
        uses = chunks.setdefault((pack, offset, length, flags), [])
        n = _next_slots(data, used, i, slot)
        last = uses[-1] if uses else None
        if last is not None and last[0] + last[2] == slot and last[1] + last[2] == page_id:
            last[2] += n
        else:
            uses.append([slot, page_id, n])
        i += n
    return sorted(chunks.items())


def _next_slots(data: bytearray, used: list[int], i: int, slot: int) -> int:
    """How many used pages from used[i] on are the following slots of its chunk (at least
    1): a chunk's pages have consecutive ids, its records checked together, not one by one."""
    page_id, most = used[i], min(CHUNK_PAGES - slot, len(used) - i)
    if most <= 1:
        return 1
    low, high = 1, most  # used is sorted without repeats: the m-th says if all m follow
    while low < high:
        middle = (low + high + 1) // 2
        if used[i + middle - 1] == page_id + middle - 1:
            low = middle
        else:
            high = middle - 1
    fields = SAME[low].unpack_from(data, page_id * RECORD)
    places, slots, flags = fields[0::3], fields[1::3], fields[2::3]
    if places.count(places[0]) == low and flags.count(flags[0]) == low \
            and b"".join(slots) == SLOTS[2 * slot:2 * (slot + low)]:
        return low
    return 1  # a chunk that ends sooner, or a damaged index: page by page


def _batches(chunks: list[tuple[Key, list[Use]]]
             ) -> Iterator[list[tuple[Key, list[Use]]]]:
    """Chunks of one pack close together, at most BATCH bytes from the first's start."""
    batch: list[tuple[Key, list[Use]]] = []
    start = end = 0
    for chunk in chunks:
        pack, offset, length, _ = chunk[0]
        if batch and (pack != batch[0][0][0] or offset < start or offset > end + GAP
                      or offset + length - start > BATCH):
            yield batch
            batch = []
        if not batch:
            start = end = offset
        batch.append(chunk)
        end = max(end, offset + length)
    if batch:
        yield batch


def _check_batch(reader: CheckedReader, batch: list[tuple[Key, list[Use]]],
                 sizes: dict[int, int], scratch: _Scratch) -> dict[int, tuple[Key, str]]:
    """page id -> (its chunk, what is wrong) for the bad pages of a batch of chunks."""
    pack = batch[0][0][0]
    inside = [(key, uses) for key, uses in batch if key[1] + key[2] <= sizes[pack]
              and key[2] <= LIMIT]
    bad: dict[int, tuple[Key, str]] = {}
    for key, uses in batch:
        if key[1] + key[2] > sizes[pack]:
            bad.update(_all(key, uses, f"lies past the end of the pack ({sizes[pack]} bytes)"))
        elif key[2] > LIMIT:
            bad.update(_all(key, uses, f"is {key[2]} bytes long, more than a chunk can be"))
    if not inside:
        return bad
    first = inside[0][0][1]
    stored = reader._stored(pack, first,  # noqa: SLF001 - this thread's read buffer
                            max(k[1] + k[2] for k, _ in inside) - first)
    if scratch.decoded is None:
        scratch.decoded = memoryview(bytearray(CHUNK_BYTES))
        scratch.views = [scratch.decoded[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
                         for k in range(CHUNK_PAGES)]
    for key, uses in inside:
        problem = _chunk_problem(key, stored[key[1] - first:key[1] - first + key[2]],
                                 uses, reader.index.data, scratch)
        if problem is not None:
            bad.update(problem)
    return bad


def _chunk_problem(key: Key, stored: memoryview, uses: list[Use], index: bytearray,
                   scratch: _Scratch) -> dict[int, tuple[Key, str]] | None:
    """The bad pages of one chunk (None: all good): decoded into this thread's buffer (a zstd
    frame, with its own checksum checked, as a restore decodes it) and each used page
    hashed; a stretch of pages is compared with its records at once."""
    pages = stored
    if key[3] & FLAG_ZSTD:
        try:
            declared = zstdfast.content_size(stored)
            got = zstdfast.decompress_into(stored, scratch.decoded)
        except zstdfast.ZstdFailure as error:
            return _all(key, uses, f"does not decompress: {error}")
        if declared is not None and declared != got:
            return _all(key, uses, f"decompresses to {got} bytes, its header says {declared}")
        pages = scratch.decoded[:got]
    if len(pages) % PAGE_SIZE:
        return _all(key, uses, f"holds {len(pages)} bytes, not whole pages")
    held = len(pages) // PAGE_SIZE
    views = scratch.views if pages.obj is scratch.decoded.obj else None
    digest = xxhash.xxh3_128_digest
    bad: dict[int, tuple[Key, str]] = {}
    for slot, page_id, n in uses:
        if slot + n <= held:
            here = views[slot:slot + n] if views is not None else \
                [pages[k * PAGE_SIZE:(k + 1) * PAGE_SIZE] for k in range(slot, slot + n)]
            if b"".join(map(digest, here)) == b"".join(HASHES[n].unpack_from(
                    index, page_id * RECORD)):  # n <= held <= CHUNK_PAGES
                continue
        for k in range(n):  # which pages
            if slot + k >= held:
                bad[page_id + k] = (key, f"holds {held} pages, not the page of slot "
                                         f"{slot + k}")
            elif digest(pages[(slot + k) * PAGE_SIZE:(slot + k + 1) * PAGE_SIZE]) != \
                    HASHES[1].unpack_from(index, (page_id + k) * RECORD)[0]:
                bad[page_id + k] = (key, "holds it with bytes that do not match its xxh3-128 "
                                         "in the page index")
    return bad or None


def _all(key: Key, uses: list[Use], problem: str) -> dict[int, tuple[Key, str]]:
    return {page_id + k: (key, problem) for _, page_id, n in uses for k in range(n)}


def _places(reader: CheckedReader, bad: dict[int, tuple[Key, str]]) -> list[BadRun]:
    """The bad pages as stretches of addresses, in the checkpoint's order (one stretch: one
    chunk and one problem); a page used at several addresses is named at each."""
    out: list[BadRun] = []
    ids, at = reader.ids, 0
    last: tuple[int, Key, str] | None = None  # the end address and chunk of the last stretch
    for run in reader.runs:
        for k in range(run.count):
            found = bad.get(ids[at + k])
            if found is None:
                continue
            vaddr = run.vaddr + k * PAGE_SIZE
            key, what = found
            if last is not None and last == (vaddr, key, what):
                prior = out.pop()
                out.append(BadRun(prior.vaddr, prior.count + 1, prior.offset, PAGE_SIZE, None,
                                  prior.problem))
            else:
                out.append(BadRun(vaddr, 1, key[1], PAGE_SIZE, None,
                                  f"the chunk at offset {key[1]:#x} of "
                                  f"{pack_path(reader.directory, key[0])} {what}"))
            last = (vaddr + PAGE_SIZE, key, what)
        at += run.count
    return out

