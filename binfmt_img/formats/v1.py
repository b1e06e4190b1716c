"""Our own layout ("v1"): typed, checksummed sections and page-aligned runs of pages.

See docs/FORMAT.md for the byte layout; this module is its only implementation.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO

from construct import (
    Array,
    Const,
    ConstructError,
    GreedyBytes,
    Int8ul,
    Int32sl,
    Int32ul,
    Int64ul,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
)

from binfmt_img.errors import ImageError
from binfmt_img.formats import checksum, fastbuild, packed, pagedata
from binfmt_img.formats.crc import crc32 as page_crc32
from binfmt_img.formats.identity import ContentId, PackedFile
from binfmt_img.formats.model import (
    ALL_REGISTERS,
    MM_FIELDS,
    PAGE_SIZE,
    AltStack,
    BadRun,
    FileIdentity,
    Image,
    OpenFile,
    PageRun,
    SigAction,
    Signal,
    Thread,
    Vma,
    Xsave,
)
from binfmt_img.formats.v0 import MAGIC

VERSION = 0x00000200
# The same layout, some page runs compressed (binfmt_img.formats.packed): older readers refuse
# it by its version instead of reading frames as pages.
VERSION_COMPRESSED = 0x00000201
# Runs may also be LZ4 blocks (the top bit of a run record's `reserved`): img-dump --compress.
VERSION_LZ4 = 0x00000202
VERSIONS = (VERSION, VERSION_COMPRESSED, VERSION_LZ4)

SECTION_MM = 1
SECTION_VMAS = 2
SECTION_THREAD = 3
SECTION_SIGNALS = 4
SECTION_PAGE_RUNS = 5
SECTION_PAGE_DATA = 6
SECTION_STOP_SIGNAL = 7
SECTION_NAMES = {SECTION_MM: "mm", SECTION_VMAS: "vmas", SECTION_THREAD: "thread",
                 SECTION_SIGNALS: "signals", SECTION_PAGE_RUNS: "page runs",
                 SECTION_PAGE_DATA: "page data", SECTION_STOP_SIGNAL: "stop signal"}

Header = Struct(
    "magic" / Const(MAGIC, Int32ul),
    "version" / Int32ul,
    "section_count" / Int32ul,
    "table_crc" / Int32ul,
)
SectionEntry = Struct("type" / Int32ul, "crc" / Int32ul, "offset" / Int64ul, "length" / Int64ul)
HEADER_SIZE, ENTRY_SIZE = Header.sizeof(), SectionEntry.sizeof()

Text = PascalString(Int32ul, "utf8")

MmSection = Struct(
    "fields" / Array(len(MM_FIELDS), Int64ul),
    "exe_path" / Text,
    "auxv" / PrefixedArray(Int32ul, Struct("type" / Int64ul, "value" / Int64ul)),
)
VmaRecord = Struct(
    "start" / Int64ul, "end" / Int64ul, "pgoff" / Int64ul,
    "prot" / Int32ul, "flags" / Int32ul,
    "has_identity" / Int8ul,
    "size" / Int64ul, "mtime_ns" / Int64ul, "inode" / Int64ul, "device" / Int64ul,
    "path" / Text, "name" / Text,
)
VmasSection = PrefixedArray(Int32ul, VmaRecord)
_VMA_EMPTY = VmaRecord.build({"start": 0, "end": 0, "pgoff": 0, "prot": 0, "flags": 0,
                              "has_identity": 0, "size": 0, "mtime_ns": 0, "inode": 0,
                              "device": 0, "path": "", "name": ""})
ThreadSection = Struct(
    "tid" / Int32ul,
    "registers" / PrefixedArray(Int32ul, Int64ul),  # ALL_REGISTERS order; readers take a prefix
    "tls" / Array(3, Int64ul),
    "sigmask" / Int64ul,
    "altstack_sp" / Int64ul, "altstack_flags" / Int32sl, "altstack_size" / Int64ul,
    "clear_child_tid" / Int64ul, "robust_list" / Int64ul, "robust_list_len" / Int64ul,
    "xsave_features" / Int64ul,
    "xsave" / Prefixed(Int32ul, GreedyBytes),
)
SignalsSection = PrefixedArray(Int32ul, Struct(
    "handler" / Int64ul, "flags" / Int64ul, "restorer" / Int64ul, "mask" / Int64ul))
StopSignalSection = Struct(
    "number" / Int32ul, "code" / Int32sl, "errno" / Int32sl, "address" / Int64ul,
    "siginfo" / Prefixed(Int32ul, GreedyBytes),
)
# The process section: pid, working directory and the fd table (docs/FORMAT.md).
SECTION_PROCESS = 8
# Sections from here on hold one kind of process state each (binfmt_img.state: type
# SECTION_STATE_BASE + the kind's id), framed and checksummed like the others.
SECTION_STATE_BASE = 0x100
SECTION_NAMES[SECTION_PROCESS] = "process"
FileRecord = Struct(
    "fd" / Int32sl, "kind" / Int8ul, "flags" / Int32ul, "pos" / Int64ul,
    "has_identity" / Int8ul,
    "size" / Int64ul, "mtime_ns" / Int64ul, "inode" / Int64ul, "device" / Int64ul,
    "path" / Text,
)
ProcessSection = Struct(
    "pid" / Int32ul,
    "cwd" / Text,
    "files" / PrefixedArray(Int32ul, FileRecord),
)
# Mapped files by content (binfmt_img/formats/identity.py): one record per mapped path.
SECTION_CONTENTS = 0x20
SECTION_NAMES[SECTION_CONTENTS] = "file contents"
ContentsSection = PrefixedArray(Int32ul, Struct(
    "path" / Text,
    "build_id" / Prefixed(Int8ul, GreedyBytes),
    "algo" / Int8ul,
    "digest" / Prefixed(Int8ul, GreedyBytes),
))
# A mapped file carried in the image (img-dump --pack): one section per distinct content.
# Payload: u32 header length, the header, then the file's bytes. The section's crc covers
# the header; the bytes are checked against the digest when a restore uses them.
SECTION_PACKED = 0x21
SECTION_NAMES[SECTION_PACKED] = "packed file"
PackedHeader = Struct(
    "digest" / Prefixed(Int8ul, GreedyBytes),
    "size" / Int64ul,
    "paths" / PrefixedArray(Int32ul, Text),
    "blob" / Text,  # a checkpoint store's blob holding the bytes, which then do not follow
)
HEADER_LENGTH = struct.Struct("<I")
RUN_RECORD = struct.Struct("<QQQII")  # vaddr, page count, file offset, crc32, reserved
RUN_COUNT = struct.Struct("<I")

# One section per thread and per state kind: enough for validate.MAX_THREADS threads.
MAX_SECTIONS = 8192
ZERO_PAGE = bytes(PAGE_SIZE)


def _entry_checked(buf: memoryview, entry, what: str) -> memoryview:
    end = entry.offset + entry.length
    if end > len(buf):
        raise ImageError(f"truncated {what} section: ends at {end:#x}, file is {len(buf):#x}",
                         entry.offset)
    payload = buf[entry.offset:end]
    if entry.type != SECTION_PAGE_DATA and zlib.crc32(payload) != entry.crc:
        raise ImageError(f"checksum mismatch in {what} section", entry.offset)
    return payload


def _parse(record: Struct, payload: memoryview, offset: int, what: str):
    try:
        return fastbuild.parse(record, bytes(payload))
    except (ConstructError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0][:120]
        raise ImageError(f"malformed {what} section: {reason}", offset) from None


def read(buf: memoryview) -> tuple[Image, dict[str, list[int]]]:
    """Parse a v1 image; returns it with the byte offset of each VMA and page run record."""
    if len(buf) < HEADER_SIZE:
        raise ImageError("truncated header", 0)
    header = Header.parse(bytes(buf[:HEADER_SIZE]))
    if header.version not in VERSIONS:
        raise ImageError(f"unknown image version {header.version:#x}", 4)
    table_end = HEADER_SIZE + header.section_count * ENTRY_SIZE
    if table_end > len(buf):
        raise ImageError(f"truncated section table: {header.section_count} entries", HEADER_SIZE)
    table = buf[HEADER_SIZE:table_end]
    if zlib.crc32(table) != header.table_crc:
        raise ImageError("checksum mismatch in section table", HEADER_SIZE)

    if header.section_count > MAX_SECTIONS:  # a thread is a section: bound the parse
        raise ImageError(f"section table of {header.section_count} entries, more than "
                         f"{MAX_SECTIONS}", HEADER_SIZE)
    image = Image(format="v1", threads=[], source=buf)
    offsets: dict[str, list[int]] = {"vmas": [], "runs": []}
    seen: set[int] = set()
    for i in range(header.section_count):
        entry = SectionEntry.parse(bytes(table[i * ENTRY_SIZE:(i + 1) * ENTRY_SIZE]))
        if entry.type >= SECTION_STATE_BASE:
            payload = _entry_checked(buf, entry, f"state section {entry.type:#x}")
            image.raw_states.append((entry.type, entry.offset, bytes(payload)))
            continue
        if entry.type not in SECTION_NAMES:
            continue  # a later version's section: skip it
        what = SECTION_NAMES[entry.type]
        if entry.type == SECTION_PACKED:
            image.packed.append(_read_packed(buf, entry))
            continue
        if entry.type != SECTION_THREAD and entry.type in seen:
            raise ImageError(f"second {what} section", HEADER_SIZE + i * ENTRY_SIZE)
        seen.add(entry.type)
        payload = _entry_checked(buf, entry, what)
        if entry.type == SECTION_MM:
            _read_mm(image, _parse(MmSection, payload, entry.offset, what))
        elif entry.type == SECTION_VMAS:
            _read_vmas(image, _parse(VmasSection, payload, entry.offset, what), entry.offset,
                       offsets)
        elif entry.type == SECTION_THREAD:
            image.threads.append(_read_thread(_parse(ThreadSection, payload, entry.offset, what)))
        elif entry.type == SECTION_SIGNALS:
            image.sigactions = [SigAction(s.handler, s.flags, s.restorer, s.mask)
                                for s in _parse(SignalsSection, payload, entry.offset, what)]
        elif entry.type == SECTION_PAGE_RUNS:
            _read_runs(image, payload, entry.offset, offsets, header.version)
        elif entry.type == SECTION_PROCESS:
            _read_process(image, _parse(ProcessSection, payload, entry.offset, what))
        elif entry.type == SECTION_CONTENTS:
            image.contents = {r.path: ContentId(bytes(r.build_id), r.algo, bytes(r.digest))
                              for r in _parse(ContentsSection, payload, entry.offset, what)}
        elif entry.type == SECTION_STOP_SIGNAL:
            rec = _parse(StopSignalSection, payload, entry.offset, what)
            image.signal = Signal(rec.number, rec.code, rec.errno, rec.address,
                                  bytes(rec.siginfo))
    for needed in (SECTION_MM, SECTION_VMAS, SECTION_THREAD, SECTION_PAGE_RUNS):
        if needed not in seen:
            raise ImageError(f"no {SECTION_NAMES[needed]} section", HEADER_SIZE)
    return image, offsets


def _read_packed(buf: memoryview, entry) -> PackedFile:
    """A packed file's header; its bytes stay in the image file until a restore needs them."""
    what = "packed file"
    end = entry.offset + entry.length
    if end > len(buf) or entry.length < HEADER_LENGTH.size:
        raise ImageError(f"truncated {what} section", entry.offset)
    (length,) = HEADER_LENGTH.unpack_from(buf, entry.offset)
    start = entry.offset + HEADER_LENGTH.size
    if length > entry.length - HEADER_LENGTH.size:
        raise ImageError(f"malformed {what} section: header of {length} bytes", entry.offset)
    head = buf[start:start + length]
    if zlib.crc32(head) != entry.crc:
        raise ImageError(f"checksum mismatch in {what} section", entry.offset)
    rec = _parse(PackedHeader, head, entry.offset, what)
    carried = 0 if rec.blob else rec.size
    if start + length + carried != end or not rec.paths:
        raise ImageError(f"malformed {what} section: {carried} bytes in "
                         f"{entry.length - length - HEADER_LENGTH.size}", entry.offset)
    return PackedFile(bytes(rec.digest), rec.size, list(rec.paths),
                      -1 if rec.blob else start + length, blob=rec.blob)


