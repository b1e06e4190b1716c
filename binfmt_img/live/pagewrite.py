"""Moving an image's pages into the inferior: through /proc/PID/mem in large writes when it
runs on this machine ("fast"), else through the debugger's memory API."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from binfmt_img.errors import RestoreError
from binfmt_img.formats.crc import crc32
from binfmt_img.formats.model import PAGE_SIZE, Image, PageRun
from binfmt_img.live.procfs import ProcMem
from binfmt_img.live.target import Target

WRITE_PIECE = 16 << 20  # bytes per write: large enough to be fast, small to stay flat
DEBUGGER_PIECE = 1 << 20
Progress = Callable[[int, int], None]  # pages done, pages in all


def pieces(run: PageRun, size: int) -> list[PageRun]:
    per = max(1, size // PAGE_SIZE)
    return [PageRun(run.vaddr + i * PAGE_SIZE, min(per, run.count - i),
                    run.offset + i * run.stride, run.stride) for i in range(0, run.count, per)]


def joined(runs: list[PageRun]) -> list[PageRun]:
    """A reader's runs (checked as it reads them) joined where they follow each other both in
    memory and in its page space: a compressed image's runs hold 64 pages at most, and a
    restore goes faster in large pieces, whose frames the reader decompresses together."""
    out: list[PageRun] = []
    for run in runs:
        last = out[-1] if out else None
        if (last is not None and run.checksum is None and last.checksum is None
                and run.stride == last.stride == PAGE_SIZE and last.end == run.vaddr
                and last.offset + last.count * PAGE_SIZE == run.offset):
            out[-1] = PageRun(last.vaddr, last.count + run.count, last.offset, PAGE_SIZE)
        else:
            out.append(run)
    return out


def outside(image: Image, runs: list[PageRun], holes: list[tuple[int, int]]) -> list[PageRun]:
    """The parts of `runs` that lie outside the address ranges `holes`."""
    holes = sorted(holes) + [(1 << 64, 1 << 64)]
    kept = []
    for run in runs:
        cursor = run.vaddr
        for start, end in holes:
            piece = image.clip_run(run, cursor, start)
            if piece is not None:
                kept.append(piece)
            cursor = max(cursor, end)
    return kept


class PageWriter:
    """Writes runs of pages into the inferior. An image loaded from a file is read from its
    held descriptor (image.fd) with pread, never through its mapping: a file truncated
    meanwhile gives an error, not SIGBUS in the debugger. Each run's checksum is computed
    again from the bytes written, so a file changed after the check is caught."""

    def __init__(self, target: Target, image: Image, pid: int, fast: bool,
                 progress: Progress | None = None) -> None:
        self.target, self.image, self.pid, self.fast = target, image, pid, fast
        self.progress = progress
        self.pages = 0
        self.seconds = 0.0
        self._total = 0

    @property
    def path(self) -> str:
        return "fast (/proc/PID/mem)" if self.fast else "debugger"

    def write(self, runs: list[PageRun],
              put: Callable[[int, memoryview], None] | None = None) -> None:
        """`put(vaddr, data)`: how the fast path writes (binfmt_img/live/pagefast), else
        /proc/PID/mem."""
        size = WRITE_PIECE if self.fast else DEBUGGER_PIECE
        if self.image.reader is not None:
            runs = joined(runs)
        todo = [(p, run, i == 0) for run in runs for i, p in enumerate(pieces(run, size))]
        self._total = sum(p.count for p, _, _ in todo)
        started = time.monotonic()
        mem = ProcMem(self.pid, writable=True) if self.fast else None
        try:
            if mem is None:
                put = self.target.write_memory
            elif put is None:
                put = mem.write
            if self.image.fd is not None or self.image.reader is not None:
                self._staged(todo, put)
            else:
                for piece, _, _ in todo:
                    self._guarded(piece, lambda p: self._from_source(p, put))
        finally:
            if mem is not None:
                mem.close()
        self.seconds = time.monotonic() - started

    def _staged(self, todo: list[tuple[PageRun, PageRun, bool]],
                put: Callable[[int, memoryview], None]) -> None:
        """The image file read into reused buffers by helper threads while another buffer goes
        to the inferior: the read hides behind the write. (A pwrite straight from the file's
        mapping would fault in every source page, several times slower.)"""
        source = self.image.reader
        piece_size = max(p.count for p, _, _ in todo) * PAGE_SIZE if todo else 0
        # A reader (compressed pages) decompresses two pieces at once on their own threads,
        # without the GIL, while this one writes a third: both cores stay busy. A plain file
        # has one reader thread, which also keeps each run's checksum (in order).
        ahead = 2 if source is not None else 1
        buffers = [memoryview(mmap.mmap(-1, max(piece_size, PAGE_SIZE)))
                   for _ in range(ahead + 1)]
        crc = 0  # the run's checksum so far, kept by the one plain reader

        def load(i: int) -> tuple[memoryview, int]:
            """Piece i read into its buffer, and its run's checksum up to its end (computed
            here, beside the writes)."""
            nonlocal crc
            piece, run, first = todo[i]
            data = buffers[i % len(buffers)][:piece.count * PAGE_SIZE]
            if source is not None:  # compressed or a store's: checked as they are read
                source.read_into(piece.offset, data)
                return data, run.checksum or 0
            self._read(piece, data)
            if run.checksum is not None:
                crc = crc32(data, 0 if first else crc)
            return data, crc

        with ThreadPoolExecutor(max_workers=ahead) as reader:
            loading = [reader.submit(load, i) for i in range(min(ahead, len(todo)))]
            for i, (piece, run, _) in enumerate(todo):
                future = loading.pop(0)
                data, got = self._guarded(piece, lambda _p, f=future: f.result())
                if i + ahead < len(todo):  # into the buffer written before this one
                    loading.append(reader.submit(load, i + ahead))
                self._guarded(piece, lambda p, d=data: put(p.vaddr, d))
                self._done(piece)
                last = i + 1 == len(todo) or todo[i + 1][2]
                if last and run.checksum is not None and got != run.checksum:
                    raise RestoreError(f"the image file changed during the restore: page run "
                                       f"{run.vaddr:#x} no longer matches its checksum; the "
                                       "inferior is half-restored")

    def _read(self, piece: PageRun, buffer: memoryview) -> None:
        """A piece's bytes from the image file: contiguous runs in one read; v0's per-page
        records one page at a time."""
        fd = self.image.fd
        assert fd is not None
        parts = ([(0, piece.offset, piece.count * PAGE_SIZE)] if piece.stride == PAGE_SIZE
                 else [(j * PAGE_SIZE, piece.offset + j * piece.stride, PAGE_SIZE)
                       for j in range(piece.count)])
        for at, offset, size in parts:
            done = 0
            while done < size:
                got = os.preadv(fd, [buffer[at + done:at + size]], offset + done)
                if got <= 0:
                    raise OSError(f"the image file ends before its page data at "
                                  f"{offset + done:#x} (changed since it was checked?)")
                done += got

    def _from_source(self, piece: PageRun, put: Callable[[int, memoryview], None]) -> None:
        """An image held in memory (a core converted on load, a synthetic image)."""
        addr = piece.vaddr
        for chunk in self.image.run_data(piece):
            put(addr, chunk)
            addr += len(chunk)
        self._done(piece)

    def _guarded(self, piece: PageRun, action: Callable[[PageRun], object]) -> object:
        try:
            return action(piece)
        except (OSError, RuntimeError) as error:
            raise RestoreError(f"writing pages at {piece.vaddr:#x}: {error}") from None

    def _done(self, piece: PageRun) -> None:
        self.image.release(piece.offset, piece.count * piece.stride)
        self.pages += piece.count
        if self.progress is not None:
            self.progress(self.pages, self._total)
