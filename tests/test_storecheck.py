"""The check of a store checkpoint's pages before a restore's first change and before an
export (binfmt_img.store.check): every page used, read from its chunk and hashed, against the
xxh3-128 of the page index. A raw chunk has no checksum of its own (without the check a
flipped byte is restored silently); a damaged zstd chunk would be found only half way through
the restore. Synthetic stores for each kind of damage, then in real GDB and LLDB a running
program that refused restores leave running to its end."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cprogs import compile_program
from gdbmi import Gdb, GdbError
from lldb_helpers import lldb_batch, lldb_missing, read
from synthetic import make_image, page

from binfmt_img.errors import ImageError
from binfmt_img.formats import v1, zstdfast
from binfmt_img.formats.model import PAGE_SIZE, Image
from binfmt_img.store import Store
from binfmt_img.store import pages as store_pages

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")
TEXT_AT, NOISE_AT = 0x600000, 0x7F0000000000


def _noise(pages: int) -> bytes:
    """Bytes that do not compress (stored raw), the same every run."""
    x, out = 88172645463325252, bytearray()
    while len(out) < pages * PAGE_SIZE:
        x ^= (x << 13) & (2**64 - 1)
        x ^= x >> 7
        x ^= (x << 17) & (2**64 - 1)
        out += x.to_bytes(8, "little")
    return bytes(out)


TEXT_PAGES = 64  # one whole chunk, compressed


def _image() -> Image:
    """The synthetic image with a heap of TEXT_PAGES pages."""
    image = make_image()
    heap = next(vma for vma in image.vmas if vma.start == TEXT_AT)
    heap.end = TEXT_AT + TEXT_PAGES * PAGE_SIZE
    return image


def _text() -> bytes:
    return b"".join(page(TEXT_AT + i) for i in range(TEXT_PAGES))


def _store(tmp_path: Path) -> Store:
    """Checkpoint 1: TEXT_PAGES text pages (a zstd chunk in pack 1) and two noise pages (a
    raw chunk after it)."""
    store = Store(str(tmp_path / "s"))
    store.add(_image(), pages=[(TEXT_AT, _text()), (NOISE_AT, _noise(2))])
    return store


def _records(store: Store) -> list[tuple[bytes, int, int, int, int, int]]:
    return list(store_pages.INDEX_RECORD.iter_unpack(Store(store.path).index().data))


def _chunk(store: Store, zstd: bool) -> tuple[int, int]:
    """(offset, length) of the first chunk stored compressed or raw."""
    record = next(r for r in _records(store) if bool(r[5] & store_pages.FLAG_ZSTD) == zstd)
    return record[2], record[3]


def _pack(store: Store) -> Path:
    return Path(store.path) / "packs" / "000001.pack"


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def _fresh(store: Store) -> Store:
    """The store opened again: its index as the files hold it now."""
    return Store(store.path, create=False)


def _bad(store: Store) -> list[tuple[int, int, int]]:
    image = _fresh(store).load(1)
    bad = image.reader.bad_runs()
    assert v1.verify_pages(image) == bad  # img-info --verify's answer for it too
    return [(run.vaddr, run.count, run.offset) for run in bad]


def test_undamaged_store_passes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert _chunk(store, zstd=True)[0] == 0 and _chunk(store, zstd=False)[1] == 2 * PAGE_SIZE
    assert _bad(store) == []
    image = store.load(1)
    image.reader.check_pages()
    assert image.page_at(NOISE_AT + PAGE_SIZE) == _noise(2)[PAGE_SIZE:]


def test_raw_chunk_with_one_flipped_byte(tmp_path: Path) -> None:
    store = _store(tmp_path)
    offset, _ = _chunk(store, zstd=False)
    _flip(_pack(store), offset + PAGE_SIZE + 100)  # the second noise page
    assert _bad(store) == [(NOISE_AT + PAGE_SIZE, 1, offset)]
    with pytest.raises(ImageError) as refused:
        _fresh(store).load(1).reader.check_pages()
    assert str(refused.value) == (
        f"checkpoint 1: page {NOISE_AT + PAGE_SIZE:#x} is damaged: the chunk at offset "
        f"{offset:#x} of {_pack(store)} holds it with bytes that do not match its xxh3-128 in "
        "the page index")
    out = tmp_path / "x.img"
    with pytest.raises(ImageError, match=f"page {NOISE_AT + PAGE_SIZE:#x} is damaged"):
        store.export(1, str(out))  # not laundered into an image with a fresh checksum
    assert not out.exists()


def test_zstd_chunk_damaged(tmp_path: Path) -> None:
    store = _store(tmp_path)
    offset, length = _chunk(store, zstd=True)
    _flip(_pack(store), offset + length // 2)
    assert _bad(store) == [(TEXT_AT, TEXT_PAGES, offset)]
    with pytest.raises(ImageError, match=f"checkpoint 1: page {TEXT_AT:#x} is damaged: the "
                       f"chunk at offset {offset:#x} of .*000001.pack does not decompress.*"
                       rf"\({TEXT_PAGES} damaged pages in all\)"):
        _fresh(store).load(1).reader.check_pages()


def _replace_chunk(store: Store, zstd: bool, stored: bytes) -> None:
    """The chunk's bytes replaced (in place: no longer), its records' length made to match."""
    offset, length = _chunk(store, zstd)
    assert len(stored) <= length
    pack = bytearray(_pack(store).read_bytes())
    pack[offset:offset + len(stored)] = stored
    _pack(store).write_bytes(bytes(pack))
    index = Path(store.path) / "pages.idx"
    data = bytearray(index.read_bytes())
    size = store_pages.INDEX_RECORD.size
    for i, record in enumerate(_records(store)):
        if record[2] == offset:
            data[i * size:(i + 1) * size] = store_pages.INDEX_RECORD.pack(
                record[0], record[1], offset, len(stored), record[4], record[5])
    index.write_bytes(bytes(data))


def test_zstd_chunk_decoding_short(tmp_path: Path) -> None:
    """A frame holding all but the last of the chunk's pages: that page is named."""
    store = _store(tmp_path)
    _replace_chunk(store, True, _frame(_text()[:-PAGE_SIZE]))
    last = TEXT_PAGES - 1
    assert _bad(store) == [(TEXT_AT + last * PAGE_SIZE, 1, 0)]
    with pytest.raises(ImageError, match=f"holds {last} pages, not the page of slot {last}"):
        _fresh(store).load(1).reader.check_pages()


