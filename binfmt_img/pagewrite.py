"""Moving an image's pages into the inferior: through /proc/PID/mem in large writes when it
runs on this machine ("fast"), else through the debugger's memory API."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .errors import RestoreError
from .model import PAGE_SIZE, Image, PageRun
from .procfs import ProcMem
from .target import Target

WRITE_PIECE = 16 << 20  # bytes per write: large enough to be fast, small to stay flat
DEBUGGER_PIECE = 1 << 20
Progress = Callable[[int, int], None]  # pages done, pages in all


def pieces(run: PageRun, size: int) -> list[PageRun]:
    per = max(1, size // PAGE_SIZE)
    return [PageRun(run.vaddr + i * PAGE_SIZE, min(per, run.count - i),
                    run.offset + i * run.stride, run.stride) for i in range(0, run.count, per)]


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

    def write(self, runs: list[PageRun]) -> None:
        todo = [p for run in runs for p in pieces(run, WRITE_PIECE if self.fast else
                                                     DEBUGGER_PIECE)]
        self._total = sum(p.count for p in todo)
        started = time.monotonic()
        if not self.fast:
            for piece in todo:
                self._guarded(piece, self._through_debugger)
        else:
            mem = ProcMem(self.pid, writable=True)
            try:
                if self.image.path is not None and all(p.stride == PAGE_SIZE for p in todo):
                    self._staged(todo, mem)
                else:
                    for piece in todo:
                        self._guarded(piece, lambda p: self._from_mapping(p, mem))
            finally:
                mem.close()
        self.seconds = time.monotonic() - started

    def _staged(self, todo: list[PageRun], mem: ProcMem) -> None:
        """The image file read into two reused buffers by a helper thread while the other
        buffer goes to the inferior: the read hides behind the write. (A pwrite straight from
        the file's mapping would fault in every source page, several times slower.)"""
        assert self.image.path is not None
        fd = os.open(self.image.path, os.O_RDONLY)
        buffers = [memoryview(mmap.mmap(-1, WRITE_PIECE)) for _ in range(2)]

        def load(i: int) -> memoryview:
            piece, buffer = todo[i], buffers[i % 2]
            size = piece.count * PAGE_SIZE
            done = 0
            while done < size:
                got = os.preadv(fd, [buffer[done:size]], piece.offset + done)
                if got <= 0:
                    raise OSError(f"image file ends before page data at {piece.offset:#x}")
                done += got
            return buffer[:size]

        try:
            with ThreadPoolExecutor(max_workers=1) as reader:
                loading = reader.submit(load, 0) if todo else None
                for i, piece in enumerate(todo):
                    assert loading is not None
                    data = self._guarded(piece, lambda _p, f=loading: f.result())
                    loading = reader.submit(load, i + 1) if i + 1 < len(todo) else None
                    self._guarded(piece, lambda p, d=data: mem.write(p.vaddr, d))
                    self._done(piece)
        finally:
            os.close(fd)

    def _from_mapping(self, piece: PageRun, mem: ProcMem) -> None:
        chunks = list(self.image.run_data(piece))
        if len(chunks) == 1:
            mem.write(piece.vaddr, chunks[0])
        else:
            mem.writev(piece.vaddr, chunks)
        self._done(piece)

    def _through_debugger(self, piece: PageRun) -> None:
        addr = piece.vaddr
        for chunk in self.image.run_data(piece):
            self.target.write_memory(addr, chunk)
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
