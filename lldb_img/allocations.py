"""LLDB's own memory in the process, across an img-restore in place.

LLDB (Process::AllocateMemory) keeps the pages it mapped in the inferior for expressions in a
cache (AllocatedMemoryCache) and hands out parts of them again; only an exec or the end of
the process clears that cache, and no SB call or command does. A restore in place unmaps
those pages (they are not the image's), so every later expression failed ("couldn't allocate
a temporary region for the result"), and were the image to map something there, LLDB would
write its expression data into the program's memory.

So the pages are found before the restore and put back after it, with their contents (the
code of LLDB's utility functions lives there too): LLDB's cache is right again. They are
found through the cache itself: SBProcess.AllocateMemory returns a part of a cached page
while one has room, and only maps a new page when none has; with the inferior's RLIMIT_AS
lowered for the while, that mapping fails, so reserving every free range of every
permission finds all the pages with room without adding one. An image that maps any of
them needs a fresh process instead (the caller restarts it). img-dump leaves the pages out
of images: they are not the program's (docs/LLDB.md)."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import lldb

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import PAGE_SIZE, Image
from binfmt_img.live import syscalls as sc
from binfmt_img.live.inject import SAVED_REGISTERS, SCRATCH_SIZE, Injector, free_area
from binfmt_img.live.procfs import Mapping, read_maps
from binfmt_img.live.threads import put_back_registers
from lldb_img.target import LldbTarget

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan

# LLDB's permission bits (lldb.ePermissions*): writable 1, readable 2, executable 4.
_PERMISSIONS = range(1, 8)
# Request sizes, largest first, down to the cache's 16-byte chunk: each free range is taken
# in a few reservations.
_SIZES = tuple(1 << n for n in range(24, 3, -1))
_MOST = 10000  # reservations per permission at most (a guard; a page has 256 chunks)
_MAP_PRIVATE_ANONYMOUS = 0x22


@dataclass
class HeldPage:
    """One page LLDB's cache holds room in: where, its protection and its bytes."""

    address: int
    prot: int
    data: bytes


def _page(address: int) -> int:
    return address - address % PAGE_SIZE


