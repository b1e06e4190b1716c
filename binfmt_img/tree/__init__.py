"""Process trees: a process and its descendants checkpointed and restored together.

A tree image is the root process's image (FILE) holding the "tree" state (kind 60,
binfmt_img/state/tree.py), plus one ordinary image per live descendant beside it
(FILE.PID), each named in the record with its SHA-256. The record holds the tree's shape
(pid, parent, process group, session of every process, zombies with their wait status) and
what the processes share: every pipe whose ends are all inside the tree, once, with its
buffered bytes and each holder's (pid, fd, flags). See docs/TREES.md.

This package knows no debugger: it reads /proc (the shape, the pipes) and describes what
each process must do at the restore (TreeContext). gdb_img/tree.py drives the debugger.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from construct import (
    Bytes,
    GreedyBytes,
    Int8ul,
    Int32sl,
    Int32ul,
    Int64ul,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
    VarInt,
)

from binfmt_img.errors import ImageError
from binfmt_img.live.pids import NS_LAST_PID
from binfmt_img.live.procfs import holders, read_maps, stat_fields

ProcessRecord = Struct(
    "pid" / Int32ul,
    "ppid" / Int32ul,
    "pgid" / Int32ul,
    "sid" / Int32ul,
    "zombie" / Int8ul,
    "status" / Int32sl,  # a zombie's wait status (as waitpid gives it)
    "image" / PascalString(VarInt, "utf8"),  # FILE.PID's name, "" for the root and zombies
    "digest" / Bytes(32),  # SHA-256 of that file
    "comm" / PascalString(VarInt, "utf8"),
    # Shared memory mapped as its parent has it (the same object at the same addresses):
    # inherited again from the restored parent, so that it stays one object.
    "inherited" / PrefixedArray(VarInt, Struct("start" / Int64ul, "end" / Int64ul)),
)
PipeEnd = Struct("pid" / Int32ul, "fd" / Int32ul, "flags" / Int32ul)
PipeRecord = Struct(
    "inode" / Int64ul,
    "path" / PascalString(VarInt, "utf8"),  # a FIFO's path; "" for a pipe
    "size" / Int32ul,  # capacity (F_GETPIPE_SZ)
    "data" / Prefixed(VarInt, GreedyBytes),  # the bytes buffered at the checkpoint
    "ends" / PrefixedArray(VarInt, PipeEnd),
)
Messages = PrefixedArray(VarInt, Prefixed(VarInt, GreedyBytes))
SocketEnd = Struct("pid" / Int32ul, "fd" / Int32ul, "flags" / Int32ul, "side" / Int8ul)
SocketRecord = Struct(
    "inodes" / Int64ul[2],  # the pair's two sockets (sides 0 and 1)
    "type" / Int32ul,  # SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET
    "queued" / Messages[2],  # what is queued to be read at each side
    "ends" / PrefixedArray(VarInt, SocketEnd),
)
Record = Struct(
    "root" / Int32ul,
    "processes" / PrefixedArray(VarInt, ProcessRecord),  # the root first, parents first
    "pipes" / PrefixedArray(VarInt, PipeRecord),
    "sockets" / PrefixedArray(VarInt, SocketRecord),  # unix socket pairs between processes
)

O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
SOCKET_TYPES = (1, 2, 5)
MAX_QUEUED = 1 << 26
MAX_FD = 1 << 20
MAX_PROCESSES = 4096
# The root's record, handed to the state kind's dump (which runs inside dump()).
PENDING: dict[int, dict] = {}
# Socket ends whose queued data a process's own dump peeks at (only the process can):
# pid -> [(fd, type, key)]; the messages land in PEEKED[key].
PEEK: dict[int, list[tuple[int, int, tuple[int, int]]]] = {}
PEEKED: dict[tuple[int, int], list[bytes]] = {}


# ---- the shape, from /proc ----

def children_of(pid: int) -> list[int]:
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return sorted(out)


def descendants(root: int) -> list[int]:
    """Every descendant of root, parents before their children."""
    out, queue = [], [root]
    while queue:
        for child in children_of(queue.pop(0)):
            if child not in out:
                out.append(child)
                queue.append(child)
    return out


def is_zombie(pid: int) -> bool:
    try:
        return stat_fields(pid)[3] == "Z"
    except (OSError, IndexError):
        return False


def process_record(pid: int) -> dict:
    f = stat_fields(pid)
    with open(f"/proc/{pid}/stat", "rb") as stat:
        text = stat.read()
    comm = text[text.index(b"(") + 1:text.rindex(b")")].decode(errors="replace")
    zombie = f[3] == "Z"
    # Field 52, exit_code: the wait status a zombie's parent will get (Linux 3.5).
    status = int(f[52]) if zombie and len(f) > 52 else 0
    ppid = int(f[4])
    return {"pid": pid, "ppid": ppid, "pgid": int(f[5]), "sid": int(f[6]),
            "zombie": int(zombie), "status": status, "image": "", "digest": bytes(32),
            "comm": comm[:64], "inherited": [] if zombie else _inherited(pid, ppid)}


def _inherited(pid: int, ppid: int) -> list[dict]:
    """Shared anonymous memory and memfd mappings that pid maps where its parent maps the
    same object."""
    try:
        parent = {(m.start, m.end, m.device, m.inode) for m in read_maps(ppid)
                  if m.shared_object in ("anon", "memfd")}
        mine = [m for m in read_maps(pid) if m.shared_object in ("anon", "memfd")]
    except OSError:
        return []
    return [{"start": m.start, "end": m.end} for m in mine
            if (m.start, m.end, m.device, m.inode) in parent]


def _pipe_fds(pid: int) -> list[tuple[int, str, int, int]]:
    """(fd, link, inode, fdinfo flags) of each pipe or FIFO descriptor of pid."""
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        where = f"/proc/{pid}/fd/{name}"
        try:
            link = os.readlink(where)
            st = os.stat(where)
            if not stat.S_ISFIFO(st.st_mode) or link.startswith("socket:["):
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
        except OSError:
            continue
        out.append((int(name), link, st.st_ino, int(fields["flags"].strip(), 8)))
    return out


def shared_pipes(pids: list[int], read: Any) -> tuple[list[dict], list[str]]:
    """The pipes and FIFOs all of whose holders are among pids (held elsewhere too, they
    stay the processes' own business: their images record them as lost). `read(pid, fd)`
    returns (capacity, buffered bytes) without taking them. Returns records and warnings."""
    by_link: dict[str, list[tuple[int, int, int]]] = {}
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd, link, inode, flags in _pipe_fds(pid):
            by_link.setdefault(link, []).append((pid, fd, flags))
            inodes[link] = inode
    outside = holders(set(by_link), set(pids))
    pipes, warnings = [], []
    for link, ends in sorted(by_link.items()):
        if len({pid for pid, _, _ in ends}) < 2:
            continue  # one process's own pipe: its image brings it back
        if link in outside:
            if all(fd < 3 for _, fd, _ in ends):
                continue  # standard streams from outside: the debugger's (the stdio rule)
            warnings.append(f"{link} is also open in {outside[link]}, outside the tree: "
                            "not restored")
            continue
        size, data = read(ends[0][0], ends[0][1])
        pipes.append({"inode": inodes[link], "size": size, "data": data,
                      "path": "" if link.startswith("pipe:[") else link,
                      "ends": [{"pid": p, "fd": fd, "flags": fl} for p, fd, fl in ends]})
    return pipes, warnings


def _socket_fds(pid: int) -> list[tuple[int, int, int]]:
    """(fd, inode, fdinfo flags) of each socket descriptor of pid."""
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            if not link.startswith("socket:["):
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
        except OSError:
            continue
        out.append((int(name), int(link[8:-1]), int(fields["flags"].strip(), 8)))
    return out


def shared_sockets(pids: list[int], sockets: dict[int, tuple[int, int, bool]]
                   ) -> tuple[list[dict], list[str]]:
    """Unnamed unix socket pairs held by two processes or more of pids, and by nobody else.
    `sockets`: binfmt_img.fdkinds.unix.unix_sockets(). The queued data is left for PEEK."""
    by_inode: dict[int, list[tuple[int, int, int]]] = {}
    for pid in pids:
        for fd, inode, flags in _socket_fds(pid):
            by_inode.setdefault(inode, []).append((pid, fd, flags))
    held = holders({f"socket:[{i}]" for i in by_inode}, set(pids))
    outside = {int(link[8:-1]) for link in held}
    out, warnings, done = [], [], set()
    for inode in sorted(by_inode):
        found = sockets.get(inode)
        if inode in done or found is None:
            continue
        sock_type, peer, named = found
        ends = by_inode[inode] + by_inode.get(peer, [])
        if named or not peer or peer not in by_inode or sock_type not in SOCKET_TYPES \
                or len({pid for pid, _, _ in ends}) < 2:
            continue  # not a pair between the tree's processes: each image says what it is
        done |= {inode, peer}
        if inode in outside or peer in outside:
            warnings.append(f"socket:[{inode}] is a pair also open outside the tree: not "
                            "restored")
            continue
        record = {"inodes": [inode, peer], "type": sock_type, "queued": [[], []], "ends": []}
        for side, ino in enumerate((inode, peer)):
            for pid, fd, flags in by_inode[ino]:
                record["ends"].append({"pid": pid, "fd": fd, "flags": flags, "side": side})
            pid, fd, _ = by_inode[ino][0]
            PEEK.setdefault(pid, []).append((fd, sock_type, (inode, side)))
        out.append(record)
    return out, warnings


def digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


# ---- the restore side ----

def keep_pids_free(pids: set[int]) -> None:
    """The kernel hands out pids in turn: a tree's children had the pids just after their
    parent's, which are the next ones anyone on the machine gets. Moving ns_last_pid past the
    tree's highest pid (with the privilege it needs; else nothing) leaves them for clone3's
    set_tid. Best effort, as binfmt_img/live/pids.py."""
    top = max(pids)
    try:
        with open(NS_LAST_PID) as f:
            last = int(f.read())
        if last < top:
            with open(NS_LAST_PID, "w") as f:
                f.write(str(top))
    except (OSError, ValueError):
        pass

def validate(value: Any) -> None:
    """The record is untrusted: its shape must be a tree rooted at the root, names plain."""
    procs = list(value.processes)
    if not procs or len(procs) > MAX_PROCESSES or procs[0].pid != value.root:
        raise ImageError("tree state: the root is not the first process")
    seen: set[int] = set()
    zombies: set[int] = set()
    for proc in procs:
        if not 1 < proc.pid < 1 << 22 or proc.pid in seen:
            raise ImageError(f"tree state: pid {proc.pid} is not valid here")
        if proc is not procs[0] and (proc.ppid not in seen or proc.ppid in zombies):
            raise ImageError(f"tree state: process {proc.pid} comes before its parent, or "
                             "its parent is a zombie")
        if proc is not procs[0] and not proc.zombie and (
                not proc.image or "/" in proc.image or proc.image in (".", "..")):
            raise ImageError(f"tree state: process {proc.pid}'s image name is not valid")
        seen.add(proc.pid)
        if proc.zombie:
            zombies.add(proc.pid)
        if any(not r.start < r.end <= 1 << 47 or r.start % 4096 or r.end % 4096
               for r in proc.inherited):
            raise ImageError(f"tree state: process {proc.pid}'s shared memory is not valid")
    for pipe in value.pipes:
        for end in pipe.ends:
            if end.pid not in seen or not 0 <= end.fd < MAX_FD or \
                    end.flags & O_ACCMODE not in (0, O_WRONLY):
                raise ImageError(f"tree state: pipe:[{pipe.inode}] has an end that cannot "
                                 "be restored")
        if pipe.path and (not pipe.path.startswith("/") or "\0" in pipe.path):
            raise ImageError(f"tree state: the FIFO {pipe.path!r} is not an absolute path")
        if not 4096 <= pipe.size <= 1 << 30 or len(pipe.data) > pipe.size:
            raise ImageError(f"tree state: pipe:[{pipe.inode}]'s size is not valid")
    for pair in value.sockets:
        if pair.type not in SOCKET_TYPES or sum(len(m) for side in pair.queued
                                                for m in side) > MAX_QUEUED or any(
                end.pid not in seen or not 0 <= end.fd < MAX_FD or end.side > 1
                for end in pair.ends):
            raise ImageError(f"tree state: the socket pair socket:[{pair.inodes[0]}] "
                             "cannot be restored")


def check_inherited(proc: Any, image: Any, parent: Any) -> None:
    """Each range kept from the parent is a shared mapping of both images, the same range."""
    def shared(img: Any) -> set[tuple[int, int]]:
        return {(v.start, v.end) for v in img.vmas if v.is_shared and not v.is_file}
    for r in proc.inherited:
        if (r.start, r.end) not in shared(image) & shared(parent):
            raise ImageError(f"tree state: process {proc.pid}'s shared memory at "
                             f"{r.start:#x} is not in its image and its parent's")


@dataclass
class TreeContext:
    """What one process of a tree does at its restore (set as plan.tree before check())."""

    pid: int  # the process's pid in the image
    root: bool
    record: Any
    temp_base: int  # pipe i's read end is held at temp_base + 2i, its write end at + 1
    pids: set[int] = field(default_factory=set)  # every process of the tree

    def temps(self) -> list[int]:
        count = len(self.record.pipes) + len(self.record.sockets)
        return [self.temp_base + i for i in range(2 * count)]

    def socket_temp(self, j: int) -> int:
        """Where socket pair j's side 0 is held (side 1 just after)."""
        return self.temp_base + 2 * (len(self.record.pipes) + j)

    def my_ends(self) -> list[tuple[int, int, int]]:
        """(temp fd, fd, flags) of each pipe end and socket this process holds."""
        out = []
        for i, pipe in enumerate(self.record.pipes):
            for end in pipe.ends:
                if end.pid == self.pid:
                    temp = self.temp_base + 2 * i + (1 if end.flags & O_WRONLY else 0)
                    out.append((temp, end.fd, end.flags))
        for j, pair in enumerate(self.record.sockets):
            for end in pair.ends:
                if end.pid == self.pid:
                    out.append((self.socket_temp(j) + end.side, end.fd, end.flags))
        return out


def temp_base(record: Any, images: list[Any]) -> int:
    """A descriptor number above every one any process of the tree has."""
    top = 2
    for image in images:
        top = max([top] + [f.fd for f in image.files or []])
        entries = getattr(image.states.get("descriptors"), "entries", [])
        top = max([top] + [e.fd for e in entries])
    for shared in [*record.pipes, *record.sockets]:
        top = max([top] + [end.fd for end in shared.ends])
    return top + 1