def test_zstd_frame_whose_header_lies(tmp_path: Path) -> None:
    """Two frames in one chunk: the header of the first says less than the chunk decodes to
    (a restore reading the chunk whole and in part would disagree): refused."""
    store = _store(tmp_path)
    _replace_chunk(store, True, _frame(_text()[:-PAGE_SIZE]) + _frame(_text()[-PAGE_SIZE:]))
    assert _bad(store) == [(TEXT_AT, TEXT_PAGES, 0)]
    size = TEXT_PAGES * PAGE_SIZE
    with pytest.raises(ImageError, match=f"decompresses to {size} bytes, its header says "
                       f"{size - PAGE_SIZE}"):
        _fresh(store).load(1).reader.check_pages()


def _frame(data: bytes) -> bytes:
    out = memoryview(bytearray(zstdfast.bound(len(data))))
    return bytes(out[:zstdfast.compress_into(data, out, 3)])


def test_chunk_past_the_end_of_its_pack(tmp_path: Path) -> None:
    store = _store(tmp_path)
    offset, _ = _chunk(store, zstd=False)
    with open(_pack(store), "r+b") as f:
        f.truncate(offset + PAGE_SIZE)
    assert _bad(store) == [(NOISE_AT, 2, offset)]
    with pytest.raises(ImageError, match="lies past the end of the pack"):
        _fresh(store).load(1).reader.check_pages()


def test_pages_shared_between_checkpoints(tmp_path: Path) -> None:
    """A checkpoint that uses part of an earlier one's chunk: only its own pages count."""
    store = _store(tmp_path)
    store.add(_image(), pages=[(TEXT_AT, _text()[:PAGE_SIZE] + page(9))])  # one of pack 1
    offset, _ = _chunk(store, zstd=False)
    _flip(_pack(store), offset + 100)  # a noise page checkpoint 2 does not use
    image = store.load(2)
    assert image.reader.bad_runs() == []
    assert [r.vaddr for r in store.load(1).reader.bad_runs()] == [NOISE_AT]


# ---- in GDB ----

def _address(store: Store, page_id: int) -> int:
    """The first address of checkpoint 1 whose page is `page_id`."""
    image, ids, at = store.load(1), store.page_ids(1), 0
    for run in image.runs:
        if page_id in ids[at:at + run.count]:
            return run.vaddr + ids[at:at + run.count].index(page_id) * PAGE_SIZE
        at += run.count
    raise AssertionError(page_id)


