"""Opening files an image names, without letting the image make the debugger hang or act.

An image is untrusted: a path it carries may name a FIFO (an open for reading blocks until a
writer comes), a device (an open may rewind a tape or grab a terminal) or a directory. Such a
path is looked at with O_PATH first, which opens nothing for I/O, and opened for reading
only when it is a regular file: through /proc/self/fd, so that the file checked is the file
read even if the path is swapped in between.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a mode that is not a regular file's."""
    return next((text for test, text in KINDS if test(mode)), "not a regular file")


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at `path`; OSError for anything else, which
    is never opened for reading."""
    handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        mode = os.fstat(handle).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"is {kind_of(mode)}, not a regular file", path)
        return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(handle)


def open_regular_file(path: str) -> BinaryIO:
    """open_regular as a binary file object."""
    return os.fdopen(open_regular(path), "rb")


def has_control_characters(text: str) -> bool:
    """True for NUL, newlines, escape sequences and other C0/C1 controls: never in a path an
    image may hand to a debugger or print on a terminal."""
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text)


def printable(text: str) -> str:
    """`text` with control characters escaped, for messages."""
    return "".join(ch if not has_control_characters(ch) else ch.encode(
        "unicode_escape").decode() for ch in text)


def executable_problem(path: str) -> str | None:
    """Why the image's executable at `path` cannot be started for a restore (gone, not a
    regular file, not an ELF file: a script would start its interpreter), or None."""
    try:
        with open_regular_file(path) as f:
            magic = f.read(4)
    except OSError as error:
        return error.strerror or str(error)
    if magic != b"\x7fELF":
        return "not an ELF executable"
    if not os.access(path, os.X_OK):
        return "not executable"
    return None
