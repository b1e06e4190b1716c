"""A v1 image's page data as it is written: the chunks a dump reads become runs of non-zero
pages, each with its crc32, plain (version 0x200), as zstd frames (0x201, docs/FORMAT.md
"Compressed runs") or as LZ4 blocks (0x202, "LZ4 runs").

Both writers keep the work off the thread that writes, so that reading the process (the
producer's own thread), checksumming or compressing (helper threads, no GIL:
binfmt_img.formats.crc, zstdfast and lz4fast release it) and the file writes
overlap on the machine's cores.
A chunk's bytes are only used until the next chunk is asked for (the producer reuses its
buffers): every helper's work on a chunk is finished before that.
"""

from __future__ import annotations

import mmap
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from binfmt_img.formats import crc, lz4fast, packed, zstdfast
from binfmt_img.formats.model import PAGE_SIZE

Chunks = Iterable[tuple[int, "memoryview | bytes"]]
Write = Callable[[int, list[memoryview]], None]  # views that follow each other from an offset
# A run as the run table holds it: vaddr, pages, file offset, crc32, frame length (0: raw).
Run = list[int]

_ZERO = memoryview(bytes(PAGE_SIZE)).cast("Q")
GATHER = 16 << 20  # compressed output is written in pieces of this size
BATCH = 1 << 20  # bytes of pages one compression task takes
SMALL = 2 * BATCH  # a chunk of at most this many bytes is compressed from a copy
INFLIGHT = 8  # compression tasks waiting to be written, at most (more: the oldest waited for)


def nonzero_runs(vaddr: int, data: memoryview,
                 keep_zero: Callable[[int], bool]) -> Iterator[tuple[int, memoryview]]:
    """Split a chunk of pages into runs of pages to store: zero pages are left out, except
    where `keep_zero` says a reader could not assume zeros (file mappings). Only a page whose
    first word is zero can be a zero page: the first words of all pages are taken in one
    strided copy, and only those pages compared whole (as 512 words)."""
    pages = len(data) // PAGE_SIZE
    if data.format == "B" and data.contiguous:
        words = data.cast("Q")
        firsts = words[::512].tolist()
        zeros = [] if 0 not in firsts else [
            i for i, word in enumerate(firsts)
            if not word and words[i * 512:(i + 1) * 512] == _ZERO]
    else:
        zeros = [i for i in range(pages)
                 if data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] == bytes(PAGE_SIZE)]
    start = 0
    for page in zeros:
        if keep_zero(vaddr + page * PAGE_SIZE):
            continue
        if page > start:
            yield vaddr + start * PAGE_SIZE, data[start * PAGE_SIZE:page * PAGE_SIZE]
        start = page + 1
    if pages > start:
        yield vaddr + start * PAGE_SIZE, data[start * PAGE_SIZE:]


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


