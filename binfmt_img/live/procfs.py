"""What /proc/PID tells about a local inferior: its mappings, pages present, mm fields."""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from binfmt_img.live.target import Target


@dataclass
class Mapping:
    start: int
    end: int
    perms: str  # "r-xp"
    offset: int
    device: str
    inode: int
    path: str  # "" for anonymous, "[vdso]" for special areas

    @property
    def prot(self) -> int:
        return ((PROT_READ if self.perms[0] == "r" else 0) | (PROT_WRITE if self.perms[1] == "w"
                else 0) | (PROT_EXEC if self.perms[2] == "x" else 0))

    @property
    def shared_object(self) -> str | None:
        """The kind of in-memory object behind the mapping, whose contents no file on disk
        holds: "anon" (MAP_SHARED|MAP_ANONYMOUS, shown as /dev/zero), "memfd", "sysv"."""
        if self.inode == 0 or not self.device.startswith("00:"):
            return None  # these live on the kernel's internal shmem mount (major 0)
        if self.path == "/dev/zero (deleted)" and self.perms[3] == "s":
            return "anon"
        if self.path.startswith("/memfd:"):
            return "memfd"
        if self.path.startswith("/SYSV"):
            return "sysv"
        return None

    @property
    def is_file(self) -> bool:
        return (self.inode != 0 and not self.path.startswith("[")
                and self.shared_object is None)

    @property
    def flags(self) -> int:
        sharing = MAP_SHARED if self.perms[3] == "s" else MAP_PRIVATE
        return sharing | (0 if self.is_file else MAP_ANONYMOUS)

    @property
    def special(self) -> str | None:
        return self.path if self.path.startswith("[") else None


def read_maps(pid: int) -> list[Mapping]:
    with open(f"/proc/{pid}/maps") as f:
        return parse_maps(f.read())


def parse_maps(text: str) -> list[Mapping]:
    out = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        path = fields[5] if len(fields) > 5 else ""
        out.append(Mapping(start, end, fields[1], int(fields[2], 16), fields[3],
                           int(fields[4]), path))
    return out


def proc_file(target: Target, pid: int, name: str) -> bytes:
    """/proc/PID/NAME of the inferior wherever it runs: through the target when it can
    fetch files (a remote one), else from this machine's /proc."""
    if not target.is_local():
        fetch = getattr(target, "read_proc", None)
        if fetch is None:
            raise RestoreError("the inferior is remote and this debugger's adapter cannot "
                               "read its /proc")
        return fetch(name)
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


PM_PRESENT, PM_SWAPPED, PM_FILE = 1 << 63, 1 << 62, 1 << 61
PM_GUARD = 1 << 58  # a guard region's marker (MADV_GUARD_INSTALL; pagemap.rst, 6.15+)


def read_smaps_flags(pid: int) -> dict[int, list[str]]:
    """The VmFlags two-letter codes of every mapping, by its start address. One regex pass
    over the whole file: smaps has some twenty lines per mapping, VmFlags is the last."""
    with open(f"/proc/{pid}/smaps", "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    return {int(start, 16): codes.split()
            for start, codes in _SMAPS_FLAGS.findall(text)}


# A mapping's head line (start-end perms ...) and the VmFlags line that closes its block.
_SMAPS_FLAGS = re.compile(r"^([0-9a-f]+)-[0-9a-f]+ [^\n]*\n(?:(?!VmFlags:)[^\n]*\n)*?"
                          r"VmFlags:([^\n]*)$", re.M)

# The flag bits above sit in each entry's top byte: one byte per page says all we need.
_TOP = {PM_PRESENT: 0x80, PM_SWAPPED: 0x40, PM_FILE: 0x20, PM_GUARD: 0x04}
_OPEN: dict[int, int] = {}  # pid -> an open /proc/PID/pagemap, inside pagemap_session()


@contextmanager
def pagemap_session(pid: int) -> Iterator[None]:
    """Keep /proc/PID/pagemap open for the page queries made meanwhile (a dump makes one per
    mapping per question: opening it each time cost more than reading it)."""
    if pid in _OPEN:
        yield
        return
    _OPEN[pid] = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        yield
    finally:
        os.close(_OPEN.pop(pid))


def _top_bytes(pid: int, start: int, end: int) -> bytes:
    """The top byte of each page's pagemap entry from start to end."""
    count = (end - start) >> 12
    fd = _OPEN.get(pid)
    if fd is not None:
        raw = os.pread(fd, count * 8, (start >> 12) * 8)
    else:
        with open(f"/proc/{pid}/pagemap", "rb") as f:
            raw = os.pread(f.fileno(), count * 8, (start >> 12) * 8)
    return raw[7::8]


def _table(keep: Callable[[int], bool]) -> bytes:
    return bytes(1 if keep(b) else 0 for b in range(256))


_GUARD = _table(lambda b: bool(b & _TOP[PM_GUARD]))
_READABLE = _table(lambda b: not b & _TOP[PM_GUARD])
_RESIDENT = _table(lambda b: bool(b & 0xC0) and not b & _TOP[PM_GUARD])
_RESIDENT_ANON = _table(lambda b: bool(b & 0xC0) and not b & (_TOP[PM_GUARD] | _TOP[PM_FILE]))
_RUN = re.compile(b"\x01+")


