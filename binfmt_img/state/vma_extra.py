"""What the v1 VMA record does not hold, per VMA (keyed by its start): the kernel's VmFlags
from /proc/PID/smaps (growsdown, may-write, madvise state, mlock, mseal), the guard pages
inside it, and the in-memory shared object behind it (shared anonymous memory, a memfd, a
SysV segment) with that object's inode, so that two mappings of one object are one object
again after the restore.

The restore consults it in three places: `_create_vmas` asks `create_shared` to make the
shared objects and `grows_down`/`may_write` for the other VMAs; the page data then goes in
(shared memory is mapped writable for that, and given its own protection right after);
this kind's `restore` (phase "process", after the pages) installs the guard pages again,
replays the madvise state, mlock, and mseal last.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING

from construct import Int8ul, Int32ul, Int64ul, PascalString, PrefixedArray, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_GROWSDOWN,
    MAP_NORESERVE,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_TYPE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    USER_TOP,
    Vma,
)
from binfmt_img.live import syscalls as sc
from binfmt_img.live.inject import RESERVED, free_area
from binfmt_img.live.procfs import guard_pages_of, read_smaps_flags
from binfmt_img.state import Kind

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

# The in-memory object behind a VMA; 0: none (anonymous private memory, a file, ...).
NO_OBJECT, ANON, MEMFD, SYSV = 0, 1, 2, 3
OBJECT_NAMES = {"anon": ANON, "memfd": MEMFD, "sysv": SYSV}
OBJECT_WORDS = {ANON: "shared anonymous memory", MEMFD: "memfd", SYSV: "SysV shared memory"}

Text = PascalString(Int32ul, "utf8")
Guard = Struct("start" / Int64ul, "count" / Int64ul)
Entry = Struct(
    "start" / Int64ul,
    "vmflags" / Text,  # smaps VmFlags codes, space separated: "rd wr mr mw me gd ac"
    "object" / Int8ul,  # NO_OBJECT, ANON, MEMFD, SYSV
    "inode" / Int64ul,  # the object's inode: one object, one inode (the fd side finds it)
    "pgoff" / Int64ul,  # the VMA's offset in the object, in pages
    "key" / Int32ul,  # SysV: the segment's key (0 for IPC_PRIVATE)
    "name" / Text,  # memfd: the name given to memfd_create
    "guards" / PrefixedArray(Int32ul, Guard),
)
Record = Struct("vmas" / PrefixedArray(Int32ul, Entry))

MMAP_RW = PROT_READ | PROT_WRITE
MAP_DROPPABLE = 0x08  # a mapping type of its own (6.11+): the kernel may drop its pages
# VmFlags codes (fs/proc/task_mmu.c show_smap_vma_flags) that madvise sets, with the advice.
MADVICE = {"sr": ("MADV_SEQUENTIAL", 2), "rr": ("MADV_RANDOM", 1),
           "dc": ("MADV_DONTFORK", 10), "dd": ("MADV_DONTDUMP", 16),
           "hg": ("MADV_HUGEPAGE", 14), "nh": ("MADV_NOHUGEPAGE", 15),
           "wf": ("MADV_WIPEONFORK", 18), "mg": ("MADV_MERGEABLE", 12)}
MADV_GUARD_INSTALL = 102
ACTED_ON = frozenset(MADVICE) | {"lo", "sl"}  # the codes restore() acts on
MADVISE, MLOCK, MLOCK2, MSEAL = 28, 149, 325, 462
MEMFD_CREATE, FTRUNCATE, FCNTL = 319, 77, 72
F_DUPFD_CLOEXEC = 1030
SHMGET, SHMAT, SHMCTL = 29, 30, 31
MFD_CLOEXEC, MFD_ALLOW_SEALING = 1, 2
MLOCK_ONFAULT = 1
IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0
MEMFD_NAME_MAX = 249  # memfd_create(2): 249 bytes besides the "memfd:" prefix
NOT_TOUCHED = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]")  # the kernel's own
CODE = re.compile(r"[a-z0-9]{2}")
OBJECT_LIMIT = 1 << 46  # bytes of one shared object: a quarter of the user address space


# ---- dump ----

def _object(path: str, kind: str | None) -> tuple[int, int, str]:
    """(object, SysV key, memfd name) from the mapping's path in /proc/PID/maps."""
    if kind is None:
        return NO_OBJECT, 0, ""
    path = path.removesuffix(" (deleted)")
    if kind == "memfd":
        return MEMFD, 0, path.removeprefix("/memfd:")
    if kind == "sysv":  # the kernel names it /SYSV%08x after the key
        key = path.removeprefix("/SYSV")[:8]
        return SYSV, int(key, 16) if re.fullmatch(r"[0-9a-fA-F]{8}", key) else 0, ""
    return ANON, 0, ""


