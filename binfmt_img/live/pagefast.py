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
page writes of 1 GiB take 0.52-0.57 s in GDB instead of 0.7-0.76. The same table first frees
the replaced process's large mappings, moved aside by the first batch (park) instead of
unmapped there (0.08 s a GiB off the critical path).

Nothing visible changes: only the ranges the writer is about to write are populated (the
image's stored pages, in private anonymous writable mappings), and a populated page is the
zero page the write would have faulted in itself; the VMAs' flags are untouched. A kernel
without MADV_POPULATE_WRITE (before 5.14) answers EINVAL: the progress word then holds an
address that is not page aligned and the writer keeps to /proc/PID/mem. The table runs
with every signal held back (the image's handlers are in place by then, its memory not)."""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import PAGE_SIZE, PROT_WRITE, Image, PageRun
from binfmt_img.live import syscalls as sc
from binfmt_img.live import vmread
from binfmt_img.live.inject import DATA_AT, SCRATCH_SIZE, Batch, Injector, free_area
from binfmt_img.live.procfs import Mapping, ProcMem
from binfmt_img.live.restorer import Layout

MADVISE = 28
MADV_POPULATE_WRITE = 23
CHUNK = 8 << 20  # bytes per madvise: the writer sees progress at this grain
MAX_CHUNKS = 256  # the table in the scratch area's data pages (two entries a chunk)
# Below this much to populate the table's stop costs more than it saves.
POPULATE_FROM = 64 << 20
READ_EVERY = 3
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
    """(start, size) pieces of CHUNK bytes (more for more than MAX_CHUNKS of them, so that
    the table stays small), from the highest address down."""
    total = sum(end - start for start, end in ranges)
    size = max(CHUNK, -(-total // MAX_CHUNKS // PAGE_SIZE) * PAGE_SIZE)
    out = []
    for start, end in sorted(ranges, reverse=True):
        while end > start:
            low = max(start, end - size)
            out.append((low, end - low))
            end = low
    return out


def populate_batch(batch: Batch, ranges: list[tuple[int, int]]) -> int:
    """Queue each chunk's madvise (may fail), then the STORE of its start plus the madvise's
    result (0, or -errno: an address not page aligned) into the progress word; the word's
    offset in the batch's data."""
    word = batch.put(struct.pack("<Q", NOTHING), 8)
    for start, size in chunks(ranges):
        done = batch.raw(MADVISE, start, size, MADV_POPULATE_WRITE)
        batch.store(done + start, word)
    return word.at


class Populated:
    """The writer's view of the populater's progress: reads the word, tells whether a piece
    lies in memory already populated. The word is read before every READ_EVERY-th piece
    only: with three threads on two cores (writer, its reader, the inferior) each read
    waits a scheduler tick as often as not (2-4 ms, a sixth of a piece's write)."""

    def __init__(self, mem: ProcMem, word: int) -> None:
        self.mem, self.word = mem, word
        self.low = NOTHING
        self.failed = False
        self.unread = READ_EVERY  # pieces asked about since the last read

    def covers(self, vaddr: int) -> bool:
        if self.failed:
            return False
        if vaddr < self.low and self.unread + 1 < READ_EVERY:
            self.unread += 1
            return False
        if vaddr < self.low:
            self.unread = 0
            self.low = struct.unpack("<Q", self.mem.read(self.word, 8))[0]
            if self.low % PAGE_SIZE:
                self.failed = True  # madvise refused (an old kernel): never again
                return False
        return vaddr >= self.low


# process_vm_writev (a module name, so that a test can stand in for it).
vm_write = vmread.write_from


def writer(pid: int, mem: ProcMem, populated: Populated) -> Callable[[int, memoryview], None]:
    """A put(vaddr, data) for PageWriter: process_vm_writev into populated memory, the rest
    (and what it leaves) through /proc/PID/mem."""

    def put(vaddr: int, data: memoryview) -> None:
        done = vm_write(pid, vaddr, data) if populated.covers(vaddr) else 0
        if done < len(data):
            mem.write(vaddr + done, data[done:])
    return put


@contextmanager
def populating(injector: Injector, image: Image, pid: int, runs: list[PageRun],
               parked: list[tuple[int, int]]) -> Iterator[Callable[[int, memoryview], None]
                                                          | None]:
    """Around the page writes: the inferior frees the `parked` memory (park) and populates
    the runs' memory meanwhile, where the target can let a table run while this thread works
    (Target.resume_to_trap) and there is enough of it; yields the put() to write with, or
    None (write as before, the parked memory freed first)."""
    target = injector.target
    resume = getattr(target, "resume_to_trap", None)
    ranges = populate_ranges(image, runs) if resume is not None else []
    if sum(end - low for low, end in ranges) < POPULATE_FROM:
        with injector.batch() as batch:
            unpark(batch, parked)
        yield None
        return
    batch = Batch(injector)
    for start, end in parked:
        batch.raw(sc.MUNMAP, start, end - start)
    word_at = populate_batch(batch, ranges)
    layout = _place(injector, batch)
    traps = injector.traps()
    mem = ProcMem(pid, writable=True)
    if not resume(traps):
        mem.close()
        with injector.batch() as again:
            unpark(again, parked)
        yield None
        return
    try:
        yield writer(pid, mem, Populated(mem, layout.data + word_at))
    finally:
        mem.close()
        target.await_trap(traps)
    # The madvise calls may fail (the writer read their outcome); a stop elsewhere than the
    # table's end (a fault) raises here, and an unmapping that failed is made again.
    results = injector._table_results(layout, len(batch.entries))
    if any(sc.is_error(r) for r in results[:len(parked)]):
        with injector.batch() as again:
            unpark(again, parked)


def _place(injector: Injector, batch: Batch) -> Layout:
    """The table written into the scratch data pages or the table area, and the selected
    thread's registers set to run it."""
    assert injector.scratch is not None
    size = batch.size()
    base = (injector.scratch + DATA_AT if DATA_AT + size <= SCRATCH_SIZE
            else injector._table_area(size))
    layout = batch.place(base)
    injector._data_used = 0  # the data pages may hold the table now
    injector._start_table(layout, len(batch.entries))
    return layout


# ---- the old memory freed beside the page writes ----

PARK_FROM = 32 << 20  # a live mapping this large is moved aside, not unmapped, at first
PMD = 2 << 20


def parkable(live: list[Mapping]) -> list[Mapping]:
    """The inferior's large private anonymous mappings (the memory a process replaced by the
    restore held): their pages are freed by the inferior while the debugger writes."""
    return [m for m in live if not m.path and m.perms[3] == "p" and m.inode == 0
            and m.end - m.start >= PARK_FROM]


def park(batch: Batch, image: Image, pid: int, live: list[Mapping],
         keep: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Queue mremap calls that move the live process's large private anonymous mappings
    out of the way (when the page writes will populate: the table that does frees them),
    into one free area clear of `keep`, the live mappings and the image's, each as aligned
    to 2 MiB as it was (the kernel then moves whole page tables); the area, to be kept by
    the unmapping and freed later (unpark). A move that fails leaves the mapping where it
    was, for the unmapping to free there. Nothing is moved where holding the old memory
    while the new is made could fail a restore that freeing it first would not."""
    mappings = parkable(live)
    size = sum(m.end - m.start + PMD for m in mappings)
    if (not mappings or getattr(batch.injector.target, "resume_to_trap", None) is None
            or sum(e - s for s, e in populate_ranges(image, image.runs)) < POPULATE_FROM
            or not room_to_park(pid, size)):
        return []
    taken = keep + [(v.start, v.end) for v in image.vmas] + [(m.start, m.end) for m in live]
    try:
        base = free_area(taken, size)
    except RestoreError:
        return []
    at, out = base, []
    for m in mappings:
        at += (m.start - at) % PMD
        batch.raw(sc.MREMAP, m.start, m.end - m.start, m.end - m.start,
                  sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, at)
        out.append((at, at + m.end - m.start))
        at += m.end - m.start
    return [(base, base + size)]


def unpark(batch: Batch, parked: list[tuple[int, int]]) -> None:
    for start, end in parked:
        batch.call(sc.MUNMAP, start, end - start, step="unmapping the replaced memory",
                   address=start)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def room_to_park(pid: int, size: int) -> bool:
    """Whether `size` bytes of old memory may stay while the new is mapped and written: not
    under strict overcommit (both would be committed at once), a limit on the inferior's
    address space, or a memory cgroup (or a machine) with less than that to spare."""
    try:
        if _read("/proc/sys/vm/overcommit_memory").strip() == "2":
            return False
        limit = next(line for line in _read(f"/proc/{pid}/limits").splitlines()
                     if line.startswith("Max address space"))
        if limit.split()[3] != "unlimited":
            return False
        meminfo = dict(line.split(":", 1) for line in _read("/proc/meminfo").splitlines())
        if int(meminfo["MemAvailable"].split()[0]) * 1024 < 2 * size:
            return False
        for group in _read(f"/proc/{pid}/cgroup").splitlines():
            _, controllers, path = group.split(":", 2)
            if controllers == "":  # cgroup v2
                files = ("/sys/fs/cgroup", "memory.max", "memory.current")
            elif "memory" in controllers.split(","):  # v1
                files = ("/sys/fs/cgroup/memory", "memory.limit_in_bytes",
                         "memory.usage_in_bytes")
            else:
                continue
            if not _cgroup_room(path, files, 2 * size):
                return False
    except (OSError, StopIteration, KeyError, ValueError, IndexError):
        return False
    return True


def _cgroup_room(path: str, files: tuple[str, str, str], size: int) -> bool:
    """Each level of a memory cgroup, up to the root, has `size` bytes under its limit."""
    root, limit_name, used_name = files
    while True:
        where = root + path.rstrip("/")
        try:
            limit, used = _read(f"{where}/{limit_name}").strip(), _read(f"{where}/{used_name}")
        except FileNotFoundError:
            limit, used = "max", "0"
        if limit != "max" and int(limit) - int(used) < size:
            return False
        if path.strip("/") == "":
            return True
        path = path.rstrip("/").rsplit("/", 1)[0] or "/"
