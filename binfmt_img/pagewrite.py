"""Moving an image's pages into the inferior: through /proc/PID/mem in large writes when it
runs on this machine ("fast"), else through the debugger's memory API."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable

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
        self._mem: ProcMem | None = None
        self._staging: tuple[int, memoryview] | None = None  # image fd, reused buffer

    @property
    def path(self) -> str:
        return "fast (/proc/PID/mem)" if self.fast else "debugger"

    def write(self, runs: list[PageRun]) -> None:
        total = sum(run.count for run in runs)
        started = time.monotonic()
        if self.fast:
            self._mem = ProcMem(self.pid, writable=True)
            if self.image.path is not None:
                self._staging = (os.open(self.image.path, os.O_RDONLY),
                                 memoryview(mmap.mmap(-1, WRITE_PIECE)))
        try:
            for run in runs:
                for piece in pieces(run, WRITE_PIECE if self.fast else DEBUGGER_PIECE):
                    try:
                        self._write_piece(piece)
                    except (OSError, RuntimeError) as error:
                        raise RestoreError(f"writing pages at {piece.vaddr:#x}: "
                                           f"{error}") from None
                    self.image.release(piece.offset, piece.count * piece.stride)
                    self.pages += piece.count
                    if self.progress is not None:
                        self.progress(self.pages, total)
        finally:
            if self._mem is not None:
                self._mem.close()
            if self._staging is not None:
                os.close(self._staging[0])
        self.seconds = time.monotonic() - started

    def _write_piece(self, piece: PageRun) -> None:
        mem = self._mem
        if mem is not None and self._staging is not None and piece.stride == PAGE_SIZE:
            # Through one reused buffer: reading the file into it costs a copy, while
            # pwrite from the file's mapping would fault in every source page, 4x slower here.
            fd, buffer = self._staging
            size = piece.count * PAGE_SIZE
            if os.preadv(fd, [buffer[:size]], piece.offset) == size:
                mem.write(piece.vaddr, buffer[:size])
                return
        chunks = list(self.image.run_data(piece))
        if mem is not None:
            if len(chunks) == 1:
                mem.write(piece.vaddr, chunks[0])
            else:
                mem.writev(piece.vaddr, chunks)
            return
        addr = piece.vaddr
        for chunk in chunks:
            self.target.write_memory(addr, chunk)
            addr += len(chunk)
