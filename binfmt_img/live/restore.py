"""The restore plan: check everything, then rebuild the image's process inside the inferior.

Every change goes through the Target (memory, registers, single-step) and system calls run
in the inferior by the Injector; nothing here knows which debugger is in use.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from binfmt_img import state
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.formats import image_file, v1
from binfmt_img.formats.model import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    USER_TOP,
    VSYSCALL_START,
    Image,
    Thread,
    Vma,
    last_stored_page,
)
from binfmt_img.formats.validate import check_restorable
from binfmt_img.live import pagefast
from binfmt_img.live import syscalls as sc
from binfmt_img.live.files import check_open_files, restore_open_files
from binfmt_img.live.inject import (
    RESERVED,
    SCRATCH_SIZE,
    TABLE_GAP,
    Batch,
    Injector,
    check_not_in_syscall_entry,
    free_area,
    pack_u64,
)
from binfmt_img.live.pagewrite import PageWriter, Progress, outside
from binfmt_img.live.procfs import Mapping, parse_auxv, parse_maps, proc_file
from binfmt_img.live.relocate import content_check
from binfmt_img.live.restorer import Ref
from binfmt_img.live.rseq import AT_BASE, RSEQ, RSEQ_FLAG_UNREGISTER, RSEQ_SIG, rseq_area
from binfmt_img.live.samelibs import thread_library_kept
from binfmt_img.live.speculate import run_hooks
from binfmt_img.live.target import Target, counting
from binfmt_img.live.threads import (
    check_threads,
    main_thread,
    restore_threads,
    select_stopped_thread,
    while_spinning,
)
from binfmt_img.live.tls import GDT_ENTRY_TLS_MIN, descriptor_to_user_desc, gdt_tls_supported
from binfmt_img.live.vdso import MOVABLE_NAMES, VdsoMove, image_vdso_block
from binfmt_img.safeio import executable_problem, kind_of
from binfmt_img.state import vma_extra

# XSAVE components restored: x87, SSE, AVX, MPX, AVX-512, PKRU; AMX tiles need a permission
# request first, so they are left to the kernel's init state.
XSAVE_RESTORABLE = 0x2FF
AT_NULL = 0
PR_SET_NAME = 15
# struct prctl_mm_map: 11 address fields, auxv (offset 88), auxv_size, exe_fd (offset 100).
MM_AUXV_AT, MM_EXE_FD_AT, MM_RECORD = 88, 100, 104
EBUSY = (1 << 64) - 16
ERESTARTNOINTR = (1 << 64) - 513
ERESTART_RESTARTBLOCK = (1 << 64) - 516

Log = Callable[[str], None]


@dataclass
class RestoreReport:
    vmas: int = 0
    pages: int = 0
    seconds: float = 0.0
    page_seconds: float = 0.0
    stops: int = 0  # debugger stops (single-steps and restorer runs) the restore took
    path: str = ""
    warnings: list[str] = field(default_factory=list)


def _start(vma: Vma) -> int:
    return vma.start


def _is_stack(image: Image, vma: Vma) -> bool:
    if vma.name == "[stack]":
        return True
    return vma.name is None and vma.start <= image.mm.get("start_stack", 0) < vma.end


def _mapped_prot(vma: Vma) -> int:
    """The protection a VMA is first mapped with: shared memory that is not a file takes its
    pages through the mapping (the kernel refuses to force a write into a read-only shared
    mapping), so it is writable until they are in."""
    if vma.is_shared and not vma.is_file:
        return vma.prot | PROT_READ | PROT_WRITE
    return vma.prot


def load_image(path: str, warn: Callable[[str], None] | None = None) -> Image:
    """An image file (or core) read for a restore: its layout checked and its state records
    decoded, so damage anywhere is found before a process is started for it."""
    return state.decode(image_file.load_any(path, warn=warn))


class RestorePlan:
    """Checks made before the first change, then the steps that rebuild the process."""

    def __init__(self, target: Target, image: Image, via: str = "auto",
                 log: Log | None = None, progress: Progress | None = None,
                 accept_loss: bool = False) -> None:
        self.target, self.image, self.via = counting(target), state.decode(image), via
        # What the restore cannot bring back, found by the checks: refused unless accepted.
        self.losses: list[str] = []
        self.accept_loss = accept_loss
        self.progress = progress
        self.log = log or (lambda _msg: None)
        self.report = RestoreReport()
        self.injector = Injector(self.target)
        self.pid = 0
        self.live: list[Mapping] = []
        self.vdso: VdsoMove | None = None  # made in check(), from the live mappings
        self.vdso_block = image_vdso_block(image)
        self.scratch = 0
        self.parking = 0
        self.main_thread = main_thread(image)  # restored into the inferior's own thread
        self.live_tid = 0
        self.tid_addresses: dict[int, int] = {}  # image tid -> where glibc caches it
        self.live_tids: dict[int, int] = {}  # image tid -> the restored thread's tid
        self.live_fds: list[int] = []
        # memfd objects made for mappings, image inode -> live fd (O_CLOEXEC): kept open only
        # when the image also holds a descriptor of that memfd, for the fd side to claim.
        self.memfd_fds: dict[int, int] = {}
        self.changed = False
        self.local = True
        # Shared memory this process already holds, inherited from its restored parent (a
        # process tree, binfmt_img/tree): kept mapped, so that it stays shared.
        self.keep_mapped: list[tuple[int, int]] = []
        # The replaced process's large memory, moved aside to be freed beside the page writes.
        self.parked: list[tuple[int, int]] = []

    # ---- checks: nothing in the inferior changes here ----
    def check(self) -> None:
        pid = self.target.pid()
        if pid is None:
            raise RestoreError("no live process to restore into")
        self.local = self.target.is_local()
        if not self.local and self.via == "fast":
            raise RestoreError("--via fast needs the inferior on this machine; it is remote")
        if self.via not in ("auto", "fast", "debugger"):
            raise RestoreError(f"unknown --via {self.via!r}: choose debugger or fast")
        check_not_in_syscall_entry(self.target)
        check_restorable(self.image)
        self.pid = pid
        if self.image.pid and self.image.pid != pid:
            self.report.warnings.append(
                f"the process has pid {pid}, the checkpoint had {self.image.pid}: a program "
                "that kept its pid (a lock file, python's asyncio) sees the change")
        self.live = parse_maps(proc_file(self.target, pid, "maps").decode())
        self.live_rseq = self._live_rseq()
        self._check_files()
        self._check_exe()
        self._check_pages()
        check_threads(self)
        if self.local and any(any(t.tls) for t in self.image.threads) and \
                not gdt_tls_supported():
            self.losses.append("GDT TLS entries (set_thread_area): this kernel has no 32-bit "
                               "emulation")
            for thread in self.image.threads:
                thread.tls = [0, 0, 0]  # the image is this command's own
        check_open_files(self)
        self._check_states()
        self.vdso = VdsoMove(self.image, self.live)
        self.vdso.check(self.report.warnings)
        taken = [(v.start, v.end) for v in self.image.vmas] + [(m.start, m.end)
                                                                 for m in self.live]
        if SCRATCH_SIZE + self.vdso.size + PAGE_SIZE > TABLE_GAP:
            raise RestoreError(f"this kernel's vDSO block is {self.vdso.size} bytes: more "
                               "than the scratch area leaves room for")
        # The scratch area, the vDSO parked after it, and the restorer's table area.
        self.scratch = free_area(taken, RESERVED)
        self.parking = self.scratch + SCRATCH_SIZE + PAGE_SIZE
        self._check_losses()

    def _check_states(self) -> None:
        for section in self.image.unknown_states:
            self.losses.append(f"state in v1 section {section:#x}, unknown to this version "
                               "(an image from a newer binfmt-img)")
        for kind in state.KINDS:
            if kind.name in self.image.states:
                kind.check(self, self.image.states[kind.name])

    def _check_losses(self) -> None:
        """Faithful or loud: what will not come back is refused, or with --accept-loss said."""
        if not self.losses:
            return
        if not self.accept_loss:
            raise RestoreError("the restore would not bring back: " + "; ".join(self.losses)
                               + " (--accept-loss restores without them)")
        self.report.warnings += [f"not restored: {loss}" for loss in self.losses]

    def _restore_states(self, phase: str) -> None:
        """The kinds' restore hooks in their order; those that only set state together in
        one resume (binfmt_img/live/speculate.py)."""
        run_hooks(self, [(kind.name, functools.partial(self._restore_kind, kind))
                         for kind in sorted(state.KINDS, key=lambda k: k.order)
                         if kind.phase == phase and kind.name in self.image.states])

    def _restore_kind(self, kind: state.Kind, thread: Thread | None = None) -> None:
        self.injector.reset_data()
        if thread is None:
            kind.restore(self, self.image.states[kind.name])
        else:
            assert kind.restore_thread is not None
            kind.restore_thread(self, self.image.states[kind.name], thread)

    def _live_rseq(self) -> tuple[int, int] | None:
        auxv = parse_auxv(proc_file(self.target, self.pid, "auxv"))
        base = dict(auxv).get(AT_BASE)
        ld = next((m.path for m in self.live if base and m.start == base and m.is_file), None)
        fs_base = self.target.read_registers(("fs_base",)).get("fs_base", 0)
        return rseq_area(self.target.read_memory, auxv, ld, fs_base)

    def _rseq(self, area: tuple[int, int], flags: int) -> int:
        """Try the lengths glibc has registered with: 32, or __rseq_size when larger."""
        result = 0
        for length in dict.fromkeys((32, area[1])):
            result = self.injector.raw(RSEQ, area[0], length, flags, RSEQ_SIG)
            if not sc.is_error(result):
                break
        return result

    def _check_pages(self) -> None:
        """Corruption is reported, not restored: every run's checksum (and that its frame
        decodes to exactly its pages), before any change."""
        if self.image.format != "v1":
            return
        check = getattr(self.image.reader, "check_pages", None)
        if check is not None:  # a store's checkpoint: each page against its recorded hash
            check()
            return
        bad = v1.verify_pages(self.image)
        if bad:
            run = bad[0]
            raise ImageError(f"page data damaged: {len(bad)} of {len(self.image.runs)} page "
                             f"runs bad, the first at {run.vaddr:#x} ({run.count} pages at "
                             f"file offset {run.offset:#x}): {run.problem}")

    def _check_file_extent(self, vma: Vma, size: int) -> None:
        """Pages stored for a file mapping beyond the file's end cannot be written (the kernel
        gives EIO there, as the program would get SIGBUS): refused before any change."""
        last = last_stored_page(self.image, vma.start, vma.end)
        if last is None:
            return
        offset = (vma.pgoff + (last - vma.start) // PAGE_SIZE) * PAGE_SIZE
        if offset >= size:
            raise RestoreError(f"mapped file {vma.path} of VMA {vma.start:#x}: the image "
                               f"holds a page at file offset {offset:#x}, beyond the "
                               f"file's {size} bytes")

    def _check_exe(self) -> None:
        """The exe link (/proc/PID/exe) is set to the image's executable: it must be one."""
        path = self.image.exe_path
        if not path or not self.local:
            return
        problem = executable_problem(path)
        if problem is not None and os.path.lexists(path):
            raise RestoreError(f"the image's executable {path}: {problem}")
        if problem is not None:
            self.report.warnings.append(f"the image's executable {path} is gone: "
                                        "/proc/PID/exe keeps naming the process's own")

    def _check_files(self) -> None:
        if not self.local:  # the files are on the inferior's machine: opening them will tell
            if any(vma.is_file for vma in self.image.vmas):
                self.report.warnings.append("remote inferior: mapped files not compared with "
                                            "the image's record of them")
            return
        checked: set[str] = set()
        for vma in self.image.vmas:
            if not vma.is_file:
                continue
            if vma.path == "/dev/zero" and vma.is_shared:
                # Shared anonymous memory as binfmt-img before vma_extra took it: a file.
                self.losses.append(f"shared anonymous memory at {vma.start:#x}-{vma.end:#x} "
                                   "(the image holds no contents for it)")
                continue
            try:
                st = os.stat(vma.path)
            except OSError as error:
                raise RestoreError(f"mapped file {vma.path} of VMA {vma.start:#x}: "
                                   f"{error.strerror}") from None
            if not stat.S_ISREG(st.st_mode):  # the inferior's open would block or act
                raise RestoreError(f"mapped file {vma.path} of VMA {vma.start:#x} is "
                                   f"{kind_of(st.st_mode)}, not a regular file")
            self._check_file_extent(vma, st.st_size)
            ident = vma.file
            if vma.path in self.image.contents:  # by content: build-id or hash (v1 images)
                if vma.path not in checked:
                    checked.add(vma.path)
                    content_check(self.image, vma.path)
                continue
            if ident is None:
                continue
            changes = ident.changes(st)
            if changes:
                raise RestoreError(f"mapped file {vma.path} changed since the dump: "
                                   + ", ".join(changes))

    # ---- the restore itself ----
    def run(self) -> RestoreReport:
        self.changed = True  # from here on a failure leaves the inferior part-restored
        started = time.monotonic()
        inj = self.injector
        rip = self.target.read_registers(("rip",))["rip"]
        if not any(m.start <= rip < m.end and m.perms[2] == "x" for m in self.live):
            # Left somewhere unmapped (by an earlier injection, say): start from real code.
            self.target.write_registers({"rip": self._code_address()})
        before_changes = getattr(self.target, "before_changes", None)
        if before_changes is not None:
            kept = thread_library_kept(self.image, self.live)
            self._while_spinning(functools.partial(before_changes, libraries_kept=kept))
        self.log(f"restore: scratch area at {self.scratch:#x}")
        inj.open_scratch(self.scratch)
        if self.live_rseq is not None:  # the kernel would fault writing it once unmapped
            result = self._rseq(self.live_rseq, RSEQ_FLAG_UNREGISTER)
            if sc.is_error(result):
                raise RestoreError(f"unregistering the inferior's rseq area at "
                                   f"{self.live_rseq[0]:#x}: {sc.errno_text(result)}")
        assert self.vdso is not None
        with inj.batch():
            self.vdso.park(inj, self.parking)
            self._unmap_everything()
        # While the address space is nearly empty (a debugger stop costs lldb-server a read
        # of smaps, whose size grows with the VMAs), what needs no memory, in one batch.
        # The main thread's own state too, unless it registers glibc's rseq area (an image
        # without the rseq kind), which the kernel writes into: that waits for the memory.
        early = "rseq" in self.image.states or self._image_rseq(self.main_thread) is None
        with inj.batch() as batch:
            self.vdso.place(inj)
            self._set_mm()
            self._set_name()
            self._set_signals()
            if early:
                self.queue_thread_state(batch, self.main_thread, with_altstack=False)
        self._create_vmas()
        self._write_pages()
        self._protect_shared()
        self._restore_states("process")
        if early:
            run_hooks(self, self.thread_hooks(self.main_thread), self.main_thread)
        else:
            self._set_thread_state()
        restore_open_files(self)
        restore_threads(self)
        self._restore_states("late")
        vma_extra.close_unclaimed(self)  # memfds of mappings the fd side did not take
        inj.close_scratch()
        self._set_registers()
        reload_process = getattr(self.target, "reload_process", None)
        if reload_process is not None:
            self._while_spinning(reload_process)
        select_stopped_thread(self)
        self.target.memory_changed()
        self.report.stops = self.target.stops
        self.report.seconds = time.monotonic() - started
        return self.report

    def _code_address(self) -> int:
        code = [m for m in self.live if m.perms[2] == "x" and m.special != "[vsyscall]"]
        if not code:
            raise RestoreError("the inferior has no executable mapping to start from")
        return next((m.start for m in code if m.is_file), code[0].start)

    def _while_spinning(self, action: Callable[[], None]) -> None:
        """Run an adapter's action that lets go of the inferior for a moment (a detach and
        attach): a `jmp .` at each thread's rip holds it still meanwhile, and goes again
        afterwards."""
        while_spinning(self.target, action)

    def _unmap_everything(self) -> None:
        keep = sorted([(self.scratch, self.scratch + RESERVED), *self.keep_mapped])
        top = max([USER_TOP] + [m.end for m in self.live if m.start < VSYSCALL_START])
        cursor = 0
        with self.injector.joined_batch() as batch:
            if self._fast():  # the replaced process's memory freed beside the page writes
                self.parked = pagefast.park(batch, self.image, self.pid, self.live, keep)
                keep = sorted(keep + self.parked)
            for start, end in keep + [(top, top)]:
                if start > cursor:
                    batch.call(sc.MUNMAP, cursor, start - cursor,
                               step="unmapping the inferior's memory", address=cursor)
                cursor = max(cursor, end)

    def _create_vmas(self) -> None:
        extra = vma_extra.entries(self)
        shared_done: set[int] = set()
        mapped: list[tuple[Vma, Ref]] = []
        vdso = {id(v) for v in self.vdso_block}
        kept = set(self.keep_mapped)
        # Per VMA only what differs: tens of thousands of them cost microseconds each.
        how: dict[tuple[int, int, bool, str | None, str | None], tuple[int, int, str]] = {}
        stack_at = self.image.mm.get("start_stack", 0)
        with self.injector.batch() as batch:
            call = batch.call
            for vma in sorted(self.image.vmas, key=_start):
                start, end, name = vma.start, vma.end, vma.name
                if name in MOVABLE_NAMES or start >= VSYSCALL_START or id(vma) in vdso \
                        or kept and (start, end) in kept:
                    continue
                entry = extra.get(start)
                if entry is not None and entry.object:
                    vma_extra.create_shared(self, vma, entry, shared_done)
                    self.report.vmas += 1
                    continue
                if vma.path is not None:
                    mapped.append((vma, self._map_vma(batch, vma, entry)))
                    continue
                stack = name == "[stack]" or name is None and start <= stack_at < end
                key = (vma.flags, vma.prot, stack, None if entry is None else entry.vmflags,
                       name)
                known = how.get(key)
                if known is None:
                    known = how[key] = (_mapped_prot(vma), vma_extra.mmap_flags(
                        vma, entry, stack) | MAP_FIXED | MAP_ANONYMOUS,
                        f"mapping {name or 'anonymous memory'}")
                prot, flags, what = known
                mapped.append((vma, call(sc.MMAP, start, end - start, prot, flags, -1, 0,
                                         step=what, address=start)))
        results = batch.results
        assert results is not None
        for vma, got in mapped:
            if results[got.at] != vma.start:
                raise RestoreError(f"mapping {vma.label} landed at {batch.value(got):#x}, "
                                   f"not {vma.start:#x}")
        self.report.vmas += len(mapped)

    def _map_vma(self, batch: Batch, vma: Vma, entry: object) -> Ref:
        """Queue the calls that map `vma` (a file's: open, mmap, close); the mmap's result."""
        stack = _is_stack(self.image, vma) and not vma.is_file
        flags = vma_extra.mmap_flags(vma, entry, stack) | MAP_FIXED
        what = f"mapping {vma.label or 'anonymous memory'}"
        if not vma.is_file:
            return batch.call(sc.MMAP, vma.start, vma.size, _mapped_prot(vma),
                              flags | MAP_ANONYMOUS, -1, 0, step=what, address=vma.start)
        # Opened as the dumped process had it: a shared mapping that may become writable
        # (VmFlags mw) needs the file open for writing.
        writable = vma.is_shared and (vma.prot & PROT_WRITE or vma_extra.may_write(entry))
        fd = batch.call(sc.OPEN, batch.put_string(vma.path or ""),
                        (sc.O_RDWR if writable else sc.O_RDONLY) | sc.O_CLOEXEC
                        | sc.O_NOBLOCK_NOTTY, 0, step=f"opening {vma.path}", address=vma.start)
        got = batch.call(sc.MMAP, vma.start, vma.size, _mapped_prot(vma),
                         flags & ~MAP_ANONYMOUS, fd, vma.pgoff * PAGE_SIZE, step=what,
                         address=vma.start)
        batch.raw(sc.CLOSE, fd)
        return got

    def _protect_shared(self) -> None:
        """Shared memory was mapped writable for its pages: its own protection now."""
        with self.injector.batch() as batch:
            for vma in sorted(self.image.vmas, key=lambda v: v.start):
                if _mapped_prot(vma) != vma.prot and vma not in self.vdso_block:
                    batch.call(sc.MPROTECT, vma.start, vma.size, vma.prot,
                               step="protecting shared memory", address=vma.start)

    def _write_pages(self) -> None:
        # The vDSO block is the live kernel's, moved into place: its stored pages stay out.
        holes = [(v.start, v.end) for v in self.vdso_block] + [(VSYSCALL_START, 1 << 64)]
        # A restore never writes a file: a shared file mapping's pages are the file's own
        # (validation refuses an image that stores some; this keeps it so whatever the image).
        holes += [(v.start, v.end) for v in self.image.vmas if v.is_file and v.is_shared]
        fast = self._fast()
        writer = PageWriter(self.target, self.image, self.pid, fast, self.progress)
        runs = outside(self.image, self.image.runs, holes)
        with pagefast.populating(self.injector, self.image, self.pid, runs if fast else [],
                                 self.parked) as put:
            writer.write(runs, put)
        self.report.path, self.report.pages = writer.path, writer.pages
        self.report.page_seconds = writer.seconds

    def _fast(self) -> bool:
        return self.via == "fast" or (self.via == "auto" and self.local)

    def _set_mm(self) -> None:
        """PR_SET_MM_MAP with the image's fields, auxv and (where it differs) executable: the
        exe opened and its fd and the auxv's address put into the record by the table."""
        mm, image = self.image.mm, self.image
        names = ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                 "start_stack", "arg_start", "arg_end", "env_start", "env_end")
        if not all(mm.get(n) for n in names if n not in ("end_data", "start_data")):
            self.report.warnings.append("the image has no mm fields: brk, /proc/PID/cmdline "
                                        "and the auxv keep the inferior's values")
            return
        auxv = b"".join(struct.pack("<QQ", t, v) for t, v in image.auxv)
        if auxv and not image.auxv[-1][0] == AT_NULL:
            auxv += bytes(16)
        exe = bool(image.exe_path and os.path.exists(image.exe_path) and not self._same_exe())
        with self.injector.joined_batch() as batch:
            auxv_at = batch.put(auxv) if auxv else None

            def record(fd: int | Ref) -> Ref:
                fields = pack_u64(*(mm[n] for n in names), 0) + struct.pack(
                    "<II", len(auxv), (fd if isinstance(fd, int) else 0) & 0xFFFFFFFF)
                at = batch.put(fields + bytes(8))  # room for STORE's 8 bytes at the fd
                if auxv_at is not None:
                    batch.store(auxv_at, at + MM_AUXV_AT)
                if not isinstance(fd, int):
                    batch.store(fd, at + MM_EXE_FD_AT)
                return batch.raw(sc.PRCTL, sc.PR_SET_MM, sc.PR_SET_MM_MAP, at, MM_RECORD, 0)
            exe_fd = with_exe = None
            if exe:
                exe_fd = batch.call(sc.OPEN, batch.put_string(image.exe_path or ""),
                                    sc.O_RDONLY | sc.O_NOBLOCK_NOTTY, 0,
                                    step=f"opening the executable {image.exe_path}")
                with_exe = record(exe_fd)
            # Without the exe: the answer when relinking it is refused (run anyway: setting
            # the same fields twice changes nothing).
            plain = record(-1)
            if exe_fd is not None:
                batch.raw(sc.CLOSE, exe_fd)

            def outcome() -> None:
                result = batch.value(plain)
                if with_exe is not None:
                    first = batch.value(with_exe)
                    if not sc.is_error(first):
                        result = first
                    elif first != EBUSY:  # EBUSY: that very file is mapped, the link is right
                        self.report.warnings.append(
                            f"the exe link was not changed: {sc.errno_text(first)}")
                if sc.is_error(result):
                    raise RestoreError(f"setting the mm fields (prctl PR_SET_MM_MAP): "
                                       f"{sc.errno_text(result)}")
            batch.after(outcome)

    def _set_name(self) -> None:
        """The command name ps and /proc/PID/comm show: the image's program's, not the one
        started to restore into (the kernel keeps 15 bytes of it)."""
        if self.image.exe_path:
            name = os.path.basename(self.image.exe_path).encode()[:15] + b"\0"
            with self.injector.joined_batch() as batch:
                batch.raw(sc.PRCTL, PR_SET_NAME, batch.put(name), 0, 0, 0)

    def _same_exe(self) -> bool:
        """The kernel refuses (EBUSY) to relink an exe that is mapped again; none is needed."""
        if not self.local:
            return False  # PR_SET_MM_MAP's EBUSY then says it; a retry without exe follows
        try:
            live = os.stat(f"/proc/{self.pid}/exe")
            wanted = os.stat(self.image.exe_path or "")
        except OSError:
            return False
        return (live.st_ino, live.st_dev) == (wanted.st_ino, wanted.st_dev)

    def _set_signals(self) -> None:
        with self.injector.joined_batch() as batch:
            for number, action in enumerate(self.image.sigactions, start=1):
                if number in (sc.SIGKILL, sc.SIGSTOP) or number > sc.NSIG:
                    continue
                record = pack_u64(action.handler, action.flags, action.restorer, action.mask)
                batch.call(sc.RT_SIGACTION, number, batch.put(record), 0, 8,
                           step=f"setting the handler of signal {number}")
            self._set_altstack(self.main_thread)

    def _set_altstack(self, thread: Thread) -> None:
        alt = thread.altstack
        with self.injector.joined_batch() as batch:
            batch.call(sc.SIGALTSTACK,
                       batch.put(struct.pack("<QiiQ", alt.sp, alt.flags, 0, alt.size)), 0,
                       step="setting the alternate signal stack", address=alt.sp)

    def _set_thread_state(self, thread: Thread | None = None,
                          with_altstack: bool = False) -> None:
        """The selected thread's own state; by default the main thread's. Its system calls
        (and its alternate stack where asked) and xrstor run in one batch, then the state
        kinds' per-thread calls."""
        thread = thread or self.main_thread
        with self.injector.batch() as batch:
            self.queue_thread_state(batch, thread, with_altstack)
        run_hooks(self, self.thread_hooks(thread), thread)

    def queue_thread_state(self, batch: Batch, thread: Thread, with_altstack: bool) -> None:
        """Queue the calls that give `thread` (the one to run the batch) its own state."""
        # An image that records the registration (state kind "rseq") gets exactly it from
        # that kind's restore_thread; an older one, glibc's area as its libc would have it.
        image_rseq = None if "rseq" in self.image.states else self._image_rseq(thread)
        # A debugger that shows no fs_base/gs_base (older LLDBs) cannot write them: set here.
        shown = self.target.read_registers(("fs_base", "gs_base"))
        rseq: list[Ref] = []
        if with_altstack:
            alt = thread.altstack
            batch.call(sc.SIGALTSTACK,
                       batch.put(struct.pack("<QiiQ", alt.sp, alt.flags, 0, alt.size)), 0,
                       step="setting the alternate signal stack", address=alt.sp)
        for i, desc in enumerate(thread.tls):
            if desc:
                batch.call(sc.SET_THREAD_AREA,
                           batch.put(descriptor_to_user_desc(GDT_ENTRY_TLS_MIN + i, desc)),
                           step=f"setting TLS entry {GDT_ENTRY_TLS_MIN + i}")
        if thread.robust_list:
            batch.call(sc.SET_ROBUST_LIST, thread.robust_list, thread.robust_list_len,
                       step="setting the robust futex list", address=thread.robust_list)
        tid_at = self.tid_addresses.get(thread.tid) or thread.clear_child_tid
        if tid_at:
            batch.raw(sc.SET_TID_ADDRESS, tid_at)
        if image_rseq is not None:  # the lengths glibc registers with: 32, or larger
            rseq = [batch.raw(RSEQ, image_rseq[0], length, 0, RSEQ_SIG)
                    for length in dict.fromkeys((32, image_rseq[1]))]
        for name, code in (("fs_base", sc.ARCH_SET_FS), ("gs_base", sc.ARCH_SET_GS)):
            if name in thread.registers and name not in shown:
                batch.call(sc.ARCH_PRCTL, code, thread.registers[name],
                           step=f"setting {name}")
        batch.call(sc.RT_SIGPROCMASK, sc.SIG_SETMASK, batch.put(pack_u64(thread.sigmask)),
                   0, 8, step="setting the signal mask")
        if thread.xsave is not None:
            batch.xrstor(thread.xsave.data, thread.xsave.features & XSAVE_RESTORABLE)

        def rseq_warning() -> None:
            if rseq and all(sc.is_error(batch.value(r)) for r in rseq):
                assert image_rseq is not None
                self.report.warnings.append(
                    f"the rseq area at {image_rseq[0]:#x} was not registered: "
                    f"{sc.errno_text(batch.value(rseq[-1]))}")
        batch.after(rseq_warning)

    def thread_hooks(self, thread: Thread) -> list[tuple[str, Callable[[], None]]]:
        """The state kinds' restore_thread hooks for `thread`, bound, in their order."""
        return [(kind.name, functools.partial(self._restore_kind, kind, thread))
                for kind in state.KINDS
                if kind.restore_thread is not None and kind.name in self.image.states]

    def _image_rseq(self, thread: Thread) -> tuple[int, int] | None:
        base = dict(self.image.auxv).get(AT_BASE)
        ld = next((v.path for v in self.image.vmas if base and v.start == base), None)
        return rseq_area(self.target.read_memory, self.image.auxv, ld,
                         thread.registers.get("fs_base", 0))

    def _set_registers(self, thread: Thread | None = None) -> None:
        regs = dict((thread or self.main_thread).registers)
        current = self.target.read_registers(("cs", "ss", "ds", "es", "fs", "gs"))
        ordered: dict[str, int] = {}
        for name in ("ds", "es", "fs", "gs"):  # a selector write may reload a base: first
            if name in current and name in regs and regs[name] != current[name]:
                ordered[name] = regs[name]
        for name in ("fs_base", "gs_base", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                     "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "eflags", "rip"):
            if name in regs:
                ordered[name] = regs[name]
        # Writing rip makes GDB reset orig_rax; the kernel's restart of an interrupted system
        # call needs orig_rax and rax as the checkpoint had them, so they come last.
        ordered["orig_rax"] = regs.get("orig_rax", (1 << 64) - 1)
        ordered["rax"] = regs.get("rax", 0)
        if ordered["rax"] == ERESTART_RESTARTBLOCK:
            # The kernel's restart block (the time left to sleep, say) stayed with the dumped
            # task; restart the original call from its registers instead.
            ordered["rax"] = ERESTARTNOINTR
        self.target.write_registers(ordered)


def restore(target: Target, image: Image, via: str = "auto", log: Log | None = None,
            progress: Progress | None = None, accept_loss: bool = False) -> RestoreReport:
    plan = RestorePlan(target, image, via, log, progress, accept_loss)
    plan.check()
    return plan.run()