class _Buffers:
    """Buffers of one size, reused once given back (from any thread). Anonymous mappings:
    a bytearray would be zeroed whole on allocation (25 ms a dump of python's heap), a
    mapping's pages are zeroed by the kernel as they are first used, if ever."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()

    def get(self) -> memoryview:
        try:
            return self.free.get_nowait()
        except queue.Empty:
            return memoryview(mmap.mmap(-1, self.size))

    def put(self, buffer: memoryview) -> None:
        self.free.put(buffer)


# A part's output buffer holds its frames back to back (and its raw pieces), so that they go
# into the file in one copy; room for a last piece's bound too.
OUTPUT = BATCH + 2 * (packed.RUN_PAGES * PAGE_SIZE + (1 << 12))


# A compressed part: its output buffer, and per piece: vaddr, pages, the bytes' end in the
# buffer, their crc32, the frame's length (0: the raw pages, just before the end).
Part = tuple[memoryview, list[tuple[int, int, int, int, int]]]


def _compress_part(vaddr: int, data: memoryview, keep_zero: Callable[[int], bool], level: int,
                   codec: str, outputs: _Buffers) -> Part:
    """A part of a chunk (BATCH bytes) cut into runs of non-zero pages of at most
    packed.RUN_PAGES pages, each compressed into the part's own buffer: a frame where it
    saves enough, else the raw bytes (copied: the chunk's buffer may be reused once all its
    parts are done)."""
    buffer = outputs.get()
    pieces = []
    used = 0
    lz4 = codec == "lz4"
    for run_vaddr, run in nonzero_runs(vaddr, data, keep_zero):
        for piece_vaddr, piece in packed.split(run_vaddr, run):
            room = buffer[used:]
            size = (lz4fast.compress_into(piece, room) if lz4
                    else zstdfast.compress_into(piece, room, level))
            count = len(piece) // PAGE_SIZE
            if size <= packed.RAW_ABOVE * len(piece):
                pieces.append((piece_vaddr, count, used + size, crc.crc32(room[:size]), size))
                used += size
            else:
                room[:len(piece)] = piece
                used += len(piece)
                pieces.append((piece_vaddr, count, used, crc.crc32(piece), 0))
    return buffer, pieces


def _put(out: _Gather, runs: list[Run], part: Part, mark: int) -> None:
    """A compressed part into the file, frames that follow each other in one copy; its run
    records into `runs`."""
    buffer, pieces = part
    start = 0  # of the frames not yet in the file
    base = out.at  # the file offset of buffer[start]
    for vaddr, count, end, crc32, length in pieces:
        if not length:  # raw: the frames before it, then it at a page boundary
            out.put(buffer[start:end - count * PAGE_SIZE])
            out.align()
            runs.append([vaddr, count, out.put(buffer[end - count * PAGE_SIZE:end]), crc32, 0])
            start, base = end, out.at
        else:
            runs.append([vaddr, count, base + end - length - start, crc32, length | mark])
    if pieces:
        out.put(buffer[start:pieces[-1][2]])


def compressed(chunks: Chunks, keep_zero: Callable[[int], bool], at: int, write: Write,
               level: int = packed.LEVEL, workers: int = packed.WORKERS,
               codec: str = "zstd") -> tuple[int, list[Run]]:
    """Runs of at most packed.RUN_PAGES pages, each one zstd frame or LZ4 block (`codec`;
    packed back to back) or, where it does not pay, raw (page aligned). Compressed on helper
    threads in parts of BATCH bytes (the zero pages found there too: this thread does little
    but write), while the producer reads the next chunk and this thread writes the frames
    compressed before. A large chunk is compressed in place, all its parts done before the
    next chunk is asked for; a small one (a process of many small mappings: python's
    arenas) from a copy, so that several are in flight at once and both helpers stay busy.
    Returns the (page-aligned) end offset and the runs; adjacent runs are not joined. An LZ4
    block's length has packed.LZ4_BIT set in its run's last field."""
    if codec not in packed.CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    mark = packed.LZ4_BIT if codec == "lz4" else 0
    runs: list[Run] = []
    out = _Gather(write, at)
    outputs, copies = _Buffers(OUTPUT), _Buffers(SMALL)
    # Parts in order, each with the copy to give back once it is written (a chunk's last).
    pending: deque[tuple[Future[Part], memoryview | None]] = deque()

    def put_done(wait: int) -> None:
        """Write the parts done at the front, and at least the first `wait` ones."""
        while pending and (wait > 0 or pending[0][0].done()):
            part, copy = pending.popleft()
            done = part.result()
            _put(out, runs, done, mark)
            outputs.put(done[0])
            if copy is not None:
                copies.put(copy)
            wait -= 1

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for vaddr, chunk in chunks:
            view = memoryview(chunk).cast("B")
            if not len(view):
                continue
            copy = None
            if len(view) <= SMALL:
                copy = copies.get()
                copy[:len(view)] = view
                view = copy[:len(view)]
            parts = [pool.submit(_compress_part, vaddr + start, view[start:start + BATCH],
                                 keep_zero, level, codec, outputs)
                     for start in range(0, len(view), BATCH)]
            pending.extend((part, None) for part in parts[:-1])
            pending.append((parts[-1], copy))
            put_done(0)  # what is done, while this chunk compresses
            if copy is None:
                for part in parts:  # all done before the next chunk reuses the buffer
                    part.exception()
            put_done(len(pending) - INFLIGHT)
        put_done(len(pending))
    out.align()
    out.flush()
    return out.at, runs
