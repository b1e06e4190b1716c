"""Where a dump reads the mapped files themselves: /proc/PID/map_files/START-END opens the
very file a mapping maps, even when its path now names another file (a rebuild, an upgrade)
or none (deleted). It needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE; without, the path."""

from __future__ import annotations

import os

from binfmt_img.formats.model import Image


def sources(pid: int, image: Image) -> dict[str, str]:
    """Image path -> a path to read that mapped file from, for each path /proc lets us."""
    out: dict[str, str] = {}
    for vma in image.vmas:
        if vma.path is None or vma.path in out:
            continue
        where = f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}"
        try:
            os.close(os.open(where, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK))
        except OSError:
            continue
        out[vma.path] = where
    return out