def _damaged_copy(good: Path, to: Path, zstd: bool) -> tuple[int, int, Path]:
    """A copy of the store with one byte of a chunk flipped: a raw chunk's in its second
    page, a zstd chunk's in the middle. (address of the first damaged page, chunk offset,
    pack file)."""
    shutil.copytree(good, to)
    store = Store(str(to), create=False)
    used = set(store.page_ids(1))
    records = _records(store)
    page_id = next(i for i, r in enumerate(records) if i in used and r[4] == 1
                   and bool(r[5] & store_pages.FLAG_ZSTD) == zstd)
    _, pack, offset, length, _, _ = records[page_id]
    path = Path(store_pages.pack_path(str(to), pack))
    _flip(path, offset + length // 2 if zstd else offset + PAGE_SIZE + 8)
    first = page_id if not zstd else min(
        (i for i, r in enumerate(records) if i in used and r[1:3] == (pack, offset)),
        key=lambda i: _address(store, i))
    return _address(store, first), offset, path


@needs_gdb
def test_gdb_refuses_a_damaged_store_before_any_change(tmp_path: Path) -> None:
    """The program stopped at its checkpoint is offered its own checkpoint from a store with a
    raw chunk (one flipped byte) and one with a zstd chunk damaged: each restore is refused in
    one line naming the checkpoint, the page and the pack, and the program then runs to its
    end with its own output. The undamaged store restores as before."""
    binary = compile_program("store_check", tmp_path)
    expected = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60,
                              check=True).stdout
    good = tmp_path / "good"
    out = tmp_path / "out"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run > {out}").get("reason") == "breakpoint-hit"
        probe = ("python import gdb, zlib; i = gdb.selected_inferior(); "
                 "print(gdb.execute('info registers rip rsp rbp', to_string=True), "
                 "zlib.crc32(i.read_memory(int(gdb.parse_and_eval('$sp')) & ~4095, 4096)))")
        before = gdb.console(probe)
        gdb.console(f"img-checkpoint --store {good}")
        for zstd in (False, True):
            damaged = tmp_path / ("zstd" if zstd else "raw")
            address, offset, pack = _damaged_copy(good, damaged, zstd)
            with pytest.raises(GdbError) as refused:
                gdb.console(f"img-restore 1 --store {damaged} --yes")
            message = str(refused.value)
            assert f"checkpoint 1: page {address:#x} is damaged: the chunk at offset " \
                   f"{offset:#x} of {pack} " in message, message
            assert ("does not decompress" if zstd else "xxh3-128") in message, message
            assert "the inferior was not changed" in message and "Traceback" not in message
            assert gdb.console(probe) == before
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
        assert out.read_text() == expected
        gdb.console(f"set args > {tmp_path / 'again'}")
        gdb.console(f"img-restore 1 --store {good} --yes")
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    assert (tmp_path / "again").read_text() == expected


@needs_lldb
def test_lldb_refuses_a_damaged_store_before_any_change(tmp_path: Path) -> None:
    """The same in LLDB: both refusals, then the program runs to its end with its output (the
    restores go through HandleCommand: a failed command would end the batch)."""
    binary = compile_program("store_check", tmp_path)
    expected = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60,
                              check=True).stdout
    good = tmp_path / "good"
    taken = lldb_batch(f"settings set target.output-path {tmp_path / 'first'}",
                       "breakpoint set -n checkpoint", "run",
                       f"img-checkpoint --store {good}", "kill", program=binary)
    assert "error:" not in taken.stdout + taken.stderr, taken.stdout + taken.stderr
    damaged = {zstd: _damaged_copy(good, tmp_path / ("zstd" if zstd else "raw"), zstd)
               for zstd in (False, True)}
    out = tmp_path / "out"
    restores = [f"script lldb.debugger.HandleCommand('img-restore 1 --store "
                f"{tmp_path / name}')" for name in ("raw", "zstd")]
    done = lldb_batch(f"settings set target.output-path {out}", "breakpoint set -n checkpoint",
                      "run", *restores, "continue", program=binary)
    said = done.stdout + done.stderr
    for address, offset, pack in damaged.values():
        assert f"checkpoint 1: page {address:#x} is damaged: the chunk at offset {offset:#x} " \
               f"of {pack} " in said, said
    assert said.count("the inferior was not changed") == 2, said
    assert "exited with status = 0" in done.stdout, said
    assert read(out) == expected