def _packed_payload(image: Image, packed: PackedFile) -> tuple[bytes, int]:
    """(payload, crc of the header) of one packed file section."""
    blob = packed.blob if packed.by_reference else ""
    head = PackedHeader.build({"digest": packed.digest, "size": packed.size,
                               "paths": packed.paths, "blob": blob})
    data = b"" if blob else packed.data(image)
    return HEADER_LENGTH.pack(len(head)) + head + data, zlib.crc32(head)


def _read_mm(image: Image, mm) -> None:
    image.mm = dict(zip(MM_FIELDS, mm.fields))
    image.exe_path = mm.exe_path or None
    image.auxv = [(a.type, a.value) for a in mm.auxv]


def _read_vmas(image: Image, records, section_offset: int, offsets: dict[str, list[int]]) -> None:
    at = section_offset + 4
    # A record's length: the fixed fields and the two strings' length prefixes, then their
    # bytes (the strings were decoded from utf8, so they encode back to the same length).
    fixed = len(_VMA_EMPTY)
    vmas, starts = image.vmas, offsets["vmas"]
    for rec in records:  # a Container is a dict: items, quicker than attributes
        path, name = rec["path"], rec["name"]
        identity = (FileIdentity(rec["size"], rec["mtime_ns"], rec["inode"], rec["device"])
                    if rec["has_identity"] else None)
        vmas.append(Vma(start=rec["start"], end=rec["end"], prot=rec["prot"],
                        flags=rec["flags"], pgoff=rec["pgoff"], path=path or None,
                        name=name or None, file=identity))
        starts.append(at)
        at += fixed + (len(path.encode()) if path else 0) + (len(name.encode()) if name else 0)