def dump(plan: DumpPlan) -> dict:
    flags = read_smaps_flags(plan.pid)
    entries = []
    maps = [m for m in plan.maps if m.start < USER_TOP]
    touched = [m for m in maps if m.special not in NOT_TOUCHED]
    guarded = dict(zip((m.start for m in touched),
                       guard_pages_of(plan.pid, [(m.start, m.end) for m in touched])))
    for m in maps:
        obj, key, name = _object(m.path, m.shared_object)
        guards = guarded.get(m.start, [])
        entries.append({"start": m.start, "vmflags": " ".join(flags.get(m.start, [])),
                        "object": obj, "inode": m.inode if obj else 0,
                        "pgoff": m.offset // PAGE_SIZE if obj else 0, "key": key,
                        "name": name, "guards": [{"start": s, "count": c} for s, c in guards]})
    return {"vmas": entries}


# ---- restore: what the other VMA code asks ----

def entries(plan: RestorePlan) -> dict[int, object]:
    """The image's entries by VMA start (empty for an image without them), made once."""
    cached = getattr(plan, "_vma_extra", None)
    if cached is None:
        value = plan.image.states.get(KIND.name)
        cached = {e["start"]: e for e in value.vmas} if value is not None else {}
        plan._vma_extra = cached  # type: ignore[attr-defined]
    return cached


def codes(entry) -> frozenset[str]:
    return _codes(entry.vmflags) if entry is not None else frozenset()


@functools.lru_cache(maxsize=1024)
def _codes(vmflags: str) -> frozenset[str]:
    """Cached: most VMAs of a process share one of a few VmFlags lines."""
    return frozenset(vmflags.split())


@functools.lru_cache(maxsize=1024)
def _acted_on(vmflags: str) -> bool:
    """Whether restore() has something to do for a VMA with these VmFlags."""
    return bool(_codes(vmflags) & ACTED_ON)


@functools.lru_cache(maxsize=1024)
def _well_formed(vmflags: str) -> bool:
    return all(CODE.fullmatch(c) for c in vmflags.split())


def mmap_flags(vma: Vma, entry, is_stack: bool) -> int:
    """The flags to map `vma` again with (MAP_FIXED aside): the type as the kernel reads it
    (MAP_SHARED_VALIDATE is shared) given plainly, and what VmFlags say: gd MAP_GROWSDOWN
    (an image without VmFlags: the stack alone), nr MAP_NORESERVE, dp MAP_DROPPABLE."""
    flags = vma.flags & ~(MAP_GROWSDOWN | MAP_TYPE | MAP_NORESERVE)
    flags |= MAP_SHARED if vma.is_shared else MAP_PRIVATE
    if entry is None:
        return flags | (vma.flags & MAP_NORESERVE) | (MAP_GROWSDOWN if is_stack else 0)
    have = codes(entry)  # once: an entry's fields are slow to reach (construct Container)
    flags |= (MAP_GROWSDOWN if "gd" in have else 0) | (MAP_NORESERVE if "nr" in have else 0)
    if "dp" in have and not vma.is_file and not vma.is_shared:
        flags = flags & ~MAP_TYPE | MAP_DROPPABLE
    return flags


