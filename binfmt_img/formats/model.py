"""The in-memory picture of a process image, shared by both on-disk versions."""

from __future__ import annotations

import bisect
import mmap
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PAGE_SIZE = 4096

# Register names as GDB spells them; v1 stores them in this order.
GP_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "eflags", "orig_rax", "fs_base", "gs_base",
)
SEGMENT_REGISTERS = ("cs", "ss", "ds", "es", "fs", "gs")
ALL_REGISTERS = GP_REGISTERS + SEGMENT_REGISTERS

# mm_struct fields, in the seed's order.
MM_FIELDS = (
    "flags", "def_flags", "start_code", "end_code", "start_data", "end_data",
    "start_brk", "brk", "start_stack", "arg_start", "arg_end", "env_start", "env_end",
)

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_SHARED_VALIDATE, MAP_TYPE = 0x03, 0x0F  # mmap(2): the low bits are one sharing type
MAP_GROWSDOWN = 0x100
MAP_DENYWRITE, MAP_EXECUTABLE, MAP_NORESERVE, MAP_STACK = 0x800, 0x1000, 0x4000, 0x20000
# The flags an image's VMA may carry besides its type: what mmap takes again unchanged (the
# kernel ignores DENYWRITE and EXECUTABLE today; older dumpers wrote them).
VMA_FLAGS = (MAP_FIXED | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_DENYWRITE | MAP_EXECUTABLE
             | MAP_NORESERVE | MAP_STACK)

SPECIAL_AREAS = ("[vdso]", "[vvar]", "[vvar_vclock]", "[stack]", "[heap]", "[vsyscall]")
VSYSCALL_START = 0xFFFFFFFFFF600000
USER_TOP = 0x7FFFFFFFF000  # TASK_SIZE with 4-level paging
# Highest user address with 4-level paging (47 bits) and with LA57 (56 bits).
USER_ADDRESS_LIMIT = 0x00FFFFFFFFFFF000


def prot_text(prot: int) -> str:
    """Render PROT_* bits as /proc/PID/maps does: 'r-x'."""
    return "".join(ch if prot & bit else "-" for ch, bit in
                   (("r", PROT_READ), ("w", PROT_WRITE), ("x", PROT_EXEC)))


