"""Writing an Image as an ELF core that stock GDB opens (`gdb EXE CORE`), as the kernel lays
one out: a PT_NOTE with the threads' registers, process info, auxv and mapped files, then a
PT_LOAD per VMA. File pages the image left out are left to the files, as the kernel does."""

from __future__ import annotations

import bisect
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from binfmt_img.errors import ImageError
from binfmt_img.formats.elfcore import (
    NT_AUXV,
    NT_FILE,
    NT_FPREGSET,
    NT_PRPSINFO,
    NT_PRSTATUS,
    NT_SIGINFO,
    NT_X86_XSTATE,
    PF_R,
    PF_W,
    PF_X,
    PRSTATUS,
    PRSTATUS_REGISTERS,
    SIGINFO_HEAD,
    XCR0_OFFSET,
)
from binfmt_img.formats.model import (
    PAGE_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    Image,
    PageRun,
    Thread,
    Vma,
)
from binfmt_img.safeio import open_regular

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
NOTE_HEADER = struct.Struct("<III")
PRPSINFO = struct.Struct("<BcBb4xQIIiiii16s80s")
ET_CORE, EM_X86_64, PT_LOAD, PT_NOTE = 4, 62, 1, 4
ELF_IDENT = b"\x7fELF\x02\x01\x01".ljust(16, b"\0")  # 64-bit, little-endian, version 1
PN_XNUM = 0xFFFF
NO_CONTENTS = ("[vvar]", "[vvar_vclock]", "[vsyscall]")  # the kernel's, unreadable
SIGINFO_SIZE = 128
# The area GDB (before 14) wants for each XSAVE component: it reads them at Intel's offsets
# and sizes the area by group (AVX, MPX, AVX-512, PKRU), warning when it is smaller.
INTEL_XSAVE_ENDS = {2: 832, 3: 1088, 4: 1088, 5: 2688, 6: 2688, 7: 2688, 9: 2696}
ONLY_IF_PRESENT = (1 << 3) | (1 << 4) | (1 << 9)  # MPX and PKRU: in the dumper's mask only
ZERO_PAGE = bytes(PAGE_SIZE)
CHUNK = 1 << 20


@dataclass
class CoreReport:
    segments: int = 0
    bytes: int = 0


