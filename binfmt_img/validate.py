"""Checks an image as a whole before anything uses it; each class of damage has its own message."""

from __future__ import annotations

import bisect

from .errors import ImageError
from .model import (
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    MAP_TYPE,
    PAGE_SIZE,
    USER_ADDRESS_LIMIT,
    VMA_FLAGS,
    VSYSCALL_START,
    Image,
    Vma,
)


def _is_vsyscall(vma: Vma) -> bool:
    return vma.start == VSYSCALL_START and vma.end == VSYSCALL_START + PAGE_SIZE


def validate(image: Image, offsets: dict[str, list[int]]) -> None:
    """Raise ImageError for the first problem found, naming the record's byte offset."""
    if not image.threads:
        raise ImageError("image holds no thread")
    vma_offsets = offsets.get("vmas") or [None] * len(image.vmas)
    previous: Vma | None = None
    for vma, at in sorted(zip(image.vmas, vma_offsets), key=lambda pair: pair[0].start):
        span = f"VMA {vma.start:#x}-{vma.end:#x}"
        if vma.start % PAGE_SIZE or vma.end % PAGE_SIZE:
            raise ImageError(f"{span} is not page aligned", at)
        if vma.end == vma.start:
            raise ImageError(f"{span} is empty", at)
        if vma.end < vma.start:
            raise ImageError(f"{span} is inverted (end before start)", at)
        if vma.end > USER_ADDRESS_LIMIT and not _is_vsyscall(vma):
            raise ImageError(f"{span} lies outside the canonical user address range", at)
        if vma.flags & MAP_TYPE not in (MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE):
            raise ImageError(f"{span} has no valid sharing type in its flags "
                             f"{vma.flags:#x} (mmap takes shared or private)", at)
        if vma.flags & ~(MAP_TYPE | VMA_FLAGS):
            raise ImageError(f"{span} has unknown flag bits "
                             f"{vma.flags & ~(MAP_TYPE | VMA_FLAGS):#x}", at)
        if previous is not None and vma.start < previous.end:
            raise ImageError(f"{span} overlaps VMA {previous.start:#x}-{previous.end:#x}", at)
        previous = vma

    vmas = sorted(image.vmas, key=lambda v: v.start)
    starts = [v.start for v in vmas]
    run_offsets = offsets.get("runs") or [None] * len(image.runs)
    ordered = sorted(zip(image.runs, run_offsets), key=lambda pair: pair[0].vaddr)
    image.runs = [run for run, _ in ordered]
    last_end = 0
    for run, at in ordered:
        if run.vaddr % PAGE_SIZE:
            raise ImageError(f"page {run.vaddr:#x} is not page aligned", at)
        if run.vaddr < last_end:
            raise ImageError(f"page {run.vaddr:#x} is stored twice", at)
        last_end = run.end
        # The run must be covered by VMAs, possibly several adjacent ones.
        addr = run.vaddr
        while addr < run.end:
            i = bisect.bisect_right(starts, addr) - 1
            if i < 0 or addr >= vmas[i].end:
                raise ImageError(f"page {addr:#x} lies outside every VMA", at)
            vma = vmas[i]
            if vma.is_shared and vma.is_file:
                raise ImageError(f"page {addr:#x} would land in shared file mapping "
                                 f"{vma.path}", at)
            addr = vma.end
    seen: set[int] = set()
    for f in image.files or []:
        if f.fd < 0 or f.fd in seen:
            raise ImageError(f"open file record for fd {f.fd} is negative or repeated")
        seen.add(f.fd)