@dataclass
class FileIdentity:
    """What identifies a mapped file, so that a changed one is noticed before restore."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    def changes(self, now: os.stat_result, contents: bool = True) -> list[str]:
        """How the file differs from what was recorded, in words; the inode only when its
        `contents` may change legitimately (a log open for appending, a directory)."""
        out = [f"inode {self.inode} -> {now.st_ino}"] if self.inode != now.st_ino else []
        if contents and self.size != now.st_size:
            out.append(f"size {self.size} -> {now.st_size} bytes")
        if contents and self.mtime_ns != now.st_mtime_ns:
            out.append(f"modified {_when(self.mtime_ns)} -> {_when(now.st_mtime_ns)}")
        return out


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


@dataclass
class Vma:
    start: int
    end: int
    prot: int
    flags: int  # MAP_* flags
    pgoff: int = 0  # in pages
    path: str | None = None  # a mapped file
    name: str | None = None  # a special area: "[vdso]", "[stack]", ...
    file: FileIdentity | None = None
    fd: int = 0  # v0 only; kept so v0 round trips byte for byte

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def is_file(self) -> bool:
        return self.path is not None

    @property
    def is_shared(self) -> bool:
        """As the kernel reads the type: MAP_SHARED_VALIDATE (= SHARED|PRIVATE) is shared."""
        return self.flags & MAP_TYPE in (MAP_SHARED, MAP_SHARED_VALIDATE)

    @property
    def label(self) -> str:
        return self.path or self.name or ""


@dataclass
class SigAction:
    handler: int = 0
    flags: int = 0
    restorer: int = 0
    mask: int = 0


@dataclass
class AltStack:
    sp: int = 0
    flags: int = 2  # SS_DISABLE
    size: int = 0


@dataclass
class Xsave:
    """The raw XSAVE area (standard, non-compacted format) and the feature mask it holds."""

    features: int
    data: bytes


def signal_name(number: int) -> str:
    """SIGSEGV, SIGRTMIN+3, SIG99 for a number no signal has."""
    try:
        return signal.Signals(number).name
    except ValueError:
        rtmin = int(signal.SIGRTMIN)
        return f"SIGRTMIN+{number - rtmin}" if number > rtmin else f"SIG{number}"


@dataclass
class Signal:
    """The signal the process had stopped with when a core recorded it (a crash's fault)."""

    number: int
    code: int = 0  # si_code: > 0 when the kernel raised it (a fault), <= 0 when sent
    errno: int = 0
    address: int = 0  # si_addr: the faulting address of SIGSEGV, SIGBUS, SIGILL, SIGFPE
    siginfo: bytes = b""  # the raw 128-byte siginfo_t, when the core held one


@dataclass
class Thread:
    tid: int = 0
    registers: dict[str, int] = field(default_factory=dict)
    # GDT TLS descriptors (entries 12..14) as the 8 bytes the CPU reads, little-endian u64.
    tls: list[int] = field(default_factory=lambda: [0, 0, 0])
    xsave: Xsave | None = None
    sigmask: int = 0
    altstack: AltStack = field(default_factory=AltStack)
    clear_child_tid: int = 0
    robust_list: int = 0
    robust_list_len: int = 0


# Kinds of open file descriptor (v1 "process" section): what a restore can open again.
FD_OTHER, FD_FILE, FD_DIRECTORY, FD_DEVICE = 0, 1, 2, 3


@dataclass
class OpenFile:
    """One open file descriptor of the process."""

    fd: int
    kind: int  # FD_FILE, FD_DIRECTORY, FD_DEVICE (/dev/null and the like), FD_OTHER
    path: str  # the file's path, or what /proc/PID/fd/N links to ("pipe:[1234]")
    flags: int = 0  # open(2) flags as /proc/PID/fdinfo/N shows them, O_CLOEXEC included
    pos: int = 0
    file: FileIdentity | None = None


@dataclass(frozen=True)
class PageRun:
    """Consecutive pages stored in the image: page i sits at offset + i * stride."""

    vaddr: int
    count: int
    offset: int
    stride: int = PAGE_SIZE
    checksum: int | None = None  # crc32 of the run's bytes (v1)

    @property
    def end(self) -> int:
        return self.vaddr + self.count * PAGE_SIZE


@dataclass(frozen=True)
class BadRun(PageRun):
    """A page run that fails its check (img-info --verify, the check before a restore)."""

    problem: str = "its bytes do not match their crc32"


@dataclass
class Image:
    format: str = "v1"  # "v0" or "v1"
    threads: list[Thread] = field(default_factory=lambda: [Thread()])
    mm: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MM_FIELDS, 0))
    exe_fd: int = 0  # v0 only
    exe_path: str | None = None
    auxv: list[tuple[int, int]] = field(default_factory=list)
    vmas: list[Vma] = field(default_factory=list)
    sigactions: list[SigAction] = field(default_factory=list)  # index = signal - 1
    runs: list[PageRun] = field(default_factory=list)
    signal: Signal | None = None  # v1 only, from a core: what stopped the main thread
    core_kind: str | None = None  # read from an ELF core: "kernel" or "gcore" (GDB's) wrote it
    # v1 "process" section: the dumped pid (the thread with tid == pid is the main one), the
    # working directory and the fd table. files None: not recorded (v0, older v1 images).
    pid: int = 0
    cwd: str | None = None
    files: list[OpenFile] | None = None
    # Further process state: one v1 section per kind of binfmt_img.state, kept as read
    # ((section type, file offset, payload), in file order). The format knows their framing,
    # the state layer their records: binfmt_img.state.decode fills `states` (one value per
    # kind, by its name) and `unknown_states` (types of kinds this version does not know, a
    # newer writer's); binfmt_img.state.put records a value and its section.
    raw_states: list[tuple[int, int, bytes]] = field(default_factory=list)
    states: dict[str, Any] = field(default_factory=dict)
    unknown_states: list[int] = field(default_factory=list)
    # Where PageRun offsets point: the mapped image file (or bytes of a synthetic one).
    source: memoryview | None = None
    mapping: Any = None  # the mmap behind source, when it is a file
    path: str | None = None  # that file
    # The image file held open from load to restore: checks and page writes read this one
    # file, whatever happens to its path meanwhile, and with pread (a file truncated under
    # a mapping would kill the debugger with SIGBUS).
    fd: int | None = None
    # v1 "file contents" section (binfmt_img/formats/identity.py): mapped path -> ContentId.
    # Empty in older images: their files keep the inode, size and mtime check.
    contents: dict[str, Any] = field(default_factory=dict)
    # v1 "packed file" sections (img-dump --pack): identity.PackedFile, the files themselves.
    packed: list[Any] = field(default_factory=list)
    # Paths a restore substituted (--exe, --map, --sysroot, a packed copy): image's -> used.
    moved: dict[str, str] = field(default_factory=dict)
    # Where pages come from when they are neither in `source` nor in `fd` (a checkpoint store
    # entry): an object with read_into(offset, view) filling `view` with the bytes at `offset`
    # of the image's page space (binfmt_img.store.pages.PageReader).
    reader: Any = None
    _starts: Any = field(default=None, repr=False, compare=False)

    def release(self, offset: int, length: int) -> None:
        """Drop mapped file pages a restore has finished with: the debugger's memory use
        stays flat however large the image."""
        if self.mapping is not None and length > 0 and self.reader is None:
            start = offset - offset % PAGE_SIZE
            self.mapping.madvise(mmap.MADV_DONTNEED, start, offset + length - start)

    @property
    def main(self) -> Thread:
        return self.threads[0]

    @property
    def registers(self) -> dict[str, int]:
        return self.main.registers

    @property
    def page_count(self) -> int:
        return sum(run.count for run in self.runs)

    def clip_run(self, run: PageRun, start: int, end: int) -> PageRun | None:
        """The part of a run inside [start, end), or None."""
        low, high = max(run.vaddr, start), min(run.end, end)
        if low >= high:
            return None
        if (low, high) == (run.vaddr, run.end):
            return run  # whole: it keeps its checksum
        skip = (low - run.vaddr) // PAGE_SIZE
        return PageRun(low, (high - low) // PAGE_SIZE, run.offset + skip * run.stride,
                       run.stride)

    def run_data(self, run: PageRun) -> Iterator[memoryview]:
        """The bytes of a run: one view when contiguous, else one view per page."""
        if self.reader is not None:
            yield from _read_through(self.reader, run.offset, run.count * PAGE_SIZE)
            return
        assert self.source is not None
        if run.stride == PAGE_SIZE:
            yield self.source[run.offset:run.offset + run.count * PAGE_SIZE]
        else:
            for i in range(run.count):
                at = run.offset + i * run.stride
                yield self.source[at:at + PAGE_SIZE]

    def iter_pages(self) -> Iterator[tuple[int, memoryview]]:
        """Every stored page as (vaddr, 4096-byte view)."""
        for run in self.runs:
            vaddr = run.vaddr
            for chunk in self.run_data(run):
                for at in range(0, len(chunk), PAGE_SIZE):
                    yield vaddr, chunk[at:at + PAGE_SIZE]
                    vaddr += PAGE_SIZE

    def read(self, addr: int, size: int) -> bytes | None:
        """Bytes at a virtual address, if all of them are stored pages (zero pages in VMAs too)."""
        out = bytearray()
        while size > 0:
            page = addr & ~(PAGE_SIZE - 1)
            data = self.page_at(page)
            if data is None:
                return None
            take = min(size, page + PAGE_SIZE - addr)
            out += data[addr - page:addr - page + take]
            addr += take
            size -= take
        return bytes(out)

    def page_at(self, vaddr: int) -> bytes | None:
        # The runs are sorted once validated; their starts are kept until the list changes.
        if self._starts is None or self._starts[0] is not self.runs:
            self._starts = (self.runs, [run.vaddr for run in self.runs])
        i = bisect.bisect_right(self._starts[1], vaddr) - 1
        if i >= 0 and vaddr < self.runs[i].end:
            run = self.runs[i]
            at = run.offset + (vaddr - run.vaddr) // PAGE_SIZE * run.stride
            if self.reader is not None:
                return bytes(next(_read_through(self.reader, at, PAGE_SIZE)))
            if self.fd is not None:
                return os.pread(self.fd, PAGE_SIZE, at).ljust(PAGE_SIZE, b"\0")
            assert self.source is not None
            return bytes(self.source[at:at + PAGE_SIZE])
        if self.format == "v1" and any(v.start <= vaddr < v.end and not v.is_file
                                       for v in self.vmas):
            return bytes(PAGE_SIZE)  # v1 leaves zero pages of anonymous memory out
        return None


def _read_through(reader: Any, offset: int, size: int,
                  piece: int = 16 << 20) -> Iterator[memoryview]:
    """A reader's bytes in pieces of at most `piece` bytes, each its own buffer (a caller
    may keep them all, as b"".join does)."""
    for at in range(0, size, piece):
        view = memoryview(bytearray(min(piece, size - at)))
        reader.read_into(offset + at, view)
        yield view


def last_stored_page(image: Image, start: int, end: int) -> int | None:
    """The address of the highest page the image stores in [start, end), or None."""
    runs = image.runs  # sorted by address once validated
    i = bisect.bisect_left([run.vaddr for run in runs], end) - 1
    if i < 0 or runs[i].end <= start:
        return None
    return min(runs[i].end, end) - PAGE_SIZE
