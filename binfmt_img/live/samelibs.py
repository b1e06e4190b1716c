"""Whether a restore keeps the live process's thread library where it is: the image maps the
very same libc (or libpthread) and dynamic linker at the same addresses, and brings back one
thread. A debugger's thread library (GDB's libthread_db) then reads consistent data again
once the pages are in, and the GDB adapter keeps it instead of attaching again without it."""

from __future__ import annotations

import re

from binfmt_img.formats.model import PAGE_SIZE, Image
from binfmt_img.live.procfs import Mapping

# What libthread_db reads: glibc's libc (libpthread before 2.34) and the dynamic linker.
THREAD_LIBRARY = re.compile(r"(?:^|/)(?:libc|libpthread|ld-linux[-\w.]*|ld)(?:[-.][^/]*)?$")


def thread_library_kept(image: Image, live: list[Mapping]) -> bool:
    if len(image.threads) > 1 or "tree" in image.states:
        return False  # clones or forks through the debugger while the restore runs
    by_start = {vma.start: vma for vma in image.vmas}
    for m in live:
        if not m.inode or not THREAD_LIBRARY.search(m.path):
            continue
        vma = by_start.get(m.start)
        if vma is None or (vma.end, vma.path, vma.pgoff * PAGE_SIZE) != (m.end, m.path,
                                                                        m.offset):
            return False
        if vma.file is not None and vma.file.inode != m.inode:
            return False
    return True
