"""The two things img-diff compares, each seen the same way: an image (a file or a store
checkpoint) or the live process read through a Target. A side gives its VMAs, its threads
with their registers, the pages worth comparing, and the bytes of any page as the process
sees them (a file-backed page the image does not store reads from the file)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable

from binfmt_img.formats.model import PAGE_SIZE, Image, Thread, Vma
from binfmt_img.live.target import Target

# Areas the kernel makes afresh in every process: no content of the program's.
KERNEL_AREAS = ("[vvar]", "[vvar_vclock]", "[vsyscall]")


class Side:
    """What diff.py reads; subclasses fill vmas and threads and implement _page."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.vmas: list[Vma] = []
        self.threads: list[Thread] = []
        self._cache: dict[int, bytes | None] = {}
        self._files: dict[str, bytes | None] = {}
        self._vma_starts: tuple[list[Vma], list[Vma], list[int]] | None = None

    def candidates(self) -> Iterable[int]:
        """Addresses of the pages that may hold the process's own data."""
        raise NotImplementedError

    def _page(self, vaddr: int) -> bytes | None:
        raise NotImplementedError

    def page_key(self, vaddr: int) -> object | None:
        """What names the page's content without reading it (a store's page id), or None:
        pages with equal keys are equal."""
        return None

    def vma_at(self, addr: int) -> Vma | None:
        if self._vma_starts is None or self._vma_starts[0] is not self.vmas:
            ordered = sorted(self.vmas, key=lambda v: v.start)
            self._vma_starts = (self.vmas, ordered, [v.start for v in ordered])
        _, ordered, starts = self._vma_starts
        i = bisect.bisect_right(starts, addr) - 1
        return ordered[i] if i >= 0 and addr < ordered[i].end else None

    def page(self, vaddr: int) -> bytes | None:
        """The page at `vaddr` as the process sees it, or None (not mapped, not readable)."""
        if vaddr not in self._cache:
            data = self._page(vaddr)
            if data is None:
                data = self._file_page(vaddr)
            self._cache[vaddr] = data
        return self._cache[vaddr]

    def forget(self, vaddr: int) -> None:
        """Drop a cached page: a diff of a large image keeps its memory flat."""
        self._cache.pop(vaddr, None)

    def read(self, addr: int, size: int) -> bytes | None:
        out = bytearray()
        while size > 0:
            base = addr & ~(PAGE_SIZE - 1)
            data = self.page(base)
            if data is None:
                return None
            take = min(size, base + PAGE_SIZE - addr)
            out += data[addr - base:addr - base + take]
            addr, size = addr + take, size - take
        return bytes(out)

    def word(self, addr: int) -> int | None:
        data = self.read(addr, 8)
        return None if data is None else int.from_bytes(data, "little")

    def _file_page(self, vaddr: int) -> bytes | None:
        """A page of a file mapping the image left out: the file's own bytes there."""
        vma = self.vma_at(vaddr)
        if vma is None or vma.path is None:
            return None
        if vma.path not in self._files:
            self._files[vma.path] = _read_file(vma.path)
        data = self._files[vma.path]
        if data is None:
            return None
        at = vma.pgoff * PAGE_SIZE + vaddr - vma.start
        return data[at:at + PAGE_SIZE].ljust(PAGE_SIZE, b"\0")


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class ImageSide(Side):
    """An image: its stored pages are those the process wrote."""

    def __init__(self, image: Image, label: str) -> None:
        super().__init__(label)
        self.image = image
        self.vmas = [v for v in image.vmas if v.name not in KERNEL_AREAS]
        self.threads = image.threads
        self._starts: list[int] | None = None

    def candidates(self) -> Iterable[int]:
        for run in self.image.runs:
            for i in range(run.count):
                yield run.vaddr + i * PAGE_SIZE

    def _page(self, vaddr: int) -> bytes | None:
        return self.image.page_at(vaddr)

    def page_key(self, vaddr: int) -> object | None:
        """A store checkpoint's page id: the store keeps each content once, so two
        checkpoints of one store holding the same id hold the same page."""
        reader = getattr(self.image, "reader", None)
        ids, directory = getattr(reader, "ids", None), getattr(reader, "directory", None)
        if ids is None or directory is None:
            return None
        if self._starts is None:
            self._starts = [run.vaddr for run in self.image.runs]
        i = bisect.bisect_right(self._starts, vaddr) - 1
        if i < 0 or vaddr >= self.image.runs[i].end:
            return None
        run = self.image.runs[i]
        index = (run.offset + (vaddr - run.vaddr) // PAGE_SIZE * run.stride) // PAGE_SIZE
        return (directory, ids[index]) if 0 <= index < len(ids) else None


class LiveSide(Side):
    """The debugger's stopped process, read through its Target (nothing is changed)."""

    def __init__(self, target: Target, label: str = "live") -> None:
        from binfmt_img.errors import RestoreError
        from binfmt_img.live.dump import _vma_of
        from binfmt_img.live.procfs import parse_maps, proc_file
        from binfmt_img.live.threads import read_threads

        super().__init__(label)
        pid = target.pid()
        if pid is None:
            raise RestoreError("no live process to compare")
        self.target, self.pid = target, pid
        maps = parse_maps(proc_file(target, pid, "maps").decode(errors="replace"))
        self.maps = [m for m in maps if m.special not in KERNEL_AREAS]
        self.vmas = [_vma_of(m) for m in self.maps]
        self.threads = read_threads(target, pid)

    def candidates(self) -> Iterable[int]:
        """Pages holding data the process made: resident and not still its file's. A remote
        process has no pagemap here: the other side's pages are compared."""
        if not self.target.is_local():
            return
        from binfmt_img.live.procfs import resident_pages

        for m in self.maps:
            if not m.prot or m.special == "[vdso]":
                continue
            try:
                runs = resident_pages(self.pid, m.start, m.end, skip_file_pages=True)
            except OSError:
                continue
            for vaddr, count in runs:
                yield from range(vaddr, vaddr + count * PAGE_SIZE, PAGE_SIZE)

    def unwound(self, tid: int) -> list[tuple[int, str]] | None:
        """The debugger's own unwind of thread `tid`: (stack pointer, function) per frame,
        innermost first; None when the target offers none (the optional stack_frames hook
        of the selected thread)."""
        hook = getattr(self.target, "stack_frames", None)
        if hook is None:
            return None
        from binfmt_img.live.threads import select, thread_ids

        selected = (thread_ids(self.target) or [tid])[0]
        if selected != tid:
            select(self.target, tid)
        try:
            return hook() or None
        except Exception:  # noqa: BLE001 - no unwind: frames come from return addresses
            return None
        finally:
            if selected != tid:
                select(self.target, selected)

    def _page(self, vaddr: int) -> bytes | None:
        vma = self.vma_at(vaddr)
        if vma is None or not vma.prot:
            return None
        try:
            data = self.target.read_memory(vaddr, PAGE_SIZE)
        except Exception:  # noqa: BLE001 - each debugger raises its own kind for a hole
            return None
        return bytes(data) if len(data) == PAGE_SIZE else None


def image_label(path: str) -> str:
    return os.path.basename(path)