def may_write(entry) -> bool:
    """VmFlags mw: the file was opened for writing (mprotect may add PROT_WRITE later)."""
    return "mw" in codes(entry)


def _extent(members: list[tuple[Vma, object]]) -> int:
    return max(e.pgoff * PAGE_SIZE + v.size for v, e in members)


def create_shared(plan: RestorePlan, vma: Vma, entry, done: set[int]) -> None:
    """Map every VMA of `vma`'s shared object at once (one object, one creation): writable for
    the page data; the restore sets their own protection once the pages are in."""
    if vma.start in done:
        return
    members = [(v, e) for v in sorted(plan.image.vmas, key=lambda v: v.start)
               if (e := entries(plan).get(v.start)) is not None
               and (e.object, e.inode) == (entry.object, entry.inode)]
    if entry.object == MEMFD:
        _create_memfd(plan, entry, members)
    else:
        _create_by_remap(plan, entry, members)
    done.update(v.start for v, _ in members)


def _map_fixed(plan: RestorePlan, vma: Vma, prot: int, flags: int, fd: int, offset: int,
               what: str) -> None:
    got = plan.injector.call(sc.MMAP, vma.start, vma.size, prot, flags | MAP_FIXED, fd, offset,
                             step=f"mapping {what}", address=vma.start)
    if got != vma.start:
        raise RestoreError(f"mapping {what} landed at {got:#x}, not {vma.start:#x}")


def _create_memfd(plan: RestorePlan, entry, members: list[tuple[Vma, object]]) -> None:
    inj = plan.injector
    inj.reset_data()
    what = f"memfd:{entry.name}"
    fd = inj.call(MEMFD_CREATE, inj.put_string(entry.name), MFD_CLOEXEC | MFD_ALLOW_SEALING,
                  step=f"creating {what}")
    try:
        inj.call(FTRUNCATE, fd, _extent(members), step=f"sizing {what}")
        for vma, e in members:
            shared = vma.is_shared
            _map_fixed(plan, vma, vma.prot | MMAP_RW if shared else vma.prot,
                       MAP_SHARED if shared else MAP_PRIVATE, fd, e.pgoff * PAGE_SIZE, what)
    except RestoreError:
        inj.raw(sc.CLOSE, fd)
        raise
    _offer(plan, entry, fd)


def _offer(plan: RestorePlan, entry, fd: int) -> None:
    """When the image holds a descriptor of a memfd of this name, keep ours open for the fd
    side to claim (pop it from plan.memfd_fds by the image inode, dup3 it to its number):
    above every fd number of the image, so that placing those never closes it. Unclaimed ones
    are closed after the fds are in place (close_unclaimed)."""
    files = [f for f in plan.image.files or []
             if f.path.removesuffix(" (deleted)") == f"/memfd:{entry.name}"]
    kept = -1
    if files:
        above = max([f.fd for f in plan.image.files or []] + [2]) + 1
        kept = plan.injector.raw(FCNTL, fd, F_DUPFD_CLOEXEC, above)
    plan.injector.raw(sc.CLOSE, fd)
    if files and not sc.is_error(kept):
        plan.memfd_fds[entry.inode] = kept


def close_unclaimed(plan: RestorePlan) -> None:
    for fd in plan.memfd_fds.values():
        plan.injector.raw(sc.CLOSE, fd)
    plan.memfd_fds.clear()


