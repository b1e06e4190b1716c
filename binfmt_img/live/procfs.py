"""What /proc/PID tells about a local inferior: its mappings, pages present, mm fields."""

from __future__ import annotations

import os
import struct
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
    """The VmFlags two-letter codes of every mapping, by its start address."""
    out: dict[int, list[str]] = {}
    start = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                start = int(head.split("-")[0], 16)
            elif head == "VmFlags:" and start is not None:
                out[start] = line.split()[1:]
    return out


def _pagemap(pid: int, start: int, end: int) -> tuple[int, ...]:
    count = (end - start) >> 12
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        raw = os.pread(f.fileno(), count * 8, (start >> 12) * 8)
    return struct.unpack(f"<{len(raw) // 8}Q", raw)


def _runs(start: int, keep: list[bool]) -> list[tuple[int, int]]:
    """(vaddr, count) of the consecutive pages from `start` where keep is true."""
    runs: list[tuple[int, int]] = []
    run_start = None
    for i, wanted in enumerate(keep + [False]):
        if wanted and run_start is None:
            run_start = i
        elif not wanted and run_start is not None:
            runs.append((start + (run_start << 12), i - run_start))
            run_start = None
    return runs


def guard_pages(pid: int, start: int, end: int) -> list[tuple[int, int]]:
    """Runs (vaddr, count) of guard pages: they fault on any access, reads included."""
    return _runs(start, [bool(e & PM_GUARD) for e in _pagemap(pid, start, end)])


def readable_pages(pid: int, start: int, end: int) -> list[tuple[int, int]]:
    """Every page of the range except guard pages."""
    return _runs(start, [not e & PM_GUARD for e in _pagemap(pid, start, end)])


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
    return _runs(start, [bool(e & (PM_PRESENT | PM_SWAPPED)) and not e & PM_GUARD
                         and not (skip_file_pages and e & PM_FILE)
                         for e in _pagemap(pid, start, end)])


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
