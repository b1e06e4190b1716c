"""Reading an ELF core of an x86-64 Linux process (the kernel's or GDB's `gcore`) as an Image.

The pages stay in the core: the Image's runs point into the mapped core file, so a restore
straight from a core copies nothing. `core2img` saves the same Image as a v1 file.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from binfmt_img.errors import ImageError
from binfmt_img.formats.model import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    VSYSCALL_START,
    FileIdentity,
    Image,
    PageRun,
    Signal,
    Thread,
    Vma,
    Xsave,
)
from binfmt_img.formats.validate import validate
from binfmt_img.live.vdso import looks_like_vdso
from binfmt_img.safeio import open_regular, open_regular_file

Warn = Callable[[str], None]

ELF_MAGIC = b"\x7fELF"
ELF_HEADER_SIZE = 64
NT_PRSTATUS, NT_FPREGSET, NT_PRPSINFO, NT_AUXV = 1, 2, 3, 6
NT_SIGINFO, NT_FILE, NT_X86_XSTATE = 0x53494749, 0x46494C45, 0x202
# pyelftools names the core note types it knows; the others stay numbers.
NOTE_NUMBERS = {"NT_PRSTATUS": NT_PRSTATUS, "NT_FPREGSET": NT_FPREGSET,
                "NT_PRPSINFO": NT_PRPSINFO, "NT_AUXV": NT_AUXV, "NT_SIGINFO": NT_SIGINFO,
                "NT_FILE": NT_FILE}
AT_ENTRY, AT_RANDOM, AT_EXECFN, AT_SYSINFO_EHDR = 9, 25, 31, 33
PF_X, PF_W, PF_R = 1, 2, 4

# struct elf_prstatus on x86-64: siginfo (signo, code, errno), cursig, sigpend, sighold,
# pid, ppid, pgrp, sid, four timevals, then user_regs_struct and fpvalid.
PRSTATUS = struct.Struct("<iiih2xQQiiii64x27Qi4x")
PRSTATUS_REGISTERS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
    "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base",
    "ds", "es", "fs", "gs",
)
SIGINFO_HEAD = struct.Struct("<iii4xQ")  # si_signo, si_errno, si_code, si_addr
FXSAVE_SIZE, XSAVE_HEADER_SIZE = 512, 64
XCR0_OFFSET = 464  # the kernel's copy of XCR0 in the FXSAVE area's software-reserved bytes
X87_SSE, X87_SSE_AVX = 0x3, 0x7
FAULTS = (4, 7, 8, 11)  # SIGILL, SIGBUS, SIGFPE, SIGSEGV: re-raised by the same instruction
BRK_RANDOM_RANGE = 1 << 30
ZERO_PAGE = bytes(PAGE_SIZE)  # x86-64 arch_randomize_brk: up to 1 GiB above the bss
# What pyelftools raises on a damaged file: its ELFError, or, from a few of its parsers, an
# error of the copy of construct it bundles (private, and to be dropped), or an ordinary one.
ELF_DAMAGE = Exception


@dataclass
class _Load:
    """A PT_LOAD segment: one VMA of the process, with the bytes the core kept of it."""

    start: int
    end: int
    prot: int
    offset: int
    filesz: int


@dataclass
class _FileMap:
    """An NT_FILE entry."""

    start: int
    end: int
    offset: int  # in bytes
    path: str


@dataclass
class _ThreadNotes:
    prstatus: bytes
    fpregs: bytes | None = None
    xstate: bytes | None = None
    siginfo: bytes | None = None


@dataclass
class _Core:
    """What the notes and program headers of a core say."""

    loads: list[_Load] = field(default_factory=list)
    threads: list[_ThreadNotes] = field(default_factory=list)
    auxv: list[tuple[int, int]] = field(default_factory=list)
    auxv_raw: bytes = b""
    files: list[_FileMap] = field(default_factory=list)
    pid: int = 0
    by_gdb: bool = False  # written by GDB's gcore rather than the kernel


def is_elf(path: str) -> bool:
    """Whether a file starts with the ELF magic (a core, or some other ELF file)."""
    try:
        with open_regular_file(path) as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_core(path: str, exe: str | None = None, warn: Warn | None = None) -> Image:
    """The Image held by an ELF core; `exe` replaces the executable's path the core names.
    A truncated, damaged or foreign file raises ImageError; things a restore will miss
    (files gone or changed, memory the core left out) go to `warn`, one line each."""
    warn = warn or (lambda _message: None)
    try:
        with open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            core = _parse(f, size)
            mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) if size else None
            written = os.fstat(f.fileno()).st_mtime_ns
    except OSError as error:
        raise ImageError(f"{path}: {error.strerror}") from None
    except ImageError as error:
        raise ImageError(f"{path}: {error.what}", error.offset) from None
    assert mapped is not None
    image = _Builder(core, mapped, written, warn).build(exe)
    validate(image, {})
    return image


# ---- parsing: all pyelftools work is here ----
def _parse(f, size: int) -> _Core:
    head = f.read(4)
    if head != ELF_MAGIC:
        raise ImageError(f"not an ELF core: starts with {head.hex() or 'nothing'}", 0)
    if size < ELF_HEADER_SIZE:
        raise ImageError(f"truncated core: {size} bytes, less than an ELF header", 0)
    f.seek(0)
    try:
        elf = ELFFile(f)
        _check_kind(elf, size)
        core = _Core()
        for segment in elf.iter_segments():
            _read_segment(core, segment, size)
    except ImageError:
        raise
    except ELF_DAMAGE as error:
        raise ImageError(f"damaged or truncated ELF core: {error}") from None
    if not core.threads:
        raise ImageError("the core holds no thread (no NT_PRSTATUS note)")
    return core


def _check_kind(elf: ELFFile, size: int) -> None:
    header = elf.header
    if elf.elfclass != 64 or header["e_machine"] != "EM_X86_64":
        raise ImageError(f"not an x86-64 core: {elf.elfclass}-bit {header['e_machine']}", 0)
    if header["e_type"] != "ET_CORE":
        raise ImageError(f"not a core file: ELF type {header['e_type']}", 0)
    table_end = header["e_phoff"] + header["e_phnum"] * header["e_phentsize"]
    if table_end > size:
        raise ImageError(f"truncated core: program headers end at {table_end:#x}, "
                         f"the file has {size:#x} bytes", header["e_phoff"])


def _read_segment(core: _Core, segment, size: int) -> None:
    h = segment.header
    if h["p_type"] not in ("PT_LOAD", "PT_NOTE"):
        return
    if h["p_offset"] + h["p_filesz"] > size:
        where = f"segment at {h['p_vaddr']:#x}" if h["p_type"] == "PT_LOAD" else "notes"
        raise ImageError(f"truncated core: its {where} needs bytes up to "
                         f"{h['p_offset'] + h['p_filesz']:#x}, the file has {size:#x}",
                         h["p_offset"])
    if h["p_type"] == "PT_NOTE":
        for note in segment.iter_notes():
            _read_note(core, note)
    elif h["p_memsz"]:
        flags = h["p_flags"]
        prot = ((PROT_READ if flags & PF_R else 0) | (PROT_WRITE if flags & PF_W else 0)
                | (PROT_EXEC if flags & PF_X else 0))
        core.loads.append(_Load(h["p_vaddr"], h["p_vaddr"] + h["p_memsz"], prot,
                                h["p_offset"], min(h["p_filesz"], h["p_memsz"])))


def _read_note(core: _Core, note) -> None:
    kind = NOTE_NUMBERS.get(note["n_type"], note["n_type"])
    data = bytes(note["n_descdata"])
    if note["n_name"] == "GDB":
        core.by_gdb = True  # GDB's target description: only gcore writes it
    if kind == NT_PRSTATUS:
        if len(data) < PRSTATUS.size:
            raise ImageError(f"NT_PRSTATUS note of {len(data)} bytes, expected "
                             f"{PRSTATUS.size}", note["n_offset"])
        core.threads.append(_ThreadNotes(data))
    elif kind == NT_PRPSINFO:
        core.pid = note["n_desc"]["pr_pid"]
    elif kind == NT_AUXV:
        core.auxv_raw = data
        core.auxv = list(struct.iter_unpack("<QQ", data[:len(data) // 16 * 16]))
    elif kind == NT_FILE:
        desc = note["n_desc"]
        core.by_gdb = core.by_gdb or desc["page_size"] == 1  # the kernel says 4096
        for entry, name in zip(desc["Elf_Nt_File_Entry"], desc["filename"]):
            core.files.append(_FileMap(entry["vm_start"], entry["vm_end"],
                                       entry["page_offset"] * desc["page_size"],
                                       name.decode(errors="surrogateescape")))
    elif core.threads and kind in (NT_FPREGSET, NT_X86_XSTATE, NT_SIGINFO):
        thread = core.threads[-1]  # these follow their thread's NT_PRSTATUS
        if kind == NT_FPREGSET and note["n_name"] == "CORE":
            thread.fpregs = data
        elif kind == NT_X86_XSTATE:
            thread.xstate = data
        elif kind == NT_SIGINFO:
            thread.siginfo = data


# ---- from what the core says to an Image ----
def _thread(notes: _ThreadNotes, by_gdb: bool) -> Thread:
    fields = PRSTATUS.unpack_from(notes.prstatus)
    registers = dict(zip(PRSTATUS_REGISTERS, fields[10:37]))
    return Thread(tid=fields[6], registers=registers, xsave=_xsave(notes, by_gdb),
                  sigmask=fields[5])


def _xsave(notes: _ThreadNotes, by_gdb: bool) -> Xsave | None:
    area = notes.xstate
    if area is not None and len(area) >= FXSAVE_SIZE + XSAVE_HEADER_SIZE:
        (xcr0,) = struct.unpack_from("<Q", area, XCR0_OFFSET)
        (present,) = struct.unpack_from("<Q", area, FXSAVE_SIZE)
        features = xcr0 or present | X87_SSE
        if by_gdb:
            # GDB (before 14) lays out the components above AVX at Intel's offsets whatever
            # the CPU; only the legacy area and AVX sit at the same offsets everywhere.
            features &= X87_SSE_AVX
        return Xsave(features, area)
    if notes.fpregs is not None and len(notes.fpregs) >= FXSAVE_SIZE:
        # An FXSAVE area is the legacy region of an XSAVE one; the header says x87 and SSE.
        header = struct.pack("<Q", X87_SSE).ljust(XSAVE_HEADER_SIZE, b"\0")
        return Xsave(X87_SSE, notes.fpregs[:FXSAVE_SIZE] + header)
    return None


def _signal(notes: _ThreadNotes) -> Signal | None:
    if notes.siginfo is not None and len(notes.siginfo) >= SIGINFO_HEAD.size:
        number, errno, code, address = SIGINFO_HEAD.unpack_from(notes.siginfo)
        if number:
            return Signal(number, code, errno, address, notes.siginfo)
    number, code, errno, cursig = PRSTATUS.unpack_from(notes.prstatus)[:4]
    if number or cursig:
        return Signal(number or cursig, code, errno)
    return None


def is_fault(signal: Signal | None) -> bool:
    """A fault the kernel raised at an instruction, which running it again raises again."""
    return signal is not None and signal.number in FAULTS and signal.code > 0


class _Memory:
    """The process's memory as the core holds it."""

    def __init__(self, loads: list[_Load], data: mmap.mmap) -> None:
        self.loads = sorted(loads, key=lambda load: load.start)
        self.data = data

    def read(self, addr: int, size: int) -> bytes | None:
        for load in self.loads:
            if load.start <= addr and addr + size <= load.start + load.filesz:
                at = load.offset + addr - load.start
                return bytes(self.data[at:at + size])
        return None

    def u64(self, addr: int) -> int | None:
        raw = self.read(addr, 8)
        return None if raw is None else struct.unpack("<Q", raw)[0]

    def string_end(self, addr: int, limit: int = 1 << 20) -> int | None:
        """The address just past the NUL ending the C string at `addr`."""
        at = addr
        while at < addr + limit:
            chunk = self.read(at, PAGE_SIZE - at % PAGE_SIZE)
            if chunk is None:
                return None
            nul = chunk.find(b"\0")
            if nul >= 0:
                return at + nul + 1
            at += len(chunk)
        return None

    def string(self, addr: int) -> str | None:
        end = self.string_end(addr)
        raw = self.read(addr, end - 1 - addr) if end is not None else None
        return None if raw is None else raw.decode(errors="surrogateescape")