def _create_by_remap(plan: RestorePlan, entry, members: list[tuple[Vma, object]]) -> None:
    """Shared anonymous memory and SysV segments have no fd to map again: the whole object is
    made once in a free range, each VMA becomes a second mapping of its part (mremap with old
    size 0 does that for shared memory), and the first mapping goes."""
    inj = plan.injector
    size = _extent(members)
    taken = [(v.start, v.end) for v in plan.image.vmas] + [(m.start, m.end) for m in plan.live]
    taken.append((plan.scratch, plan.scratch + RESERVED))
    whole = free_area(taken, size)
    what = OBJECT_WORDS[entry.object]
    if entry.object == ANON:
        noreserve = MAP_NORESERVE if any("nr" in codes(e) for _, e in members) else 0
        got = inj.call(sc.MMAP, whole, size, MMAP_RW,
                       MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED | noreserve, -1, 0,
                       step=f"creating {what}", address=whole)
    else:
        shmid = inj.call(SHMGET, IPC_PRIVATE, size, IPC_CREAT | 0o600,
                         step=f"creating {what} of {size} bytes")
        got = inj.raw(SHMAT, shmid, whole, 0)
        inj.raw(SHMCTL, shmid, IPC_RMID, 0)  # gone with its last attachment, as it was dumped
        if sc.is_error(got):
            raise RestoreError(f"attaching {what} at {whole:#x}: {sc.errno_text(got)}")
    if got != whole:
        raise RestoreError(f"{what} landed at {got:#x}, not {whole:#x}")
    for vma, e in members:  # writable like the first (RestorePlan._protect_shared)
        moved = inj.call(sc.MREMAP, whole + e.pgoff * PAGE_SIZE, 0, vma.size,
                         sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, vma.start,
                         step=f"mapping {what}", address=vma.start)
        if moved != vma.start:
            raise RestoreError(f"mapping {what} landed at {moved:#x}, not {vma.start:#x}")
        if vma.prot | MMAP_RW != MMAP_RW:  # executable too: as RestorePlan maps shared memory
            inj.call(sc.MPROTECT, vma.start, vma.size, vma.prot | MMAP_RW,
                     step=f"protecting {what}", address=vma.start)
    inj.call(sc.MUNMAP, whole, size, step=f"unmapping the first mapping of {what}",
             address=whole)


# ---- restore: checks before any change ----

def check(plan: RestorePlan, value) -> None:
    by_start = {v.start: v for v in plan.image.vmas}
    seen: dict[int, int] = {}
    extents: dict[int, int] = {}
    for e in value.vmas:
        # An entry (a construct Container) is a dict: its items are quicker to reach than
        # its attributes, which counts for tens of thousands of VMAs.
        vma = by_start.get(e["start"])
        if vma is None:
            raise RestoreError(f"vma_extra state names a VMA at {e.start:#x} the image lacks")
        if vma.path is None and not e["object"] and not e["guards"] and not e["pgoff"] \
                and _well_formed(e["vmflags"]):
            continue  # the common case: memory with nothing more to check
        _check_entry(vma, e)
        if vma.is_file and vma.is_shared and "mw" in codes(e) and plan.local \
                and not os.access(vma.path or "", os.W_OK):
            raise RestoreError(f"mapped file {vma.path} of VMA {vma.start:#x}: the dumped "
                               "process had it open for writing; it is not writable now")
        if e.object and seen.setdefault(e.inode, e.object) != e.object:
            raise RestoreError(f"vma_extra state: inode {e.inode} is two kinds of object")
        if e.object:
            extents[e.inode] = max(extents.get(e.inode, 0), e.pgoff * PAGE_SIZE + vma.size)
            if extents[e.inode] > OBJECT_LIMIT:
                raise RestoreError(f"vma_extra state: the shared object of VMA "
                                   f"{vma.start:#x} would be {extents[e.inode]} bytes, more "
                                   f"than {OBJECT_LIMIT >> 40} TiB")
        if e.object == SYSV:
            plan.report.warnings.append(
                f"SysV shared memory at {vma.start:#x} (key {e.key:#x}) comes back as a new "
                "private segment: its key and shmid are not the dumped ones")
    lines = {e["vmflags"] for e in value.vmas}
    for code in sorted({c for line in lines for c in _codes(line)} & {"ss", "um", "uw", "ui"}):
        plan.report.warnings.append(f"VmFlags {code} (shadow stack or userfaultfd "
                                    "registration) is not restored")