def _read_process(image: Image, rec) -> None:
    image.pid, image.cwd = rec.pid, rec.cwd or None
    image.files = [OpenFile(fd=f.fd, kind=f.kind, path=f.path, flags=f.flags, pos=f.pos,
                            file=FileIdentity(f.size, f.mtime_ns, f.inode, f.device)
                            if f.has_identity else None) for f in rec.files]


def _process_record(image: Image) -> bytes:
    files = []
    for f in image.files or []:
        ident = f.file
        files.append({"fd": f.fd, "kind": f.kind, "flags": f.flags, "pos": f.pos,
                      "has_identity": int(ident is not None),
                      "size": ident.size if ident else 0,
                      "mtime_ns": ident.mtime_ns if ident else 0,
                      "inode": ident.inode if ident else 0,
                      "device": ident.device if ident else 0, "path": f.path})
    return ProcessSection.build({"pid": image.pid, "cwd": image.cwd or "", "files": files})


def _read_thread(rec) -> Thread:
    registers = dict(zip(ALL_REGISTERS, rec.registers))
    xsave = Xsave(rec.xsave_features, bytes(rec.xsave)) if rec.xsave else None
    return Thread(tid=rec.tid, registers=registers, tls=list(rec.tls), xsave=xsave,
                  sigmask=rec.sigmask,
                  altstack=AltStack(rec.altstack_sp, rec.altstack_flags, rec.altstack_size),
                  clear_child_tid=rec.clear_child_tid, robust_list=rec.robust_list,
                  robust_list_len=rec.robust_list_len)


