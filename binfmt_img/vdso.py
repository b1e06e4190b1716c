"""Finding the vDSO and its data pages ([vvar], [vvar_vclock]) in an image and a live process."""

from __future__ import annotations

from .model import PAGE_SIZE, Image, Vma

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
