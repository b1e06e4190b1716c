"""The dump plan: read a stopped local inferior into an image, leaving it as it was."""

from __future__ import annotations

import inspect
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from binfmt_img import state
from binfmt_img.errors import RestoreError
from binfmt_img.formats import identity, image_file, packed
from binfmt_img.formats.model import (
    MAP_SHARED,
    PAGE_SIZE,
    USER_TOP,
    AltStack,
    FileIdentity,
    Image,
    SigAction,
    Thread,
    Vma,
    Xsave,
)
from binfmt_img.live import mapped_files, rounds, vmread
from binfmt_img.live import syscalls as sc
from binfmt_img.live.files import read_open_files
from binfmt_img.live.inject import RESERVED, Injector, check_not_in_syscall_entry, free_area
from binfmt_img.live.pagewrite import Progress
from binfmt_img.live.procfs import (
    Mapping,
    ProcMem,
    object_pages,
    pagemap_session,
    read_auxv,
    read_maps,
    readable_pages,
    resident_pages,
    stat_fields,
)
from binfmt_img.live.restore import XSAVE_RESTORABLE
from binfmt_img.live.target import Target, counting
from binfmt_img.live.threads import (
    find_tid_addresses,
    put_back_registers,
    read_threads,
    save_registers,
    select,
    while_spinning,
)
from binfmt_img.live.tls import (
    GDT_ENTRY_TLS_MIN,
    USER_DESC,
    USER_DESC_SIZE,
    user_desc_to_descriptor,
)

XSAVE_AREA = 4096  # enough for every component up to PKRU in the standard format
NOT_DUMPED = ("[vvar]", "[vvar_vclock]", "[vsyscall]")
CHUNK = 1 << 24
READ_AHEAD = 1 << 20  # a chunk this large is read in a thread while the one before is written


@dataclass
class DumpReport:
    vmas: int = 0
    pages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    stops: int = 0  # debugger stops (single-steps and restorer runs) the dump took
    warnings: list[str] = field(default_factory=list)