def _note(name: str, kind: int, desc: bytes) -> bytes:
    raw = name.encode() + b"\0"
    return (NOTE_HEADER.pack(len(raw), len(desc), kind) + raw.ljust(-(-len(raw) // 4) * 4, b"\0")
            + desc.ljust(-(-len(desc) // 4) * 4, b"\0"))


def _prot_flags(prot: int) -> int:
    return ((PF_R if prot & PROT_READ else 0) | (PF_W if prot & PROT_WRITE else 0)
            | (PF_X if prot & PROT_EXEC else 0))


def _prstatus(image: Image, thread: Thread, first: bool) -> bytes:
    sig = image.signal if first else None
    regs = [thread.registers.get(name, 0) for name in PRSTATUS_REGISTERS]
    return PRSTATUS.pack(sig.number if sig else 0, sig.code if sig else 0,
                         sig.errno if sig else 0, sig.number if sig else 0, 0, thread.sigmask,
                         thread.tid, 0, 0, 0, *regs, int(thread.xsave is not None))


def _prpsinfo(image: Image) -> bytes:
    name = os.path.basename(image.exe_path or "")
    args = None
    start, end = image.mm.get("arg_start", 0), image.mm.get("arg_end", 0)
    if 0 < start < end:
        args = image.read(start, min(end - start, 80))
    psargs = (args or name.encode()).replace(b"\0", b" ").strip()[:79]
    return PRPSINFO.pack(0, b"R", 0, 0, 0, 0, 0, image.main.tid, 0, 0, 0,
                         name.encode()[:15], psargs)


def _siginfo(image: Image) -> bytes | None:
    sig = image.signal
    if sig is None:
        return None
    if len(sig.siginfo) == SIGINFO_SIZE:
        return sig.siginfo
    return SIGINFO_HEAD.pack(sig.number, sig.errno, sig.code, sig.address).ljust(
        SIGINFO_SIZE, b"\0")


def _auxv(image: Image) -> bytes:
    pairs = list(image.auxv)
    if not pairs or pairs[-1][0] != 0:
        pairs.append((0, 0))
    return b"".join(struct.pack("<QQ", t, v) for t, v in pairs)


def _nt_file(vmas: list[Vma]) -> bytes:
    files = [v for v in vmas if v.is_file]
    table = struct.pack("<QQ", len(files), PAGE_SIZE)
    table += b"".join(struct.pack("<QQQ", v.start, v.end, v.pgoff) for v in files)
    return table + b"".join((v.path or "").encode(errors="surrogateescape") + b"\0"
                            for v in files)


def _xstate(thread: Thread) -> bytes | None:
    """The XSAVE area with XCR0 where GDB reads it, claiming only components GDB finds
    inside the area (at Intel's offsets) and, for MPX and PKRU, only when they hold state."""
    xsave = thread.xsave
    if xsave is None or len(xsave.data) < 576:
        return None
    (present,) = struct.unpack_from("<Q", xsave.data, 512)
    claimed, size = 0x3, 576
    for bit, end in INTEL_XSAVE_ENDS.items():
        wanted = xsave.features >> bit & 1
        if (1 << bit) & ONLY_IF_PRESENT:
            wanted &= present >> bit
        if wanted and end <= len(xsave.data):
            claimed, size = claimed | 1 << bit, max(size, end)
    area = bytearray(xsave.data[:size])  # GDB wants exactly its size for the claimed XCR0
    struct.pack_into("<Q", area, XCR0_OFFSET, claimed)
    return bytes(area)


def notes(image: Image) -> bytes:
    """The PT_NOTE contents in the kernel's order: per thread NT_PRSTATUS, the process-wide
    notes after the first, then that thread's FPU notes."""
    out = []
    for i, thread in enumerate(image.threads):
        out.append(_note("CORE", NT_PRSTATUS, _prstatus(image, thread, i == 0)))
        if i == 0:
            out.append(_note("CORE", NT_PRPSINFO, _prpsinfo(image)))
            siginfo = _siginfo(image)
            if siginfo is not None:
                out.append(_note("CORE", NT_SIGINFO, siginfo))
            out.append(_note("CORE", NT_AUXV, _auxv(image)))
            out.append(_note("CORE", NT_FILE, _nt_file(image.vmas)))
        if thread.xsave is not None:
            out.append(_note("CORE", NT_FPREGSET, thread.xsave.data[:512].ljust(512, b"\0")))
        xstate = _xstate(thread)
        if xstate is not None:
            out.append(_note("LINUX", NT_X86_XSTATE, xstate))
    return b"".join(out)


class _Writer:
    def __init__(self, image: Image, out: BinaryIO) -> None:
        self.image, self.out = image, out
        self.starts = [run.vaddr for run in image.runs]

    def runs_in(self, vma: Vma) -> list[PageRun]:
        """The stored runs clipped to a VMA."""
        image = self.image
        i = max(0, bisect.bisect_right(self.starts, vma.start) - 1)
        clipped = []
        for run in image.runs[i:]:
            if run.vaddr >= vma.end:
                break
            piece = image.clip_run(run, vma.start, vma.end)
            if piece is not None:
                clipped.append(piece)
        return clipped

    def has_contents(self, vma: Vma, runs: list[PageRun]) -> bool:
        if vma.name in NO_CONTENTS or not vma.prot & PROT_READ:
            return False
        return bool(runs) or not vma.is_file  # unwritten file pages: GDB reads the file

    def put(self, at: int, data: bytes | memoryview, sparse: bool = True) -> None:
        """Write whole pages; zero pages over nothing written yet stay holes (sparse)."""
        view = memoryview(data).cast("B")
        for page in range(0, len(view), PAGE_SIZE):
            chunk = view[page:page + PAGE_SIZE]
            if not sparse or chunk != ZERO_PAGE[:len(chunk)]:
                self.out.seek(at + page)
                self.out.write(chunk)

    def contents(self, vma: Vma, runs: list[PageRun], at: int) -> None:
        if vma.is_file:
            self.file_pages(vma, at)  # under the stored pages, which overwrite them
        for run in runs:
            where = at + run.vaddr - vma.start
            for chunk in self.image.run_data(run):
                self.put(where, chunk, sparse=not vma.is_file)
                where += len(chunk)

    def file_pages(self, vma: Vma, at: int) -> None:
        try:
            fd = open_regular(vma.path or "")
        except OSError:
            return  # gone: those pages stay zeros
        try:
            for done in range(0, vma.size, CHUNK):
                size = min(CHUNK, vma.size - done)
                data = os.pread(fd, size, vma.pgoff * PAGE_SIZE + done)
                self.put(at + done, data.ljust(-(-len(data) // PAGE_SIZE) * PAGE_SIZE, b"\0"))
        finally:
            os.close(fd)

    def write(self) -> CoreReport:
        image = self.image
        vmas = sorted(image.vmas, key=lambda v: v.start)
        if len(vmas) + 1 >= PN_XNUM:
            raise ImageError(f"{len(vmas)} VMAs: too many for an ELF core's program headers")
        note = notes(image)
        headers_end = ELF_HEADER.size + PROGRAM_HEADER.size * (len(vmas) + 1)
        at = -(-(headers_end + len(note)) // PAGE_SIZE) * PAGE_SIZE
        phdrs = [PROGRAM_HEADER.pack(PT_NOTE, 0, headers_end, 0, 0, len(note), 0, 4)]
        for vma in vmas:
            runs = self.runs_in(vma)
            filesz = vma.size if self.has_contents(vma, runs) else 0
            phdrs.append(PROGRAM_HEADER.pack(PT_LOAD, _prot_flags(vma.prot), at, vma.start, 0,
                                             filesz, vma.size, PAGE_SIZE))
            if filesz:
                self.contents(vma, runs, at)
            at += filesz
        self.out.seek(0)
        self.out.write(ELF_HEADER.pack(ELF_IDENT, ET_CORE, EM_X86_64, 1, 0, ELF_HEADER.size, 0,
                                       0, ELF_HEADER.size, PROGRAM_HEADER.size, len(phdrs),
                                       64, 0, 0))
        self.out.write(b"".join(phdrs))
        self.out.write(note)
        self.out.truncate(at)
        return CoreReport(len(phdrs), at)


def write_core(path: str, image: Image) -> CoreReport:
    """Write `image` as an ELF core to a temporary file beside `path`, then rename it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".core-", dir=directory)
    try:
        with os.fdopen(fd, "w+b") as out:
            report = _Writer(image, out).write()
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return report
