"""Finding the vDSO and its data pages ([vvar], [vvar_vclock]) in an image and a live process."""

from __future__ import annotations

from collections.abc import Callable

from binfmt_img.errors import RestoreError
from binfmt_img.formats.model import PAGE_SIZE, Image, Vma
from binfmt_img.live import syscalls as sc
from binfmt_img.live.inject import Injector
from binfmt_img.live.procfs import Mapping

VDSO_DATA_NAMES = ("[vvar]", "[vvar_vclock]")
MOVABLE_NAMES = VDSO_DATA_NAMES + ("[vdso]",)


def looks_like_vdso(first_page: bytes | None) -> bool:
    return bool(first_page) and first_page[:4] == b"\x7fELF" and b"linux-vdso" in first_page


def image_vdso_block(image: Image) -> list[Vma]:
    """The image's [vvar]..[vdso] VMAs, lowest first; empty when it has no vDSO.

    v0 has no names: its vDSO is the VMA whose first page is the vDSO's ELF image, and its
    data pages are the page-less, file-less VMAs directly below it."""
    named = [v for v in image.vmas if v.name in MOVABLE_NAMES]
    if named or image.format == "v1":
        return sorted(named, key=lambda v: v.start)
    ordered = sorted(image.vmas, key=lambda v: v.start)
    for i, vma in enumerate(ordered):
        if looks_like_vdso(image.page_at(vma.start)):
            block = [vma]
            j = i - 1
            while j >= 0 and ordered[j].end == block[0].start and _holds_no_pages(image,
                                                                               ordered[j]):
                block.insert(0, ordered[j])
                j -= 1
            return block
    return []


def _holds_no_pages(image: Image, vma: Vma) -> bool:
    return not any(run.vaddr < vma.end and run.end > vma.start for run in image.runs)


def is_vdso_page(block: list[Vma], vaddr: int) -> bool:
    return any(v.start <= vaddr < v.end for v in block)


def block_span(block: list) -> tuple[int, int]:
    return block[0].start, block[-1].end


def pages(size: int) -> int:
    return size // PAGE_SIZE


class VdsoMove:
    """The live kernel's [vvar]..[vdso] block moves to where the image had its vDSO: parked
    aside while the address space is emptied, then put in place, its internal layout kept
    (the vDSO's code finds its data pages at a fixed distance below itself)."""

    def __init__(self, image: Image, live: list[Mapping]) -> None:
        self.image = image
        self.image_block = image_vdso_block(image)
        self.live_block = [m for m in live if m.special in MOVABLE_NAMES]
        self.parking = 0

    @property
    def size(self) -> int:
        return self.live_block[-1].end - self.live_block[0].start if self.live_block else 0

    def check(self, warnings: list[str]) -> None:
        """Refuse, before any change, a block that would land on one of the image's VMAs."""
        live_vdso = next((m for m in self.live_block if m.special == "[vdso]"), None)
        if not self.image_block or live_vdso is None:
            return
        image_vdso = self.image_block[-1]
        if live_vdso.end - live_vdso.start != image_vdso.size:
            warnings.append(
                f"the image's vDSO is {image_vdso.size // PAGE_SIZE} pages, this kernel's is "
                f"{(live_vdso.end - live_vdso.start) // PAGE_SIZE}: it was taken on another "
                "kernel; its calls into the vDSO may fail")
        start, end = self._destination(), self._destination() + self.size
        block = {id(v) for v in self.image_block}
        for vma in self.image.vmas:
            if id(vma) not in block and vma.start < end and start < vma.end:
                raise RestoreError(f"this kernel's vDSO data pages {start:#x}-{end:#x} would "
                                   f"overlap VMA {vma.start:#x}-{vma.end:#x} of the image")

    def _destination(self) -> int:
        live_vdso = next(m for m in self.live_block if m.special == "[vdso]")
        return self.image_block[-1].start - (live_vdso.start - self.live_block[0].start)

    def park(self, injector: Injector, parking: int) -> None:
        self.parking = parking
        self._move(injector, lambda m: m.start, lambda offset: parking + offset, "aside")

    def place(self, injector: Injector) -> None:
        """Into the image's place; an image without a vDSO leaves it parked, out of the way."""
        if self.image_block and any(m.special == "[vdso]" for m in self.live_block):
            base = self.live_block[0].start
            destination = self._destination()
            self._move(injector, lambda m: self.parking + m.start - base,
                       lambda offset: destination + offset, "to the image's place")

    def _move(self, injector: Injector, source: Callable[[Mapping], int],
              destination: Callable[[int], int], where: str) -> None:
        base = self.live_block[0].start if self.live_block else 0
        with injector.joined_batch() as batch:
            for m in self.live_block:
                size = m.end - m.start
                batch.call(sc.MREMAP, source(m), size, size,
                           sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, destination(m.start - base),
                           step=f"moving {m.special} {where}", address=source(m))