def _vma_of(mapping: Mapping) -> Vma:
    ident = None
    path = mapping.path if mapping.is_file else None
    if path is not None:
        path = path.removesuffix(" (deleted)")
        try:
            st = os.stat(path)
            ident = FileIdentity(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        except OSError:
            pass  # gone since it was mapped: restore will say so
    # An in-memory shared object (shared anonymous memory, memfd, SysV) has no path: its pages
    # are in the image like anonymous memory's, its identity in the vma_extra state.
    return Vma(start=mapping.start, end=mapping.end, prot=mapping.prot, flags=mapping.flags,
               pgoff=mapping.offset // PAGE_SIZE if path else 0, path=path,
               name=mapping.special, file=ident)


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The overlap of two sorted lists of disjoint [start, end) ranges."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        low, high = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if low < high:
            out.append((low, high))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _mm_fields(pid: int, brk: int) -> dict[str, int]:
    f = stat_fields(pid)
    # proc(5): startcode 26, endcode 27, startstack 28, start_data 45 .. env_end 51.
    return {"flags": 0, "def_flags": 0, "start_code": int(f[26]), "end_code": int(f[27]),
            "start_data": int(f[45]), "end_data": int(f[46]), "start_brk": int(f[47]),
            "brk": brk, "start_stack": int(f[28]), "arg_start": int(f[48]),
            "arg_end": int(f[49]), "env_start": int(f[50]), "env_end": int(f[51])}


def _merged(plan: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs that touch joined: neighbouring mappings (many small VMAs of one area, told
    apart by their protection) are read in one go rather than one read per mapping."""
    out: list[tuple[int, int]] = []
    for vaddr, count in plan:
        if out and out[-1][0] + out[-1][1] * PAGE_SIZE == vaddr:
            out[-1] = (out[-1][0], out[-1][1] + count)
        else:
            out.append((vaddr, count))
    return out


class DumpPlan:
    def __init__(self, target: Target, fmt: str = "v1") -> None:
        self.target, self.fmt = counting(target), fmt
        self.report = DumpReport()
        pid = target.pid()
        if pid is None:
            raise RestoreError("no live process to dump")
        if not target.is_local():
            raise RestoreError("the inferior is not on this machine; dump needs its /proc")
        check_not_in_syscall_entry(target)
        self.pid = pid
        self.maps = read_maps(pid)
        self.injector = Injector(self.target)
        self.threads: list[Thread] = []
        self.sources: dict[str, str] = {}  # mapped path -> /proc/PID/map_files/... (v1)
        self.round: rounds.Round | None = None  # the dump hooks' round being queued
        self.brk = 0

    def each_thread(self, action: Callable[[Thread], Any]) -> dict[int, Any]:
        """action(thread) with each thread selected in turn (for system calls that only the
        thread itself can make, one stop each: a dump hook's go in rounds, plan.reads); the
        first thread is selected again afterwards."""
        out = {}
        for thread in self.threads:
            if len(self.threads) > 1:
                select(self.target, thread.tid)
            out[thread.tid] = action(thread)
        if len(self.threads) > 1:
            select(self.target, self.threads[0].tid)
        return out

    def reads(self, thread: Thread | None = None) -> rounds.Reads:
        """The running dump hook's calls for `thread` in this round (without a thread: the
        process's, made by the first thread); binfmt_img/live/rounds.py."""
        assert self.round is not None, "reads() is for a dump hook's generator"
        return self.round.reads(thread or self.threads[0])

    def _states(self) -> None:
        """Every kind of binfmt_img.state, read by the process itself. The hooks that make
        calls (generators) run in rounds together with the threads' own state, each round
        one resume; the others run first, as they are."""
        hooks: list[tuple[str, rounds.Hook]] = [("", self._own_state())]
        values = {}
        for kind in state.KINDS:
            self.injector.reset_data()
            value = kind.dump(self)
            if inspect.isgenerator(value):
                hooks.append((kind.name, value))
            else:
                values[kind.name] = value
        values.update(rounds.run(self, hooks))
        for kind in state.KINDS:
            if values.get(kind.name) is not None:
                state.put(self.image, kind, values[kind.name])
        if self.fmt == "v0" and self.image.states:
            self.report.warnings.append("a v0 image cannot hold " + ", ".join(
                self.image.states) + ": not recorded (v1 keeps them)")

    def _thread_state(self, threads: list[Thread]) -> int:
        """What only the process itself can tell: each thread's FPU, signal mask, TLS..., the
        process's signal handlers and brk, and the state kinds. Returns brk."""
        inj = self.injector
        self.threads = threads
        saved = save_registers(self.target, threads)
        inj.open_scratch(free_area([(m.start, m.end) for m in self.maps], RESERVED), whole=True)
        try:
            self._states()
        finally:
            if len(threads) > 1:
                select(self.target, threads[0].tid)
            if inj.scratch is not None:
                inj.close_scratch()
            put_back_registers(self.target, saved)
            self.report.stops = self.target.stops
        return self.brk

    def _own_state(self) -> rounds.Hook:
        """Each thread's own state and the process's signal handlers and brk: calls of the
        first round."""
        parse = [self._one_thread(self.reads(thread), thread) for thread in self.threads]
        batch = self.reads()
        brk = batch.raw(sc.BRK, 0)
        out = batch.reserve(32 * sc.NSIG)
        for number in range(1, sc.NSIG + 1):
            batch.call(sc.RT_SIGACTION, number, 0, out + 32 * (number - 1), 8,
                       step="reading signal handlers")
        yield
        for done in parse:
            done()
        data = batch.read(out, 32 * sc.NSIG)
        self.image.sigactions = [SigAction(*struct.unpack_from("<4Q", data, 32 * i))
                                 for i in range(sc.NSIG)]
        self.brk = batch.value(brk)

    def _one_thread(self, batch: rounds.Reads, thread: Thread) -> Callable[[], None]:
        """The thread's own state, by system calls it makes itself: queued, and what reads
        their answers once the round ran."""
        bases = [(name, code) for name, code in (("fs_base", sc.ARCH_GET_FS),
                                                  ("gs_base", sc.ARCH_GET_GS))
                 if name not in thread.registers]  # a debugger that does not show them
        mask = batch.reserve(8)
        batch.call(sc.RT_SIGPROCMASK, sc.SIG_SETMASK, 0, mask, 8, step="reading the mask")
        base_out = {name: batch.reserve(8) for name, _ in bases}
        for name, code in bases:
            batch.call(sc.ARCH_PRCTL, code, base_out[name], step=f"reading {name}")
        alt = batch.reserve(24)
        batch.call(sc.SIGALTSTACK, 0, alt, step="reading the alternate stack")
        descs = [batch.put(USER_DESC.pack(GDT_ENTRY_TLS_MIN + i, 0, 0, 0)) for i in range(3)]
        tls = [batch.raw(sc.GET_THREAD_AREA, d) for d in descs]
        head = batch.reserve(16)
        robust = batch.raw(sc.GET_ROBUST_LIST, 0, head, head + 8)
        xsave = batch.xsave(XSAVE_AREA, XSAVE_RESTORABLE)

        def done() -> None:
            thread.xsave = Xsave(XSAVE_RESTORABLE, batch.read(xsave, XSAVE_AREA))
            (thread.sigmask,) = struct.unpack("<Q", batch.read(mask, 8))
            for name, _ in bases:
                (thread.registers[name],) = struct.unpack("<Q", batch.read(base_out[name], 8))
            sp, flags, _, size = struct.unpack("<QiiQ", batch.read(alt, 24))
            thread.altstack = AltStack(sp, flags, size)
            for i in range(3):
                if sc.is_error(batch.value(tls[i])):
                    break  # a kernel without 32-bit emulation has no GDT TLS entries
                thread.tls[i] = user_desc_to_descriptor(batch.read(descs[i], USER_DESC_SIZE))
            if not sc.is_error(batch.value(robust)):
                thread.robust_list, thread.robust_list_len = struct.unpack(
                    "<QQ", batch.read(head, 16))
        return done

    def collect(self) -> Image:
        threads = read_threads(self.target, self.pid)
        if self.fmt == "v0" and len(threads) > 1:
            raise RestoreError(f"the process has {len(threads)} threads and v0 holds one: "
                               "use v1")
        self.image = image = Image(format=self.fmt, threads=threads)
        brk = self._thread_state(threads)
        if self.fmt == "v1":
            find_tid_addresses(threads, self.maps, self.target.read_memory)
            image.pid = self.pid
            image.cwd, image.files = read_open_files(self.pid)
        image.mm = _mm_fields(self.pid, brk)
        image.auxv = read_auxv(self.pid)
        try:
            image.exe_path = os.readlink(f"/proc/{self.pid}/exe").removesuffix(" (deleted)")
        except OSError:
            image.exe_path = None
        image.vmas = [_vma_of(m) for m in self.maps]
        if self.fmt == "v0":
            for vma in image.vmas:  # v0 has no paths: the seed's dumper wrote fd 0
                vma.path, vma.file = None, None
        else:  # the mapped files themselves, where /proc lets us open them
            self.sources = mapped_files.sources(self.pid, image)
            identity.record_contents(image, self.sources)
        self.report.vmas = len(image.vmas)
        return image

    def _page_plan(self) -> list[tuple[int, int]]:
        """Runs (vaddr, count) worth keeping: present in private (and anonymous shared)
        mappings; a v1 image leaves out file pages never written, which the file still holds."""
        plan: list[tuple[int, int]] = []
        for m in self.maps:
            if m.special in NOT_DUMPED or m.start >= USER_TOP:
                continue
            if m.is_file and m.flags & MAP_SHARED:
                continue
            if m.shared_object is not None:
                plan += self._object_pages(m)
            elif (self.fmt == "v0" and m.is_file) or m.special == "[vdso]":
                plan += readable_pages(self.pid, m.start, m.end)  # no path to reread
            else:
                plan += resident_pages(self.pid, m.start, m.end,
                                       skip_file_pages=self.fmt == "v1" and m.is_file)
        return _merged(plan)

    def _object_pages(self, m: Mapping) -> list[tuple[int, int]]:
        """An in-memory object may hold pages this mapping never touched (written through
        another mapping or its fd, or swapped out): where it holds data when /proc tells,
        else every page. Guard pages are never read."""
        readable = readable_pages(self.pid, m.start, m.end)
        data = object_pages(self.pid, m)
        if data is None:
            return readable
        return [(start, (end - start) // PAGE_SIZE) for start, end in
                _intersect([(s, s + c * PAGE_SIZE) for s, c in data],
                           [(s, s + c * PAGE_SIZE) for s, c in readable])]

    def pages(self, progress: Progress | None = None) -> Iterator[tuple[int, memoryview]]:
        """The page data, chunk by chunk. A large chunk is read ahead in a thread while the
        writer checksums and writes the one before (the reads and zlib release the GIL);
        two page-aligned buffers take turns, so O_DIRECT can take them."""
        plan = self._page_plan()
        total = sum(count for _, count in plan)
        chunks = [(vaddr + at, min(CHUNK, count * PAGE_SIZE - at))
                  for vaddr, count in plan for at in range(0, count * PAGE_SIZE, CHUNK)]
        mem = ProcMem(self.pid, writable=False)
        views = [memoryview(mmap.mmap(-1, CHUNK)) for _ in range(2)]
        ahead: Future[None] | None = None
        try:
            with ThreadPoolExecutor(1) as pool:
                for i, (addr, size) in enumerate(chunks):
                    view = views[i % 2][:size]
                    if ahead is not None:
                        ahead.result()  # raises what the read raised
                    else:
                        self._read(mem, addr, view)
                    ahead = None
                    if i + 1 < len(chunks) and chunks[i + 1][1] >= READ_AHEAD:
                        after, after_size = chunks[i + 1]
                        ahead = pool.submit(self._read, mem, after,
                                            views[(i + 1) % 2][:after_size])
                    self.report.pages += size // PAGE_SIZE
                    yield addr, view
                    if progress is not None:
                        progress(self.report.pages, total)
        finally:
            mem.close()  # the pool waited for its read; the buffers go with their views

    def _read(self, mem: ProcMem, addr: int, view: memoryview) -> None:
        if vmread.read_into(self.pid, addr, view):  # one copy; else /proc/PID/mem reads it
            return
        try:
            mem.read_into(addr, view)
        except OSError:
            raise RestoreError(self._unreadable(mem, addr, len(view))) from None

    def _unreadable(self, mem: ProcMem, addr: int, size: int) -> str:
        """One line naming the first page of the range that cannot be read, and its mapping."""
        for page in range(addr, addr + size, PAGE_SIZE):
            try:
                mem.read(page, PAGE_SIZE)
            except OSError as error:
                where = next((m.path or "anonymous memory" for m in self.maps
                              if m.start <= page < m.end), "no mapping")
                reason = error.strerror or str(error)
                return f"the page at {page:#x} ({where}) cannot be read: {reason}"
        return f"the pages at {addr:#x} ({size // PAGE_SIZE}) could not be read"


def dump(target: Target, path: str, fmt: str = "v1",
         progress: Progress | None = None, compress: bool | str | None = False,
         pack: bool = False) -> DumpReport:
    """`compress`: "lz4" or "zstd" (True: lz4, img-dump --compress's), packed.codec_for."""
    started = time.monotonic()
    if pack and fmt != "v1":
        raise RestoreError("--pack needs the v1 format")
    codec, note = packed.codec_for(compress)
    plan = DumpPlan(target, fmt)
    if note:
        plan.report.warnings.append(note)
    try:
        with pagemap_session(plan.pid):  # one open pagemap for every mapping's questions
            image = plan.collect()
            if pack:  # the mapped files themselves, into the image (img-dump --pack)
                image.packed = identity.pack(image, plan.sources)
            image_file.save(path, image, fmt, plan.pages(progress), codec)
    finally:  # a failed or interrupted dump too: the next command finds the stop as it was
        reload_process = getattr(target, "reload_process", None)
        if reload_process is not None:
            # The injected steps left the debugger's idea of where the inferior stopped
            # behind; seeing it stop there afresh, it steps over a breakpoint at that pc.
            while_spinning(target, reload_process)
    plan.report.bytes = os.path.getsize(path)
    plan.report.seconds = time.monotonic() - started
    return plan.report