def _read_runs(image: Image, payload: memoryview, section_offset: int,
               offsets: dict[str, list[int]], version: int = VERSION) -> None:
    compressed = version != VERSION
    if len(payload) < 4:
        raise ImageError("truncated page runs section", section_offset)
    (count,) = RUN_COUNT.unpack_from(payload, 0)
    if 4 + count * RUN_RECORD.size != len(payload):
        raise ImageError(f"page runs section holds {len(payload)} bytes for {count} runs",
                         section_offset)
    size = len(image.source) if image.source is not None else 0
    runs = image.runs
    stored: list[packed.StoredRun] = []
    for i, (vaddr, pages, offset, crc, length) in enumerate(
            RUN_RECORD.iter_unpack(payload[4:])):
        at = section_offset + 4 + i * RUN_RECORD.size
        if compressed:
            lz4 = bool(length & packed.LZ4_BIT)
            if lz4 and version != VERSION_LZ4:
                raise ImageError(f"page run {vaddr:#x} marked LZ4 in a version {version:#x} "
                                 "image", at)
            length &= packed.LENGTH_MASK
            if lz4 and not length:
                raise ImageError(f"page run {vaddr:#x}: an LZ4 block of 0 bytes", at)
            run = packed.StoredRun(vaddr, pages, offset, crc, length, lz4)
            if length and not 0 < pages <= packed.RUN_PAGES:
                raise ImageError(f"compressed page run {vaddr:#x} of {pages} pages (at most "
                                 f"{packed.RUN_PAGES})", at)
            if length and offset + length > size:
                raise ImageError(f"compressed page run {vaddr:#x}: {length} bytes at "
                                 f"{offset:#x} overrun the file", at)
            stored.append(run)
            offsets["runs"].append(at)
            if length:
                continue
        elif length:
            raise ImageError(f"page run {vaddr:#x} marked compressed in a version "
                             f"{VERSION:#x} image", at)
        if offset % PAGE_SIZE:
            raise ImageError(f"page run {vaddr:#x}: data offset {offset:#x} not page aligned", at)
        if pages == 0 or offset + pages * PAGE_SIZE > size:
            raise ImageError(f"page run {vaddr:#x}: {pages} pages at {offset:#x} overrun the file",
                             at)
        if not compressed:
            runs.append(PageRun(vaddr, pages, offset, PAGE_SIZE, crc))
            offsets["runs"].append(at)
    if compressed:  # every run read through the reader, in its page space
        image.reader = packed.RunReader(image, stored)
        image.runs[:] = image.reader.runs()


