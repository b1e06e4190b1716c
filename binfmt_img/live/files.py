"""Open file descriptors and the working directory: recorded at a dump, reopened at a restore.

Regular files, directories and a few stateless devices (/dev/null, /dev/zero, /dev/random,
/dev/urandom) are opened again in the inferior at the same fd number, with the same flags and
offset. Pipes, sockets, terminals and the like cannot be made again from outside: they are
recorded (fd and what /proc/PID/fd/N links to) and named in a warning at the restore. fds 0, 1
and 2 are the debugger's business (its terminal or the redirections it was given): recorded,
never touched.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import (
    FD_DEVICE,
    FD_DIRECTORY,
    FD_FILE,
    FD_OTHER,
    FileIdentity,
    OpenFile,
)
from binfmt_img.live import syscalls as sc
from binfmt_img.safeio import kind_of

if TYPE_CHECKING:
    from binfmt_img.live.inject import Batch
    from binfmt_img.live.restore import RestorePlan
    from binfmt_img.live.restorer import Ref

DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
STANDARD_FDS = 3  # 0, 1, 2
O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC, O_APPEND = 0o100, 0o200, 0o400, 0o1000, 0o2000
O_CLOEXEC = 0o2000000
# Bits fdinfo shows that must not be given to open again: creation-time ones.
OPEN_ONLY = O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC
SEEK_SET = 0
FCNTL, F_DUPFD_CLOEXEC = 72, 1030
O_DIRECTORY, O_PATH = 0o200000, 0o10000000
# What /proc/PID/fdinfo may show of an open file: access mode, status flags, O_LARGEFILE,
# O_DIRECTORY, O_NOFOLLOW, O_NOATIME, O_CLOEXEC, O_SYNC, O_PATH, and the creation-time bits.
KNOWN_OPEN_FLAGS = (O_ACCMODE | O_APPEND | 0o4000 | 0o10000 | 0o20000 | 0o40000 | 0o100000
                    | O_DIRECTORY | 0o400000 | 0o1000000 | O_CLOEXEC | 0o4000000 | O_PATH
                    | OPEN_ONLY)
DELETED = " (deleted)"
MEMFD = "/memfd:"  # memfd_create's files have no path to open again


# ---- dump ----

def _fdinfo(pid: int, fd: int) -> dict[str, str]:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def _open_file(pid: int, fd: int) -> OpenFile | None:
    """One descriptor as /proc shows it; None when it was closed meanwhile."""
    where = f"/proc/{pid}/fd/{fd}"
    try:
        link = os.readlink(where)
        info = _fdinfo(pid, fd)
        st = os.stat(where)  # the open file itself, even when deleted or renamed
    except OSError:
        return None
    flags, pos = int(info.get("flags", "0").strip(), 8), int(info.get("pos", "0").strip())
    path = link.removesuffix(DELETED)  # a deleted file is noticed (gone) at the restore
    in_a_filesystem = path.startswith("/") and not path.startswith(MEMFD)
    if in_a_filesystem and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        kind = FD_FILE if stat.S_ISREG(st.st_mode) else FD_DIRECTORY
        ident = FileIdentity(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        return OpenFile(fd, kind, path, flags, pos, ident)
    kind = FD_DEVICE if stat.S_ISCHR(st.st_mode) and link in DEVICES else FD_OTHER
    return OpenFile(fd, kind, link, flags, pos)


def read_open_files(pid: int) -> tuple[str | None, list[OpenFile]]:
    """The working directory and every open descriptor of a local process."""
    try:
        cwd: str | None = os.readlink(f"/proc/{pid}/cwd").removesuffix(DELETED)
    except OSError:
        cwd = None
    fds = sorted(int(name) for name in os.listdir(f"/proc/{pid}/fd"))
    files = [f for f in (_open_file(pid, fd) for fd in fds) if f is not None]
    return cwd, files


# ---- restore ----

def _writable(f: OpenFile) -> bool:
    return bool(f.flags & (O_WRONLY | O_RDWR | O_APPEND))


def _check_one(f: OpenFile) -> None:
    """Refuse a file gone or changed since the dump. A file open for writing grows and
    changes under the process's own hand, and a directory's size and mtime change with its
    entries: for those only the inode must be the same."""
    try:
        st = os.stat(f.path)
    except OSError as error:
        raise RestoreError(f"fd {f.fd}: {f.path}: {error.strerror}") from None
    if f.flags & ~KNOWN_OPEN_FLAGS or (f.flags & O_DIRECTORY and f.kind != FD_DIRECTORY):
        raise RestoreError(f"fd {f.fd}: open flags {f.flags:#o} that open(2) refuses here")
    if f.kind == FD_DEVICE:  # only the stateless devices are opened again, never another
        if f.path not in DEVICES or not stat.S_ISCHR(st.st_mode):
            raise RestoreError(f"fd {f.fd}: {f.path} is not one of the devices reopened "
                               f"({', '.join(DEVICES)})")
        return
    if f.kind not in (FD_FILE, FD_DIRECTORY):
        raise RestoreError(f"fd {f.fd}: unknown kind of open file {f.kind}")
    if (f.kind == FD_DIRECTORY) != stat.S_ISDIR(st.st_mode) or not (
            stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise RestoreError(f"fd {f.fd}: {f.path} is not a "
                           f"{'directory' if f.kind == FD_DIRECTORY else 'regular file'} "
                           f"({kind_of(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'})")
    if f.file is None:
        return
    changes = f.file.changes(st, contents=f.kind == FD_FILE and not _writable(f))
    if changes:
        raise RestoreError(f"fd {f.fd}: {f.path} changed since the dump: " + ", ".join(changes))
    wanted = os.W_OK if f.flags & O_ACCMODE in (O_WRONLY, O_RDWR) else os.R_OK
    if not os.access(f.path, wanted):
        raise RestoreError(f"fd {f.fd}: {f.path}: permission denied")


def check_open_files(plan: RestorePlan) -> None:
    """Before any change: every file to reopen is there and unchanged, the working directory
    exists; what cannot be reopened is named in a warning."""
    image = plan.image
    if image.files is None:
        return  # not recorded: the inferior keeps its descriptors and directory
    if image.cwd and not os.path.isdir(image.cwd):
        raise RestoreError(f"the working directory {image.cwd} is gone")
    if not plan.local:
        plan.report.warnings.append("remote inferior: open files are not restored")
        image.files, image.cwd = None, None  # the image is this command's own
        return
    for f in image.files:
        if f.fd < STANDARD_FDS:
            continue
        if f.kind == FD_OTHER:
            if "descriptors" not in image.states:  # else binfmt_img/fdkinds brings it back
                plan.losses.append(f"fd {f.fd} ({f.path}: an image from before such "
                                   "descriptors were recorded)")
        else:
            _check_one(f)
    plan.live_fds = sorted(int(n) for n in os.listdir(f"/proc/{plan.pid}/fd"))


def restore_open_files(plan: RestorePlan) -> None:
    """Close every descriptor above 2, open the image's files at their numbers, and go to the
    image's working directory."""
    image, inj = plan.image, plan.injector
    if image.files is None:
        return
    seeks = []
    with inj.batch() as batch:
        for fd in plan.live_fds:
            if fd >= STANDARD_FDS:
                batch.raw(sc.CLOSE, fd)  # one closed meanwhile (EBADF) is no matter
        for f in sorted(image.files, key=lambda f: f.fd):
            if f.fd >= STANDARD_FDS and f.kind != FD_OTHER:
                seeks.append(_reopen(batch, f))
        if image.cwd:
            batch.call(sc.CHDIR, batch.put_string(image.cwd),
                       step=f"changing directory to {image.cwd}")
    for f, seek in seeks:
        if seek is not None and sc.is_error(batch.value(seek)):
            plan.report.warnings.append(f"fd {f.fd}: {f.path}: offset {f.pos} not restored: "
                                        f"{sc.errno_text(batch.value(seek))}")


def _reopen(batch: Batch, f: OpenFile) -> tuple[OpenFile, Ref | None]:
    """Queued, not knowing where open lands: opened, copied above f.fd (F_DUPFD), the first
    closed, the copy dup3'd to f.fd keeping close-on-exec, and closed. Returns the lseek."""
    step = f"reopening fd {f.fd} ({f.path})"
    fd = batch.call(sc.OPEN, batch.put_string(f.path), f.flags & ~OPEN_ONLY, 0, step=step)
    above = batch.call(FCNTL, fd, F_DUPFD_CLOEXEC, f.fd + 1, step=step)
    batch.raw(sc.CLOSE, fd)
    batch.call(sc.DUP3, above, f.fd, f.flags & O_CLOEXEC, step=step)
    batch.raw(sc.CLOSE, above)
    if f.pos and f.kind != FD_DEVICE:
        return f, batch.raw(sc.LSEEK, f.fd, f.pos, SEEK_SET)
    return f, None