@contextmanager
def _no_new_mappings(pid: int) -> Iterator[None]:
    """RLIMIT_AS at 0 for the while: the inferior keeps its mappings, gets no new one (so
    lldb-server's injected mmap fails). prlimit needs the same user, as ptrace does."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_AS)
    resource.prlimit(pid, resource.RLIMIT_AS, (0, hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, (soft, hard))


def _reserve_all(process: lldb.SBProcess, permissions: int) -> list[tuple[int, int]]:
    """Every free range of the cached pages of one permission, reserved (address, size).
    A first 16-byte request tells whether there is any (a failed one costs a round trip)."""
    taken: list[tuple[int, int]] = []
    for size in (_SIZES[-1],) + _SIZES:
        while len(taken) < _MOST:
            error = lldb.SBError()
            address = process.AllocateMemory(size, permissions, error)
            if error.Fail() or address == lldb.LLDB_INVALID_ADDRESS:
                break
            taken.append((address, size))
            if len(taken) == 1:
                break
        if not taken:
            break
    return taken


def _anonymous_permissions(maps: list[Mapping]) -> set[int]:
    """The permissions (LLDB's bits) of the process's anonymous private mappings. LLDB's
    pages are such mappings, of the permission they are cached under: a permission that no
    mapping has holds none of them, and its probe, a failing allocation that costs lldb-server
    a read of /proc/PID/smaps (0.15 s with 30,000 VMAs), is left out."""
    return {(2 if m.perms[0] == "r" else 0) | (1 if m.perms[1] == "w" else 0)
            | (4 if m.perms[2] == "x" else 0)
            for m in maps if not m.path and m.perms[3] == "p"}


def _free_pages(process: lldb.SBProcess, pid: int, maps: list[Mapping]) -> set[int]:
    """The pages with room in LLDB's cache; the cache is left as it was."""
    pages: set[int] = set()
    present = _anonymous_permissions(maps)
    with _no_new_mappings(pid):
        for permissions in _PERMISSIONS:
            if permissions not in present:
                continue
            taken = _reserve_all(process, permissions)
            for address, size in taken:
                process.DeallocateMemory(address)
                pages.update(range(_page(address), address + size, PAGE_SIZE))
    return pages


# The pages found so far, by LLDB's process (SBProcess.GetUniqueID()): LLDB keeps a page it
# mapped until the process ends or execs, but one that has filled up since (`process load`
# leaves its helper function there) no longer shows through the cache. Only the restore adds
# them: after an exec they may be the program's, which img-dump must not leave out.
_seen: dict[int, set[int]] = {}


def held_pages(process: lldb.SBProcess, remembered: bool = False,
               maps: list[Mapping] | None = None) -> list[HeldPage]:
    """LLDB's pages in a local stopped process, with their bytes (none for a remote one: its
    rlimit cannot be set from here); with REMEMBERED, those found before too. MAPS: the
    process's mappings when the caller has just read them."""
    target = LldbTarget(process)
    pid = target.pid()
    if pid is None or not target.is_local():
        return []
    if maps is None:
        maps = read_maps(pid)
    try:
        pages = _free_pages(process, pid, maps)
    except OSError:  # prlimit refused: no probe that could map a page
        return []
    seen = _seen.setdefault(process.GetUniqueID(), set())
    seen |= pages
    if remembered:
        pages = pages | seen
    out = []
    for address in sorted(pages):
        mapping = _mapping_at(maps, address)
        if mapping is None or mapping.path:  # LLDB's pages are anonymous
            continue
        out.append(HeldPage(address, mapping.prot, target.read_memory(address, PAGE_SIZE)))
    return out


def without_lldb_memory(maps: list[Mapping], process: lldb.SBProcess) -> list[Mapping]:
    """MAPS less LLDB's pages (img-dump leaves them out: they are not the program's, and
    restored, they would sit where LLDB keeps its own, or just be left over). The kernel
    merges an LLDB page with a neighbouring anonymous mapping of the same protection, so a
    mapping may lose a part only."""
    pages = {p.address for p in held_pages(process, maps=maps)}
    if not pages:
        return maps
    out = []
    for m in maps:
        if m.path:
            out.append(m)
            continue
        start = m.start
        for address in range(m.start, m.end, PAGE_SIZE):
            if address in pages:
                if start < address:
                    out.append(replace(m, start=start, end=address))
                start = address + PAGE_SIZE
        if start < m.end:
            out.append(replace(m, start=start, end=m.end))
    return out


def leave_out_lldb_memory(plan: DumpPlan, process: lldb.SBProcess) -> None:
    """img-dump and img-checkpoint: the plan dumps the program's memory, not LLDB's."""
    plan.maps = without_lldb_memory(plan.maps, process)


def _mapping_at(maps: list[Mapping], address: int) -> Mapping | None:
    return next((m for m in maps if m.start <= address < m.end), None)


def lldb_memory(process: lldb.SBProcess, image: Image) -> tuple[list[HeldPage], str | None]:
    """LLDB's pages in PROCESS, to map again after restoring IMAGE into it; and, when the
    image maps any of them, why the restore needs a fresh process instead."""
    pages = held_pages(process, remembered=True)
    clashing = [p for p in pages
                if any(v.start < p.address + PAGE_SIZE and p.address < v.end for v in image.vmas)]
    if not clashing:
        return pages, None
    return [], (f"the image maps {describe(clashing)} where LLDB keeps memory for its "
                "expressions in this process, which it would go on using: restoring into a "
                "fresh process")


def _runs(pages: list[HeldPage]) -> list[tuple[int, int, int]]:
    """(start, end, prot) of each run of adjacent pages (sorted) of one protection."""
    runs: list[list[int]] = []
    for page in pages:
        if runs and runs[-1][1] == page.address and runs[-1][2] == page.prot:
            runs[-1][1] += PAGE_SIZE
        else:
            runs.append([page.address, page.address + PAGE_SIZE, page.prot])
    return [(start, end, prot) for start, end, prot in runs]


def describe(pages: list[HeldPage]) -> str:
    """"3 pages (0x7ffff7fbc000-0x7ffff7fbf000)", adjacent pages joined."""
    spans: list[list[int]] = []
    for start, end, _ in _runs(pages):
        if spans and spans[-1][1] == start:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    text = ", ".join(f"{start:#x}-{end:#x}" for start, end in spans)
    return f"{len(pages)} page{'s' if len(pages) != 1 else ''} ({text})"


def put_back(process: lldb.SBProcess, pages: list[HeldPage]) -> tuple[str | None, str | None]:
    """Map PAGES again where the restore removed them, each with its protection and bytes;
    (what was done, a warning), to say."""
    target = LldbTarget(process)
    pid = target.pid()
    if not pages or pid is None:
        return None, None
    maps = read_maps(pid)
    missing = [p for p in pages if _mapping_at(maps, p.address) is None]
    if not missing:
        return None, None
    taken = [(m.start, m.end) for m in maps] + [(p.address, p.address + PAGE_SIZE)
                                                for p in missing]
    tid = process.GetSelectedThread().GetThreadID()
    saved = {tid: target.read_registers(SAVED_REGISTERS)}
    inj = Injector(target)
    try:
        inj.open_scratch(free_area(taken, SCRATCH_SIZE))
        for start, end, prot in _runs(missing):
            inj.call(sc.MMAP, start, end - start, prot,
                     _MAP_PRIVATE_ANONYMOUS | sc.MAP_FIXED_NOREPLACE, -1, 0,
                     step="mapping LLDB's expression memory again", address=start)
        for page in missing:
            if page.data.count(0) != PAGE_SIZE:  # a new mapping reads as zeros
                target.write_memory(page.address, page.data)
    except RestoreError as error:
        # Unmapped, LLDB's next expression fails loudly (until the program maps there).
        return None, (f"LLDB's memory for expressions, {describe(missing)}, could not be mapped "
                      f"again ({error}): expressions fail in this process; `process kill`, "
                      "then img-restore restores into a fresh one")
    finally:
        if inj.scratch is not None:
            inj.close_scratch()
        put_back_registers(target, saved)
    return (f"LLDB's memory for expressions, {describe(missing)}, mapped again beside the "
            "image's (LLDB goes on using it)"), None
