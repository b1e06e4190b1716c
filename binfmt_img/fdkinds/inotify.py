"""inotify: every watch, by path and mask, with its watch number (the program keeps those).

fdinfo names a watch by inode and device only ("inotify wd:1 ino:3f7e8 sdev:fe00000
mask:100 ..."): the dump finds its path with open_by_handle_at when the debugger may
(CAP_DAC_READ_SEARCH), else by looking for that inode under the working directory and the
directories of the process's open and mapped files; a watch not found is Lost. The restore
adds the watches in number order; the kernel hands numbers out one after the other, so a gap
(a watch removed before the checkpoint) is skipped by adding and removing a throwaway watch
on "/" and reading away the IN_IGNORED event that leaves. Events queued at the checkpoint are
not kept (the dump warns).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import struct
import termios
from typing import TYPE_CHECKING

from construct import Int32sl, Int32ul, PascalString, PrefixedArray, Struct, VarInt

from binfmt_img.fdkinds import IOCTL, Entry, FdKind, Lost, Restorer, Seen, lose
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 8
INOTIFY_INIT1, INOTIFY_ADD_WATCH, INOTIFY_RM_WATCH = 294, 254, 255
IN_NONBLOCK = 0o4000
IN_ATTRIB = 0x4
MAX_WD_GAP = 4096
SEARCH_LIMIT = 20000  # directory entries looked at per watch, at most
Watch = Struct("wd" / Int32sl, "mask" / Int32ul, "path" / PascalString(VarInt, "utf8"))
Record = Struct("watches" / PrefixedArray(VarInt, Watch))
LINE = re.compile(r"inotify wd:([0-9a-f]+) ino:([0-9a-f]+) sdev:([0-9a-f]+) mask:([0-9a-f]+)"
                  r".*?f_handle:([0-9a-f]*)")


def _by_handle(pid: int, dev: int, handle_type: int, handle: bytes) -> str | None:
    """The path of a file handle, through the mount point of its filesystem."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    libc = ctypes.CDLL(None, use_errno=True)
    for fields in mounts:
        if fields[2] != wanted:
            continue
        try:
            mount = os.open(fields[4], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            raw = struct.pack("<Ii", len(handle), handle_type) + handle
            fd = libc.open_by_handle_at(mount, ctypes.create_string_buffer(raw, len(raw)),
                                        os.O_PATH | os.O_CLOEXEC)
            if fd >= 0:
                try:
                    return os.readlink(f"/proc/self/fd/{fd}")
                finally:
                    os.close(fd)
        finally:
            os.close(mount)
    return None


def _search(plan: DumpPlan, ino: int, dev: int) -> str | None:
    """The path of inode `ino` on `dev`, looked for where a program's watches usually are."""
    roots = []
    for link in ("cwd", "exe"):
        try:
            roots.append(os.readlink(f"/proc/{plan.pid}/{link}"))
        except OSError:
            pass
    roots += [m.path for m in plan.maps if m.path.startswith("/")]
    tops = dict.fromkeys(os.path.dirname(r) if not os.path.isdir(r) else r for r in roots)
    for top in list(tops) + ["/tmp"]:
        looked = 0
        for where, dirs, files in os.walk(top):
            for name in [".", *dirs, *files]:
                looked += 1
                path = os.path.normpath(os.path.join(where, name))
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if (st.st_ino, st.st_dev) == (ino, dev):
                    return path
            if looked > SEARCH_LIMIT:
                break
    return None


def _dump(plan: DumpPlan, seen: Seen) -> dict:
    watches = []
    for line in seen.lines:
        found = LINE.match(line)
        if not found:
            continue
        wd, ino, sdev, mask = (int(found[i], 16) for i in range(1, 5))
        dev = os.makedev(sdev >> 20, sdev & 0xFFFFF)  # the kernel's dev_t, userspace's after
        handle_type = re.search(r"fhandle-type:([0-9a-f]+)", line)
        path = None
        if handle_type and found[5]:
            path = _by_handle(plan.pid, dev, int(handle_type[1], 16), bytes.fromhex(found[5]))
        path = path or _search(plan, ino, dev)
        if path is None:
            raise Lost(f"{seen.link}, watching inode {ino} (device {os.major(dev)}:"
                       f"{os.minor(dev)}) whose path was not found")
        watches.append({"wd": wd, "mask": mask, "path": path})
    queued = _queued(plan, seen.fd)
    if queued:
        plan.report.warnings.append(f"fd {seen.fd}: {queued} bytes of inotify events queued "
                                    "at the checkpoint are not kept")
    return {"watches": sorted(watches, key=lambda w: w["wd"])}


def _queued(plan: DumpPlan, fd: int) -> int:
    try:
        ours = os.open(f"/proc/{plan.pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # an inotify instance cannot be opened again: ask the process
        inj = plan.injector
        inj.reset_data()
        at = inj.reserve(4)
        if sc.is_error(inj.raw(IOCTL, fd, termios.FIONREAD, at)):
            return 0
        return int.from_bytes(plan.target.read_memory(at, 4), "little")
    try:
        return int.from_bytes(fcntl.ioctl(ours, termios.FIONREAD, bytes(4)), "little")
    finally:
        os.close(ours)


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    for entry in entries:
        wds = [w.wd for w in entry.value.watches]
        if any(wd <= 0 for wd in wds) or wds != sorted(set(wds)) or (
                wds and wds[-1] > len(wds) + MAX_WD_GAP):
            lose(plan, entry, "an inotify the image records wrongly")
            continue
        for watch in entry.value.watches:
            if not os.path.exists(watch.path):
                lose(plan, entry, f"an inotify whose watch {watch.wd} of {watch.path} is gone")


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    inj = ctx.inj
    for entry in entries:
        step = f"making the inotify of fd {entry.fd}"
        fd = ctx.call(INOTIFY_INIT1, IN_NONBLOCK | sc.O_CLOEXEC, step=step)
        next_wd = 1
        for watch in entry.value.watches:
            inj.reset_data()
            while next_wd < watch.wd:  # skip a number the program's removed watch had
                spare = ctx.call(INOTIFY_ADD_WATCH, fd, inj.put_string("/"), IN_ATTRIB,
                                 step=step)
                inj.raw(INOTIFY_RM_WATCH, fd, spare)
                inj.raw(sc.READ, fd, inj.reserve(256), 256)  # its IN_IGNORED event
                next_wd = spare + 1
            got = ctx.call(INOTIFY_ADD_WATCH, fd, inj.put_string(watch.path), watch.mask,
                           step=f"{step}: watching {watch.path}")
            if got != watch.wd:
                ctx.warn(f"fd {entry.fd}: the watch of {watch.path} is number {got}, it was "
                         f"{watch.wd}")
            next_wd = got + 1
        ctx.place([(fd, entry)])


FDKIND = FdKind(id=ID, name="inotify", record=Record, dump=_dump, check=_check,
                restore=_restore, matches=lambda seen: seen.link == "anon_inode:inotify",
                describe=lambda e: ", ".join(f"{w.wd}: {w.path} {w.mask:#x}"
                                             for w in e.value.watches))