def _check_entry(vma: Vma, e) -> None:
    if _well_formed(e.vmflags) and not e.object and not e.guards and not e.pgoff:
        return  # the common case, fast: tens of thousands of VMAs are checked
    span = f"VMA {vma.start:#x}-{vma.end:#x}"
    if not _well_formed(e.vmflags):
        raise RestoreError(f"vma_extra state of {span}: VmFlags {e.vmflags[:40]!r} are not "
                           "two-letter codes")
    if e.object not in OBJECT_WORDS and e.object != NO_OBJECT:
        raise RestoreError(f"vma_extra state of {span}: unknown object kind {e.object}")
    if e.object and (vma.is_file or (e.object != MEMFD and not vma.is_shared)):
        raise RestoreError(f"vma_extra state of {span}: a shared object on a VMA that is "
                           "not shared memory")
    if e.pgoff > USER_TOP // PAGE_SIZE:
        raise RestoreError(f"vma_extra state of {span}: object offset {e.pgoff} pages is "
                           "beyond any object")
    name = e.name.encode()
    if e.object == MEMFD and (len(name) > MEMFD_NAME_MAX or b"\0" in name or b"/" in name):
        raise RestoreError(f"vma_extra state of {span}: memfd name {e.name[:40]!r} is not "
                           "one memfd_create takes")
    for g in e.guards:
        if g.start % PAGE_SIZE or not vma.start <= g.start < g.start + g.count * PAGE_SIZE \
                <= vma.end:
            raise RestoreError(f"vma_extra state of {span}: guard pages at {g.start:#x} "
                               "lie outside it")


# ---- restore: after the pages are in ----

def restore(plan: RestorePlan, value) -> None:
    by_start = {v.start: v for v in plan.image.vmas}
    vdso = {id(v) for v in plan.vdso_block}
    todo = [(vma, e) for e in value.vmas if (e["guards"] or _acted_on(e["vmflags"]))
            and (vma := by_start[e["start"]]).name not in NOT_TOUCHED and id(vma) not in vdso]
    # (result, the warning should it fail) for every call, all run in one batch
    checks: list[tuple[object, str]] = []
    with plan.injector.batch() as batch:
        for vma, e in todo:
            for g in e.guards:
                size = g.count * PAGE_SIZE
                checks.append((batch.raw(MADVISE, g.start, size, MADV_GUARD_INSTALL),
                               f"MADV_GUARD_INSTALL on {g.start:#x}-{g.start + size:#x} "
                               "was refused"))
            for code in sorted(codes(e) & MADVICE.keys()):
                name, advice = MADVICE[code]
                checks.append((batch.raw(MADVISE, vma.start, vma.size, advice),
                               f"{name} on {vma.start:#x}-{vma.end:#x} was refused"))
            _lock(batch, vma, codes(e), checks)
        for vma, e in todo:  # sealing last: a sealed VMA refuses every later change
            if "sl" in codes(e):
                checks.append((batch.raw(MSEAL, vma.start, vma.size, 0),
                               f"VMA {vma.start:#x}-{vma.end:#x} was sealed (mseal) and is "
                               "not now"))
    for ref, text in checks:
        result = batch.value(ref)
        if sc.is_error(result):
            plan.report.warnings.append(f"{text}: {sc.errno_text(result)}" + (
                " (RLIMIT_MEMLOCK, or CAP_IPC_LOCK, limits it)" if "mlock" in text else ""))


def _lock(batch, vma: Vma, flags: set[str], checks: list) -> None:
    if "lo" not in flags:
        return
    if "lf" in flags:
        result = batch.raw(MLOCK2, vma.start, vma.size, MLOCK_ONFAULT)
    else:
        result = batch.raw(MLOCK, vma.start, vma.size)
    checks.append((result, f"{vma.start:#x}-{vma.end:#x} was locked in memory (mlock) and "
                           "is not now"))


def describe(value) -> str:
    objects = {(e.object, e.inode) for e in value.vmas if e.object}
    guards = sum(g.count for e in value.vmas for g in e.guards)
    return (f"{len(value.vmas)} VMAs, {len(objects)} shared objects, "
            f"{guards} guard pages")


KIND = Kind(id=10, name="vma_extra", record=Record, dump=dump, restore=restore, check=check,
            describe=describe)