def verify_pages(image: Image) -> list[BadRun]:
    """The runs whose stored checksum does not match their bytes, or whose frames do not
    decode to exactly their pages (packed.RunReader.bad_runs). A file is read through one
    reused buffer: checksumming its mapping would fault in every page, several times slower."""
    bad_runs = getattr(image.reader, "bad_runs", None)  # a RunReader, a store's reader
    if bad_runs is not None:
        return bad_runs()
    checked = [run for run in image.runs if run.checksum is not None]
    if not checked:
        return []
    assert image.source is not None
    if image.fd is None:
        bad = [run for run in checked if page_crc32(
            image.source[run.offset:run.offset + run.count * PAGE_SIZE]) != run.checksum]
    else:  # the very file the restore will read its pages from, on two threads
        crcs = checksum.file_ranges(image.fd, [(run.offset, run.count * PAGE_SIZE)
                                               for run in checked])
        bad = [run for run, crc in zip(checked, crcs) if crc != run.checksum]
    return [BadRun(run.vaddr, run.count, run.offset, run.stride, run.checksum) for run in bad]


def _file_backed(image: Image) -> Callable[[int], bool]:
    """Whether an address lies in a file mapping, where a missing page means the file's bytes."""
    spans = sorted((v.start, v.end) for v in image.vmas if v.is_file)
    starts = [start for start, _ in spans]

    def inside(addr: int) -> bool:
        i = bisect.bisect_right(starts, addr) - 1
        return i >= 0 and addr < spans[i][1]
    return inside