def _page_runs(pid: int, start: int, end: int, table: bytes) -> list[tuple[int, int]]:
    """(vaddr, count) of the consecutive pages whose top byte `table` maps to 1: found by
    the regex engine, not a Python loop per page (a 1 GiB process has 262,144)."""
    keep = _top_bytes(pid, start, end).translate(table)
    return [(start + (m.start() << 12), m.end() - m.start()) for m in _RUN.finditer(keep)]


def guard_pages(pid: int, start: int, end: int) -> list[tuple[int, int]]:
    """Runs (vaddr, count) of guard pages: they fault on any access, reads included."""
    return _page_runs(pid, start, end, _GUARD)


def guard_pages_of(pid: int, ranges: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """guard_pages for each of `ranges` (sorted): neighbouring ranges are read as one span,
    and a span without a guard marker is done with one search."""
    out: list[list[tuple[int, int]]] = []
    i = 0
    while i < len(ranges):
        j = i + 1
        while j < len(ranges) and ranges[j][0] == ranges[j - 1][1]:
            j += 1
        start, end = ranges[i][0], ranges[j - 1][1]
        keep = _top_bytes(pid, start, end).translate(_GUARD)
        if b"\x01" not in keep:
            out += [[] for _ in range(i, j)]
        else:
            out += [[(start + (m.start() << 12), m.end() - m.start())
                     for m in _RUN.finditer(keep, (s - start) >> 12, (e - start) >> 12)]
                    for s, e in ranges[i:j]]
        i = j
    return out


def readable_pages(pid: int, start: int, end: int) -> list[tuple[int, int]]:
    """Every page of the range except guard pages."""
    return _page_runs(pid, start, end, _READABLE)


def object_pages(pid: int, m: Mapping) -> list[tuple[int, int]] | None:
    """Runs (vaddr, count) of an in-memory shared object's mapping where the object holds
    data (SEEK_DATA on /proc/PID/map_files, which counts swapped-out pages as data): reading
    its holes through the mapping would allocate them in the inferior. None when map_files
    cannot be opened (it needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)."""
    try:
        fd = os.open(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", os.O_RDONLY)
    except OSError:
        return None
    runs: list[tuple[int, int]] = []
    try:
        pos, end = m.offset, m.offset + m.end - m.start
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: no data after pos
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            first, last = data & ~0xFFF, (hole + 0xFFF) & ~0xFFF
            if first >= end:
                break
            runs.append((m.start + first - m.offset, (last - first) >> 12))
            pos = last
    except OSError:
        return None
    finally:
        os.close(fd)
    return runs


def resident_pages(pid: int, start: int, end: int, skip_file_pages: bool) -> list[tuple[int, int]]:
    """Runs (vaddr, count) of pages that hold data: present or swapped (a guard page's marker
    counts as swapped: left out), and, where asked, not a page still shared with its file
    (never written by the process)."""
    return _page_runs(pid, start, end, _RESIDENT_ANON if skip_file_pages else _RESIDENT)


def stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat, numbered as proc(5) does (index 1 is the pid)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    tail = text[text.rindex(")") + 2:].split()
    return ["", text.split()[0], "comm"] + tail


def read_auxv(pid: int) -> list[tuple[int, int]]:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        return parse_auxv(f.read())


def parse_auxv(raw: bytes) -> list[tuple[int, int]]:
    usable = len(raw) - len(raw) % 16
    return list(struct.iter_unpack("<QQ", raw[:usable]))


class ProcMem:
    """Bulk reads and writes of a local inferior's memory through /proc/PID/mem."""

    def __init__(self, pid: int, writable: bool) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if writable else os.O_RDONLY)

    def write(self, addr: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, addr)
            if done <= 0:  # the process is gone (its mm torn down): no progress is possible
                raise OSError(f"the inferior's memory at {addr:#x} can no longer be written "
                              "(has the process exited?)")
            view, addr = view[done:], addr + done

    def writev(self, addr: int, chunks: list[memoryview]) -> None:
        for at in range(0, len(chunks), 512):
            part = chunks[at:at + 512]
            done = os.pwritev(self.fd, part, addr)
            if done != sum(len(c) for c in part):
                self.write(addr, b"".join(part))  # a short write: finish it plainly
            addr += sum(len(c) for c in part)

    def read(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = os.pread(self.fd, size - len(out), addr + len(out))
            if not chunk:
                raise OSError(f"short read at {addr + len(out):#x}")
            out += chunk
        return bytes(out)

    def read_into(self, addr: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], addr + done)
            if got <= 0:
                raise OSError(f"short read at {addr + done:#x}")
            done += got

    def close(self) -> None:
        os.close(self.fd)


def holders(links: set[str], excluded: set[int]) -> dict[str, str]:
    """Which process, other than those `excluded`, holds each of these descriptors (a link of
    /proc/PID/fd/N such as "pipe:[1234]"), as "process 77 (cat)"."""
    found: dict[str, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in excluded:
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{name}/fd/{fd}")
            except OSError:
                continue
            if link in links and link not in found:
                found[link] = f"process {name} ({_comm(name)})"
    return found


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"
