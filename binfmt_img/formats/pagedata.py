"""A v1 image's page data as it is written: the chunks a dump reads become runs of non-zero
pages, each with its crc32, plain (version 0x200) or as zstd frames (0x201, docs/FORMAT.md
"Compressed runs").

Both writers keep the work off the thread that writes, so that reading the process (the
producer's own thread), checksumming or compressing (helper threads, no GIL:
binfmt_img.formats.crc and binfmt_img.formats.zstdfast release it) and the file writes
overlap on the machine's cores.
A chunk's bytes are only used until the next chunk is asked for (the producer reuses its
buffers): every helper's work on a chunk is finished before that.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from binfmt_img.formats import crc, packed, zstdfast
from binfmt_img.formats.model import PAGE_SIZE

Chunks = Iterable[tuple[int, "memoryview | bytes"]]
Write = Callable[[int, list[memoryview]], None]  # views that follow each other from an offset
# A run as the run table holds it: vaddr, pages, file offset, crc32, frame length (0: raw).
Run = list[int]

_ZERO = memoryview(bytes(PAGE_SIZE)).cast("Q")
GATHER = 16 << 20  # compressed output is written in pieces of this size
BATCH = 1 << 20  # bytes of pages one compression task takes


def nonzero_runs(vaddr: int, data: memoryview,
                 keep_zero: Callable[[int], bool]) -> Iterator[tuple[int, memoryview]]:
    """Split a chunk of pages into runs of pages to store: zero pages are left out, except
    where `keep_zero` says a reader could not assume zeros (file mappings). Pages are
    compared as 512 words (a page that is not zero differs early)."""
    words = data.cast("Q") if data.format == "B" and data.contiguous else None
    start = None
    for at in range(0, len(data), PAGE_SIZE):
        if words is not None:
            zero = words[at >> 3:(at >> 3) + 512] == _ZERO
        else:
            zero = data[at:at + PAGE_SIZE] == bytes(PAGE_SIZE)
        zero = zero and not keep_zero(vaddr + at)
        if zero and start is not None:
            yield vaddr + start, data[start:at]
            start = None
        elif not zero and start is None:
            start = at
    if start is not None:
        yield vaddr + start, data[start:]


def _crcs(parts: list[memoryview], start: int) -> list[int]:
    """crc32 of each part, the first continuing from `start` (without the GIL)."""
    out = []
    for i, data in enumerate(parts):
        out.append(crc.crc32(data, start if i == 0 else 0))
    return out


def plain(chunks: Chunks, keep_zero: Callable[[int], bool], at: int,
          write: Write) -> tuple[int, list[Run]]:
    """Runs of raw pages written back to back from `at`; a run that continues the previous
    one in memory continues it in the file. A chunk's checksums are computed on a helper
    thread while its runs are written. Returns the end offset and the runs."""
    runs: list[Run] = []
    with ThreadPoolExecutor(max_workers=1) as helper:
        for vaddr, chunk in chunks:
            view = memoryview(chunk).cast("B")
            parts = list(nonzero_runs(vaddr, view, keep_zero))
            if not parts:
                continue
            last = runs[-1] if runs else None
            joins = last is not None and parts[0][0] == last[0] + last[1] * PAGE_SIZE
            crcs = helper.submit(_crcs, [data for _, data in parts],
                                 last[3] if joins and last is not None else 0)
            write(at, [data for _, data in parts])  # back to back in the file
            records = []
            for i, (run_vaddr, data) in enumerate(parts):
                count = len(data) // PAGE_SIZE
                if i == 0 and joins and last is not None:
                    last[1] += count
                    records.append(last)
                else:
                    records.append([run_vaddr, count, at, 0, 0])
                    runs.append(records[-1])
                at += len(data)
            for record, crc in zip(records, crcs.result()):
                record[3] = crc
    return at, runs


class _Gather:
    """Output bytes gathered into one page-aligned buffer and written in large pieces (one
    write each), starting at a page-aligned offset."""

    def __init__(self, write: Write, at: int) -> None:
        self.write, self.at = write, at
        self.start = at  # file offset of the buffer's first byte
        self.buffer = memoryview(mmap.mmap(-1, GATHER))
        self.used = 0

    def put(self, data: memoryview | bytes) -> int:
        """Append `data`; returns its file offset."""
        offset = self.at
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), GATHER - self.used)
            self.buffer[self.used:self.used + take] = view[:take]
            self.used += take
            view = view[take:]
            if self.used == GATHER:
                self.flush()
        self.at = offset + len(data)
        return offset

    def align(self) -> None:
        """Zeros up to the next page boundary."""
        pad = -self.at % PAGE_SIZE
        if pad:
            self.put(bytes(pad))

    def flush(self) -> None:
        if self.used:
            size = -(-self.used // PAGE_SIZE) * PAGE_SIZE  # the tail padded with zeros
            self.buffer[self.used:size] = bytes(size - self.used)
            self.write(self.start, [self.buffer[:size]])
            self.start += self.used
            if self.used % PAGE_SIZE:  # a partial last page: the next flush rewrites it
                keep = self.used % PAGE_SIZE
                self.start -= keep
                self.buffer[:keep] = self.buffer[self.used - keep:self.used]
                self.used = keep
            else:
                self.used = 0


class _Scratch(threading.local):
    """One output buffer per compression thread, reused."""

    buffer: memoryview | None = None

    def get(self) -> memoryview:
        if self.buffer is None:
            self.buffer = memoryview(bytearray(zstdfast.bound(packed.RUN_PAGES * PAGE_SIZE)))
        return self.buffer


def _compress_batch(pieces: list[memoryview], level: int,
                    scratch: _Scratch) -> list[tuple[bytes | None, int]]:
    """(frame, crc32 of the frame) per piece, or (None, crc32 of the raw bytes) where the
    frame would not save enough."""
    out: list[tuple[bytes | None, int]] = []
    buffer = scratch.get()
    for piece in pieces:
        size = zstdfast.compress_into(piece, buffer, level)
        if size <= packed.RAW_ABOVE * len(piece):
            frame = bytes(buffer[:size])
            out.append((frame, crc.crc32(frame)))
        else:
            out.append((None, crc.crc32(piece)))
    return out


def compressed(chunks: Chunks, keep_zero: Callable[[int], bool], at: int, write: Write,
               level: int = packed.LEVEL,
               workers: int = packed.WORKERS) -> tuple[int, list[Run]]:
    """Runs of at most packed.RUN_PAGES pages, each one zstd frame (packed back to back) or,
    where zstd does not pay, raw (page aligned). Compressed on helper threads, straight from
    the chunk, while the producer reads the next chunk. Returns the (page-aligned) end
    offset and the runs; adjacent runs are not joined."""
    runs: list[Run] = []
    out = _Gather(write, at)
    scratch = _Scratch()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for vaddr, chunk in chunks:
            view = memoryview(chunk).cast("B")
            pieces = [piece for run_vaddr, data in nonzero_runs(vaddr, view, keep_zero)
                      for piece in packed.split(run_vaddr, data)]
            batches: list[tuple[list[tuple[int, memoryview]], Future]] = []
            group: list[tuple[int, memoryview]] = []
            for piece in pieces + [(0, memoryview(b""))]:
                if group and (not len(piece[1]) or sum(len(p) for _, p in group) >= BATCH):
                    batches.append((group, pool.submit(
                        _compress_batch, [p for _, p in group], level, scratch)))
                    group = []
                if len(piece[1]):
                    group.append(piece)
            for group, future in batches:  # in order; all done before the next chunk
                for (piece_vaddr, data), (frame, crc) in zip(group, future.result()):
                    count = len(data) // PAGE_SIZE
                    if frame is None:
                        out.align()
                        runs.append([piece_vaddr, count, out.put(data), crc, 0])
                    else:
                        runs.append([piece_vaddr, count, out.put(frame), crc, len(frame)])
    out.align()
    out.flush()
    return out.at, runs