def write(out: BinaryIO, image: Image, pages: Iterable[tuple[int, memoryview | bytes]],
          write_data: Callable[[int, list[memoryview]], None] | None = None,
          compress: bool | str = False) -> None:
    """Write `image` as v1 to a seekable file; `pages` gives (vaddr, data) chunks of whole pages.
    `write_data(offset, views)` stores page data (views that follow each other in the file
    from `offset`; page-aligned offsets and lengths) when the caller has a faster way than
    `out`, such as O_DIRECT. `compress`: runs of pages as frames where that pays, "zstd"
    (or True; version 0x201) or "lz4" (0x202 when a run is an LZ4 block; see
    binfmt_img.formats.packed). binfmt_img.formats.pagedata does the pages."""
    codec = "zstd" if compress is True else compress or None
    metadata = [(SECTION_MM, MmSection.build({
        "fields": [image.mm.get(f, 0) for f in MM_FIELDS],
        "exe_path": image.exe_path or "",
        "auxv": [{"type": t, "value": v} for t, v in image.auxv]}))]
    metadata.append((SECTION_VMAS, fastbuild.build(VmasSection,
                                                    [_vma_record(v) for v in image.vmas])))
    for thread in image.threads:
        metadata.append((SECTION_THREAD, _thread_record(thread)))
    metadata.append((SECTION_SIGNALS, SignalsSection.build(
        [{"handler": s.handler, "flags": s.flags, "restorer": s.restorer, "mask": s.mask}
         for s in image.sigactions])))
    if image.signal is not None:
        sig = image.signal
        metadata.append((SECTION_STOP_SIGNAL, StopSignalSection.build(
            {"number": sig.number, "code": sig.code, "errno": sig.errno,
             "address": sig.address, "siginfo": sig.siginfo})))

    if image.files is not None:
        metadata.append((SECTION_PROCESS, _process_record(image)))
    if image.contents:
        metadata.append((SECTION_CONTENTS, ContentsSection.build(
            [{"path": path, "build_id": c.build_id, "algo": c.algo, "digest": c.digest}
             for path, c in sorted(image.contents.items())])))
    for section, _offset, payload in image.raw_states:
        metadata.append((section, payload))

    entries: list[tuple[int, int, int, int]] = []  # type, crc, offset, length
    table_size = (len(metadata) + len(image.packed) + 2) * ENTRY_SIZE
    at = HEADER_SIZE + table_size
    out.seek(at)
    for kind, payload in metadata:
        out.write(payload)
        entries.append((kind, zlib.crc32(payload), at, len(payload)))
        at += len(payload)
    for carried in image.packed:  # one at a time: a large file is not held with the others
        payload, crc = _packed_payload(image, carried)
        out.write(payload)
        entries.append((SECTION_PACKED, crc, at, len(payload)))
        at += len(payload)

    data_start = -(-at // PAGE_SIZE) * PAGE_SIZE
    out.write(bytes(data_start - at))
    out.flush()
    at = data_start
    if write_data is None:
        write_data = _positioned(out)
    keep_zero = _file_backed(image)
    if codec:
        at, runs = pagedata.compressed(pages, keep_zero, at, write_data, codec=codec)
    else:
        at, runs = pagedata.plain(pages, keep_zero, at, write_data)
    run_table = b"".join(RUN_RECORD.pack(*run) for run in runs)
    entries.append((SECTION_PAGE_DATA, 0, data_start, at - data_start))
    out.seek(at)
    runs_payload = RUN_COUNT.pack(len(runs)) + run_table
    out.write(runs_payload)
    entries.append((SECTION_PAGE_RUNS, zlib.crc32(runs_payload), at, len(runs_payload)))

    table = b"".join(SectionEntry.build({"type": t, "crc": c, "offset": o, "length": n})
                     for t, c, o, n in entries)
    out.seek(0)
    version = VERSION
    if codec:  # an image of zstd frames (or raw runs only) stays readable by 0x201 readers
        lz4 = any(run[4] & packed.LZ4_BIT for run in runs)
        version = VERSION_LZ4 if lz4 else VERSION_COMPRESSED
    out.write(Header.build({"version": version,
                            "section_count": len(entries), "table_crc": zlib.crc32(table)}))
    out.write(table)


def _positioned(out: BinaryIO) -> Callable[[int, list[memoryview]], None]:
    def write_at(offset: int, views: list[memoryview]) -> None:
        out.seek(offset)
        for view in views:
            out.write(view)
    return write_at


def _vma_record(vma: Vma) -> dict:
    ident = vma.file
    return {"start": vma.start, "end": vma.end, "pgoff": vma.pgoff, "prot": vma.prot,
            "flags": vma.flags, "has_identity": int(ident is not None),
            "size": ident.size if ident else 0, "mtime_ns": ident.mtime_ns if ident else 0,
            "inode": ident.inode if ident else 0, "device": ident.device if ident else 0,
            "path": vma.path or "", "name": vma.name or ""}


def _thread_record(thread: Thread) -> bytes:
    regs = thread.registers
    xsave = thread.xsave
    return ThreadSection.build({
        "tid": thread.tid,
        "registers": [regs.get(name, 0) for name in ALL_REGISTERS],
        "tls": (list(thread.tls) + [0, 0, 0])[:3],
        "sigmask": thread.sigmask,
        "altstack_sp": thread.altstack.sp, "altstack_flags": thread.altstack.flags,
        "altstack_size": thread.altstack.size,
        "clear_child_tid": thread.clear_child_tid, "robust_list": thread.robust_list,
        "robust_list_len": thread.robust_list_len,
        "xsave_features": xsave.features if xsave else 0,
        "xsave": xsave.data if xsave else b"",
    })