class _Files:
    """Mapped files as they are now, to compare with what the core says of them."""

    def __init__(self, core_written_ns: int) -> None:
        self.core_written_ns = core_written_ns
        self.fds: dict[str, int | None] = {}

    def stat(self, path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError:
            return None

    def read(self, path: str, offset: int, size: int) -> bytes | None:
        if path not in self.fds:
            try:
                self.fds[path] = open_regular(path)
            except OSError:
                self.fds[path] = None
        fd = self.fds[path]
        if fd is None:
            return None
        return os.pread(fd, size, offset).ljust(size, b"\0")  # past the end reads as zeros

    def close(self) -> None:
        for fd in self.fds.values():
            if fd is not None:
                os.close(fd)


def _elf_prot(path: str, offset: int) -> int:
    """The protection an ELF file's program headers give the page at `offset`; PROT_READ
    for any other file (gcore leaves out file mappings never written, and their p_flags)."""
    try:
        with open_regular_file(path) as f:
            for segment in ELFFile(f).iter_segments():
                h = segment.header
                low = h["p_offset"] & ~(PAGE_SIZE - 1)
                if h["p_type"] == "PT_LOAD" and low <= offset < h["p_offset"] + h["p_filesz"]:
                    flags = h["p_flags"]
                    return ((PROT_READ if flags & PF_R else 0)
                            | (PROT_WRITE if flags & PF_W else 0)
                            | (PROT_EXEC if flags & PF_X else 0))
    except ELF_DAMAGE:  # unreadable, or not ELF: OSError included
        pass
    return PROT_READ


def _uncovered(start: int, end: int, loads: list[_Load]) -> list[tuple[int, int]]:
    """The parts of [start, end) that no PT_LOAD covers."""
    parts, cursor = [], start
    for load in sorted(loads, key=lambda x: x.start):
        if load.end <= cursor or load.start >= end:
            continue
        if load.start > cursor:
            parts.append((cursor, load.start))
        cursor = max(cursor, load.end)
    if cursor < end:
        parts.append((cursor, end))
    return parts


class _Builder:
    def __init__(self, core: _Core, data: mmap.mmap, written_ns: int, warn: Warn) -> None:
        self.core, self.data, self.warn = core, data, warn
        self.memory = _Memory(core.loads, data)
        self.files = _Files(written_ns)
        self.auxv = dict(core.auxv)
        self.loads = {load.start: load for load in core.loads}
        self.untrusted: set[str] = set()  # files gone or changed since the core

    def build(self, exe: str | None) -> Image:
        core = self.core
        try:
            image = Image(format="v1", threads=[_thread(t, core.by_gdb) for t in core.threads],
                          auxv=list(core.auxv), source=memoryview(self.data))
            image.mapping = self.data
            image.signal = _signal(core.threads[0])
            image.core_kind = "gcore" if core.by_gdb else "kernel"
            image.vmas = self._vmas()
            image.exe_path = self._exe_path(exe, image.vmas)
            self._name_special_areas(image)
            self._check_files(image)
            image.mm = _MmFields(image, self.memory, core.auxv_raw).fields()
            image.runs = self._runs(image)
        finally:
            self.files.close()
        return image

    def _vmas(self) -> list[Vma]:
        vmas = []
        for load in self.core.loads:
            vmas.append(Vma(load.start, load.end, load.prot, MAP_PRIVATE | MAP_ANONYMOUS))
        for mapped in self.core.files:
            for start, end in _uncovered(mapped.start, mapped.end, self.core.loads):
                offset = mapped.offset + start - mapped.start
                vmas.append(Vma(start, end, _elf_prot(_live(mapped.path), offset),
                                MAP_PRIVATE))
        files = sorted(self.core.files, key=lambda m: m.start)
        starts = [m.start for m in files]
        for vma in vmas:
            i = bisect.bisect_right(starts, vma.start) - 1
            if i >= 0 and vma.end <= files[i].end:
                mapped = files[i]
                vma.path = mapped.path
                vma.pgoff = (mapped.offset + vma.start - mapped.start) // PAGE_SIZE
                vma.flags = MAP_PRIVATE
        return sorted(vmas, key=lambda v: v.start)

    def _exe_path(self, exe: str | None, vmas: list[Vma]) -> str | None:
        """--exe, else the file mapped at the entry point, else the auxv's AT_EXECFN."""
        entry = self.auxv.get(AT_ENTRY, 0)
        named = next((v.path for v in vmas if v.path and v.start <= entry < v.end), None)
        if named is None and AT_EXECFN in self.auxv:
            named = self.memory.string(self.auxv[AT_EXECFN])
        if exe is not None:
            exe = os.path.abspath(exe)
            for vma in vmas:
                if named is not None and vma.path == named:
                    vma.path = exe  # the executable moved: map it from where it is now
            return exe
        return _live(named) if named else None

    def _name_special_areas(self, image: Image) -> None:
        vmas = image.vmas
        for vma in vmas:
            if vma.start == VSYSCALL_START:
                vma.name = "[vsyscall]"
        vdso_at = self.auxv.get(AT_SYSINFO_EHDR)
        vdso = next((v for v in vmas if v.start == vdso_at and not v.is_file
                     and looks_like_vdso(self.memory.read(v.start, PAGE_SIZE))), None)
        if vdso is not None:
            vdso.name = "[vdso]"
            self._name_vvar(vmas, vdso)
        # The initial stack holds the strings the auxv points at.
        marks = [self.auxv.get(AT_EXECFN), self.auxv.get(AT_RANDOM), image.registers.get("rsp")]
        mark = next((m for m in marks if m), None)
        stack = next((v for v in vmas if mark and v.start <= mark < v.end
                      and not v.is_file and v.name is None), None)
        if stack is not None:
            stack.name = "[stack]"

    @staticmethod
    def _name_vvar(vmas: list[Vma], vdso: Vma) -> None:
        """The kernel's data pages sit right below the vDSO: [vvar], and on newer kernels
        [vvar_vclock] between the two; read-only, no file."""
        below = []
        for vma in reversed(vmas[:vmas.index(vdso)]):
            edge = below[-1].start if below else vdso.start
            if (vma.end != edge or vma.is_file or vma.prot != PROT_READ or len(below) == 2):
                break
            below.append(vma)
        names = ["[vvar_vclock]", "[vvar]"] if len(below) == 2 else ["[vvar]"]
        for vma, name in zip(below, names):
            vma.name = name

    def _check_files(self, image: Image) -> None:
        """Record each mapped file's identity now; say which files are gone or changed where
        the core lacks pages that only they could provide, one line per file."""
        lacking: dict[str, tuple[str, int]] = {}  # path: (problem, pages the core lacks)
        for vma in image.vmas:
            if not vma.is_file:
                continue
            assert vma.path is not None
            vma.path = _live(vma.path)
            st = self.files.stat(vma.path)
            if st is not None:
                vma.file = FileIdentity(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
            missing = self._left_out(vma)
            if st is None and not missing:
                # Every page is in the core: the mapping restores as anonymous memory.
                vma.path, vma.flags, vma.pgoff = None, MAP_PRIVATE | MAP_ANONYMOUS, 0
                continue
            problem = self._file_problem(vma, st)
            if problem:
                self.untrusted.add(vma.path)  # keep every page the core has of it
            if problem and missing:
                earlier = lacking.get(vma.path, (problem, 0))
                lacking[vma.path] = (earlier[0], earlier[1] + missing)
        for path, (problem, pages) in lacking.items():
            self.warn(f"{path}: {problem}; the core lacks {pages} pages that it should "
                      "provide")

    def _left_out(self, vma: Vma) -> int:
        load = self.loads.get(vma.start)
        kept = load.filesz // PAGE_SIZE if load is not None else 0
        return vma.size // PAGE_SIZE - kept

    def _file_problem(self, vma: Vma, st: os.stat_result | None) -> str | None:
        if st is None:
            return "gone"
        needed = vma.pgoff * PAGE_SIZE + vma.size
        if -(-st.st_size // PAGE_SIZE) * PAGE_SIZE < needed:
            return f"changed: {st.st_size} bytes, shorter than its mapping ({needed:#x})"
        if st.st_mtime_ns > self.files.core_written_ns:
            return "changed: modified after the core was written"
        header = self.memory.read(vma.start, PAGE_SIZE) if vma.pgoff == 0 else None
        if header is not None and header[:4] == ELF_MAGIC:
            assert vma.path is not None
            if self.files.read(vma.path, 0, PAGE_SIZE) != header:
                return "changed: its ELF header differs from the core's copy"
        return None

    def _runs(self, image: Image) -> list[PageRun]:
        """Runs of the core's pages worth storing: none of the kernel's areas, no zero pages
        of anonymous memory, no file pages equal to the file's."""
        runs: list[PageRun] = []
        for vma in image.vmas:
            load = self.loads.get(vma.start)
            # Anonymous pages the core left out were never written (no anon_vma): zeros.
            if load is None or vma.name in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            start = None
            count = load.filesz // PAGE_SIZE
            for i in range(count + 1):
                keep = i < count and self._worth_storing(vma, load, i)
                if keep and start is None:
                    start = i
                elif not keep and start is not None:
                    runs.append(self._run(load, start, i - start))
                    start = None
        return runs

    def _run(self, load: _Load, first: int, count: int) -> PageRun:
        """Pages [first, first + count) of a segment, with the crc32 `img-info --verify`
        checks (a core has none of its own)."""
        offset = load.offset + first * PAGE_SIZE
        data = self.data[offset:offset + count * PAGE_SIZE]
        return PageRun(load.start + first * PAGE_SIZE, count, offset, PAGE_SIZE,
                       zlib.crc32(data))

    def _worth_storing(self, vma: Vma, load: _Load, index: int) -> bool:
        at = load.offset + index * PAGE_SIZE
        page = self.data[at:at + PAGE_SIZE]
        if not vma.is_file:
            return page != ZERO_PAGE
        assert vma.path is not None
        if vma.path in self.untrusted:
            return True
        return self.files.read(vma.path, vma.pgoff * PAGE_SIZE + index * PAGE_SIZE,
                               PAGE_SIZE) != page


def _live(path: str) -> str:
    return path.removesuffix(" (deleted)")


class _MmFields:
    """The mm fields a restore sets with PR_SET_MM_MAP, worked out as the kernel's ELF
    loader set them: code and data from the executable's program headers, brk from the
    heap, the argument and environment strings from the initial stack."""

    def __init__(self, image: Image, memory: _Memory, auxv_raw: bytes) -> None:
        self.image, self.memory, self.auxv_raw = image, memory, auxv_raw

    def fields(self) -> dict[str, int]:
        mm = {name: 0 for name in self.image.mm}
        layout = self._exe_layout()
        if layout is not None:
            elf_brk = layout.pop("elf_brk")
            mm.update(layout)
            mm.update(self._brk(elf_brk))
        mm.update(self._stack_fields())
        return mm

    def _exe_layout(self) -> dict[str, int] | None:
        image = self.image
        entry = dict(image.auxv).get(AT_ENTRY)
        if not image.exe_path or entry is None:
            return None
        try:
            with open_regular_file(image.exe_path) as f:
                elf = ELFFile(f)
                bias = entry - elf.header["e_entry"]
                loads = [s.header for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        except ELF_DAMAGE:  # unreadable, or not ELF: OSError included
            return None
        if not loads:
            return None
        code = [h["p_vaddr"] + h["p_filesz"] for h in loads if h["p_flags"] & PF_X]
        return {"start_code": bias + min(h["p_vaddr"] for h in loads),
                "end_code": bias + max(code or [0]),
                "start_data": bias + max(h["p_vaddr"] for h in loads),
                "end_data": bias + max(h["p_vaddr"] + h["p_filesz"] for h in loads),
                "elf_brk": bias + max(h["p_vaddr"] + h["p_memsz"] for h in loads)}

    def _brk(self, elf_brk: int) -> dict[str, int]:
        """The heap is the anonymous VMA reaching past the bss's end, up to the 1 GiB the
        kernel may randomise its start by; with none, brk is where the heap would start."""
        base = -(-elf_brk // PAGE_SIZE) * PAGE_SIZE
        for vma in sorted(self.image.vmas, key=lambda v: v.start):
            if (not vma.is_file and vma.name is None and vma.prot & PROT_WRITE
                    and vma.end > base and vma.start < base + BRK_RANDOM_RANGE):
                vma.name = "[heap]"
                return {"start_brk": max(base, vma.start), "brk": vma.end}
        return {"start_brk": base, "brk": base}

    def _stack_fields(self) -> dict[str, int]:
        """argc, argv[], NULL, envp[], NULL and the auxv lie in this order at start_stack;
        the auxv's bytes there are the NT_AUXV note's."""
        stack = next((v for v in self.image.vmas if v.name == "[stack]"), None)
        data = self.memory.read(stack.start, stack.size) if stack is not None else None
        if stack is None or data is None or len(self.auxv_raw) < 16:
            return {}
        at = data.find(self.auxv_raw)
        while at >= 0 and at % 8:
            at = data.find(self.auxv_raw, at + 1)
        if at < 16:
            return {}
        word = self.memory.u64
        envp_end = stack.start + at - 8  # the NULL ending envp
        envp = self._pointers_down_to(envp_end - 8, stack)
        argv_end = envp_end - 8 * (len(envp) + 1)
        argv = self._pointers_down_to(argv_end - 8, stack)
        start_stack = argv_end - 8 * (len(argv) + 1)
        if word(envp_end) != 0 or word(argv_end) != 0 or word(start_stack) != len(argv):
            return {}
        strings = [self.memory.string_end(p) for p in argv + envp]
        if None in strings:
            return {}
        ends: list[int] = [s for s in strings if s is not None]
        arg_end = ends[len(argv) - 1] if argv else (envp[0] if envp else start_stack)
        return {"start_stack": start_stack, "arg_start": argv[0] if argv else arg_end,
                "arg_end": arg_end, "env_start": arg_end,
                "env_end": ends[-1] if envp else arg_end}

    def _pointers_down_to(self, addr: int, stack: Vma) -> list[int]:
        """The non-NULL pointers into the stack from `addr` downwards, lowest first."""
        found = []
        while addr >= stack.start:
            value = self.memory.u64(addr)
            if not value or not stack.start <= value < stack.end:
                break
            found.append(value)
            addr -= 8
        return found[::-1]
