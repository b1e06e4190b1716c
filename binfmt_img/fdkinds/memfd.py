"""memfd open as a descriptor: name, contents, size and seals, made again by memfd_create
(with MFD_ALLOW_SEALING, the seals added back last; one made without it has F_SEAL_SEAL).
The debugger reads the contents through /proc/PID/fd/N at the dump and writes them back the
same way at the restore.

The same memfd may also be mapped: the record keeps its inode (as /proc/PID/maps shows it for
the mapping), and the memfd the mapping's restore made is taken over instead of a new one, so
that the descriptor and the mapping are one object again."""

from __future__ import annotations

import fcntl
import os
from typing import TYPE_CHECKING

from construct import GreedyBytes, Int32ul, Int64ul, PascalString, Prefixed, Struct, VarInt

from binfmt_img.errors import RestoreError
from binfmt_img.fdkinds import FCNTL, Entry, FdKind, Restorer, Seen, lose
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 6
PREFIX, DELETED = "/memfd:", " (deleted)"
MEMFD_CREATE, FTRUNCATE = 319, 77
MFD_CLOEXEC, MFD_ALLOW_SEALING = 1, 2
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
NAME_MAX = 249  # memfd_create's limit
Record = Struct(
    "inode" / Int64ul, "device" / Int64ul,
    "name" / PascalString(VarInt, "utf8"),
    "seals" / Int32ul,
    "size" / Int64ul,
    "data" / Prefixed(VarInt, GreedyBytes),  # the contents, kept by the group's first fd
)


def _dump(plan: DumpPlan, seen: Seen) -> dict:
    name = seen.link.removeprefix(PREFIX).removesuffix(DELETED)
    data = b""
    try:
        ours = os.open(f"/proc/{plan.pid}/fd/{seen.fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            seals = fcntl.fcntl(ours, F_GET_SEALS)
            size = os.fstat(ours).st_size
            if seen is seen.group[0]:
                data = os.pread(ours, size, 0) if size else b""
        finally:
            os.close(ours)
    except OSError as error:
        raise RestoreError(f"fd {seen.fd}: reading the memfd {name}: {error.strerror}") from None
    return {"inode": seen.ino, "device": seen.dev, "name": name, "seals": seals, "size": size,
            "data": data}


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    for entry in entries:
        v = entry.value
        if len(v.name.encode()) > NAME_MAX or "\0" in v.name or (
                v.data and len(v.data) != v.size):
            lose(plan, entry, "a memfd the image records wrongly")


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    groups: dict[tuple[int, int], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.value.device, entry.value.inode), []).append(entry)
    for group in groups.values():
        first, v = group[0], group[0].value
        step = f"making the memfd {v.name} of fd {first.fd}"
        ctx.inj.reset_data()
        # Mapped too: the mapping's restore made the memfd already (state/vma_extra.py).
        fd = ctx.plan.memfd_fds.pop(v.inode, None)
        if fd is None:
            fd = ctx.call(MEMFD_CREATE, ctx.inj.put_string(v.name),
                          MFD_CLOEXEC | MFD_ALLOW_SEALING, step=step)
        ctx.call(FTRUNCATE, fd, v.size, step=step)
        ctx.write_into(fd, b"".join(e.value.data for e in group), step)
        if v.seals:
            ctx.call(FCNTL, fd, F_ADD_SEALS, v.seals, step=f"sealing the memfd of fd {first.fd}")
        ctx.place([(fd, first)])
        ctx.dup_to(first.fd, group[1:])
        ctx.plan.memfds = {**getattr(ctx.plan, "memfds", {}), (v.device, v.inode): first.fd}
        for entry in group:
            if entry.pos:
                ctx.inj.raw(sc.LSEEK, entry.fd, entry.pos, 0)


FDKIND = FdKind(id=ID, name="memfd", record=Record, dump=_dump, check=_check, restore=_restore,
                matches=lambda seen: seen.link.startswith(PREFIX),
                describe=lambda e: f"{e.value.name}, {e.value.size} bytes, "
                                   f"seals {e.value.seals:#x}")
