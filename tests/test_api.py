"""binfmt_img.api, the documented API for scripts, on synthetic images."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import synthetic

from binfmt_img import api
from binfmt_img.formats.model import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Vma,
)


@pytest.fixture
def path(tmp_path: Path) -> str:
    saved = str(tmp_path / "demo.img")
    api.save(saved, synthetic.make_image("v1"))  # pages: none given, so none stored
    return saved


def saved_with_pages(tmp_path: Path, name: str, image: api.Image,
                     pages: synthetic.Pages | None = None) -> api.Image:
    from binfmt_img.formats import image_file

    out = str(tmp_path / name)
    image_file.save(out, image, "v1", synthetic.pages() if pages is None else pages)
    return api.load(out)


def test_load_walk_and_read(tmp_path: Path) -> None:
    image = saved_with_pages(tmp_path, "a.img", synthetic.make_image("v1"))
    assert [t.tid for t in image.threads] == [4242, 4243]
    assert image.registers["rip"] == synthetic.RIP
    assert [api.perms(v) for v in image.vmas][:2] == ["r-x", "rw-"]
    assert api.vma_at(image, synthetic.HEAP + 5).label == "[heap]"
    assert api.vma_at(image, 0x10) is None
    assert api.read(image, synthetic.RIP, 4) == synthetic.CODE[:4]
    assert api.read(image, synthetic.HEAP + PAGE_SIZE, 8) == bytes(8)  # a zero page left out
    # Across two stored pages.
    end = synthetic.STACK_END - PAGE_SIZE
    assert api.read(image, end - 4, 8) == synthetic.page(end - PAGE_SIZE)[-4:] + \
        synthetic.page(end)[:4]
    assert api.read_u64(image, synthetic.TEXT) == int.from_bytes(b"page 0x4", "little")
    assert api.disassemble(image, synthetic.RIP, 2) == ["0x401020: push rbp",
                                                        "0x401021: mov rbp, rsp"]
    assert next(api.pages(image)) == (synthetic.TEXT, synthetic.page(synthetic.TEXT))


def test_read_names_what_is_missing(tmp_path: Path) -> None:
    image = saved_with_pages(tmp_path, "a.img", synthetic.make_image("v1"))
    with pytest.raises(api.ImageError, match=r"0x10: no VMA holds it"):
        api.read(image, 0x10, 4)
    with pytest.raises(api.ImageError, match=r"/dev/shm/demo is gone or changed"):
        api.read(image, synthetic.SHM, 4)


def test_load_refuses_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(api.ImageError, match="not a binfmt-img image or an ELF core: looks like"):
        api.load(str(junk))


def test_diff_of_equal_images(path: str) -> None:
    result = api.diff(api.load(path), api.load(path))
    assert not result and result.summary() == []


def test_diff(tmp_path: Path) -> None:
    before = synthetic.make_image("v1")
    after = copy.deepcopy(before)
    after.registers["rip"] = synthetic.RIP + 4
    after.threads[1].registers["rax"] = 7
    after.vmas[2].end += PAGE_SIZE  # the heap grew
    after.vmas.insert(4, Vma(0x7F0000100000, 0x7F0000101000, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS))
    after.mm["brk"] += PAGE_SIZE
    pages = [(addr, data) for addr, data in synthetic.pages()]
    pages[3] = (synthetic.HEAP, synthetic.page(1) + bytes(PAGE_SIZE) + synthetic.page(2))
    a = saved_with_pages(tmp_path, "a.img", before)
    b = saved_with_pages(tmp_path, "b.img", after, pages)
    result = api.diff(a, b)
    assert result.registers == {4242: {"rip": (synthetic.RIP, synthetic.RIP + 4)},
                                4243: {"rax": (0x1000, 7)}}
    assert [v.start for v in result.vmas_added] == [0x7F0000100000]
    assert [(x.end, y.end) for x, y in result.vmas_changed] == [
        (synthetic.HEAP + 0x4000, synthetic.HEAP + 0x5000)]
    assert result.pages_changed == [synthetic.HEAP, synthetic.HEAP + 0x2000]
    assert result.mm == {"brk": (synthetic.HEAP + 0x4000, synthetic.HEAP + 0x5000)}
    text = "\n".join(result.summary())
    assert "thread 4242: rip 0x401020 -> 0x401024" in text
    assert "2 pages changed: 0x600000, 0x602000" in text
    assert "VMA added: 0x7f0000100000-0x7f0000101000 rw-" in text
    assert "VMA changed: 0x600000-0x604000 rw- [heap] -> 0x600000-0x605000 rw- [heap]" in text
    assert not result.vmas_removed and not result.threads_added
    result = api.diff(b, a)
    assert [v.start for v in result.vmas_removed] == [0x7F0000100000]
