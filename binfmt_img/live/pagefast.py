"""Page writes into fresh memory, faster: the inferior faults in its own pages while the
debugger writes others (docs/RESTORER.md, "Populating").

A write into a page not yet present costs the kernel a fault, a page and its zeroing on top
of the copy: measured here, 1 GiB through /proc/PID/mem takes 0.68-0.8 s into fresh pages
and 0.33-0.46 s into present ones. So while GDB's Python writes the runs from the lowest
address up, the inferior runs a restorer table of madvise(MADV_POPULATE_WRITE) calls over
the same runs from the highest address down, each followed by a STORE of how far it got
into a word of the table's data. The writer reads that word before each piece: a piece the
inferior has populated goes in with process_vm_writev (one copy, pages pinned in batches;
into fresh pages it is several times slower than /proc/PID/mem, into present ones faster),
the others through /proc/PID/mem as before. The two meet in the middle: on two cores the
page writes take about 0.4 s per GiB instead of 0.7.

Nothing visible changes: only the ranges the writer is about to write are populated (the
image's stored pages, in private anonymous writable mappings), and a populated page is the
zero page the write would have faulted in itself; the VMAs' flags are untouched. A kernel
without MADV_POPULATE_WRITE (before 5.14) answers EINVAL: the progress word then holds an
address that is not page aligned and the writer keeps to /proc/PID/mem. The table runs
with every signal held back (the image's handlers are in place by then, its memory not)."""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from binfmt_img.formats.model import PAGE_SIZE, PROT_WRITE, Image, PageRun
from binfmt_img.live.inject import DATA_AT, SCRATCH_SIZE, Batch, Injector
from binfmt_img.live.procfs import ProcMem

MADVISE = 28
MADV_POPULATE_WRITE = 23
CHUNK = 8 << 20  # bytes per madvise: the writer sees progress at this grain
# Below this much to populate the table's stop costs more than it saves.
POPULATE_FROM = 64 << 20
NOTHING = (1 << 64) - PAGE_SIZE  # the progress word before the first chunk is in


def populate_ranges(image: Image, runs: list[PageRun]) -> list[tuple[int, int]]:
    """The address ranges of `runs` (those the writer will write) that lie in private
    anonymous writable VMAs, joined where they follow each other."""
    vmas = sorted((v for v in image.vmas if not v.is_file and not v.is_shared
                   and v.prot & PROT_WRITE), key=lambda v: v.start)
    starts = [v.start for v in vmas]
    out: list[tuple[int, int]] = []
    for run in runs:
        i = bisect.bisect_right(starts, run.vaddr) - 1
        if i < 0 or run.end > vmas[i].end:
            continue
        if out and out[-1][1] == run.vaddr:
            out[-1] = (out[-1][0], run.end)
        else:
            out.append((run.vaddr, run.end))
    return out


def chunks(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, size) pieces of at most CHUNK bytes, from the highest address down."""
    out = []
    for start, end in sorted(ranges, reverse=True):
        while end > start:
            low = max(start, end - CHUNK)
            out.append((low, end - low))
            end = low
    return out


def populate_batch(injector: Injector, ranges: list[tuple[int, int]]) -> tuple[Batch, int]:
    """The table: each chunk's madvise (may fail), then the STORE of its start plus the
    madvise's result (0, or -errno: an address not page aligned) into the progress word.
    The word's offset in the batch's data is returned."""
    batch = Batch(injector)
    word = batch.put(struct.pack("<Q", NOTHING), 8)
    for start, size in chunks(ranges):
        done = batch.raw(MADVISE, start, size, MADV_POPULATE_WRITE)
        batch.store(done + start, word)
    return batch, word.at


class Populated:
    """The writer's view of the populater's progress: reads the word, tells whether a piece
    lies in memory already populated."""

    def __init__(self, mem: ProcMem, word: int) -> None:
        self.mem, self.word = mem, word
        self.low = NOTHING
        self.failed = False

    def covers(self, vaddr: int) -> bool:
        if self.failed:
            return False
        if vaddr < self.low:
            self.low = struct.unpack("<Q", self.mem.read(self.word, 8))[0]
            if self.low % PAGE_SIZE:
                self.failed = True  # madvise refused (an old kernel): never again
                return False
        return vaddr >= self.low


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _libc_call() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.process_vm_writev
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                     ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
    call.restype = ctypes.c_ssize_t
    return call  # type: ignore[no-any-return]


_WRITEV = _libc_call()


def vm_write(pid: int, addr: int, view: memoryview) -> int:
    """process_vm_writev of `view` to `addr`: the bytes written (short where a page refuses
    it: a mapping without PROT_WRITE, which /proc/PID/mem writes by force), 0 when none."""
    if _WRITEV is None or not len(view):
        return 0
    try:
        base = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # read-only or not contiguous
        return 0
    done = 0
    while done < len(view):
        local = _Iovec(base + done, len(view) - done)
        remote = _Iovec(addr + done, len(view) - done)
        got = _WRITEV(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got <= 0:
            break
        done += got
    return done


def writer(pid: int, mem: ProcMem, populated: Populated) -> Callable[[int, memoryview], None]:
    """A put(vaddr, data) for PageWriter: process_vm_writev into populated memory, the rest
    (and what it leaves) through /proc/PID/mem."""

    def put(vaddr: int, data: memoryview) -> None:
        done = vm_write(pid, vaddr, data) if populated.covers(vaddr) else 0
        if done < len(data):
            mem.write(vaddr + done, data[done:])
    return put


@contextmanager
def populating(injector: Injector, image: Image, pid: int,
               runs: list[PageRun]) -> Iterator[Callable[[int, memoryview], None] | None]:
    """Around the page writes: the inferior populates the runs' memory meanwhile, where the
    target can let a table run while this thread works (Target.resume_to_trap) and there is
    enough of it; yields the put() to write with, or None (write as before)."""
    target = injector.target
    resume = getattr(target, "resume_to_trap", None)
    ranges = populate_ranges(image, runs) if resume is not None else []
    if sum(end - low for low, end in ranges) < POPULATE_FROM:
        yield None
        return
    batch, word_at = populate_batch(injector, ranges)
    assert injector.scratch is not None
    size = batch.size()
    base = (injector.scratch + DATA_AT if DATA_AT + size <= SCRATCH_SIZE
            else injector._table_area(size))
    layout = batch.place(base)
    injector._data_used = 0  # the data pages may hold the table now
    injector._start_table(layout, len(batch.entries))
    traps = injector.traps()
    if not resume(traps):
        yield None
        return
    mem = ProcMem(pid, writable=True)
    try:
        yield writer(pid, mem, Populated(mem, layout.data + word_at))
    finally:
        mem.close()
        target.await_trap(traps)
    # Every entry may fail: the results only mattered to the writer, which read them. A stop
    # elsewhere than the table's end (a fault) says the inferior is not as expected.
    injector._table_results(layout, len(batch.entries))
