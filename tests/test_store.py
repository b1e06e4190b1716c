"""The checkpoint store (binfmt_img.store): its format on synthetic images, and in real GDB and
LLDB three checkpoints of a threaded program restored in other sessions, in any order."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import zstandard
from cprogs import compile_program
from gdbmi import Gdb
from lldb_helpers import lldb_batch, lldb_missing, read
from selfcheck import GDB_SIGNALS, passes
from synthetic import make_image, page, pages

from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file, packed, v1
from binfmt_img.formats.model import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, Vma
from binfmt_img.store import Store
from binfmt_img.store import pages as store_pages

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")

CHANGED = 16  # pages store_threads.c rewrites between checkpoints


def _all_pages(chunks) -> dict[int, bytes]:
    out = {}
    for vaddr, data in chunks:
        for at in range(0, len(data), PAGE_SIZE):
            if bytes(data[at:at + PAGE_SIZE]) != bytes(PAGE_SIZE):
                out[vaddr + at] = bytes(data[at:at + PAGE_SIZE])
    return out


# ---- the format, on synthetic images ----

def test_round_trip_and_dedup(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    first = store.add(make_image(), "start", pages=pages())
    assert (first.number, first.name, first.threads) == (1, "start", 2)
    assert first.new_pages == first.pages == 11  # the heap's zero page is left out
    again = store.add(make_image(), pages=pages())
    assert (again.number, again.new_pages, again.pages) == (2, 0, 11)
    changed = [(v, page(v + 1) if v == 0x7F0000000000 else d) for v, d in pages()]
    third = store.add(make_image(), pages=changed)
    assert (third.new_pages, third.new_bytes) == (1, PAGE_SIZE)
    assert third.size < first.size
    image = store.load("start")
    expected = make_image()
    assert [t.registers for t in image.threads] == [t.registers for t in expected.threads]
    assert image.vmas == expected.vmas and image.exe_path == expected.exe_path
    stored = _all_pages(pages())
    for vaddr, data in stored.items():
        assert image.page_at(vaddr) == data, hex(vaddr)
    assert store.load(3).page_at(0x7F0000000000) == page(0x7F0000000001)
    assert [e.number for e in store.entries()] == [1, 2, 3]


def test_resolve_and_names(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    store.add(make_image(), "a b", pages=pages())
    assert store.resolve("1").name == "a b" and store.resolve(1).number == 1
    assert store.resolve("a b").number == 1
    with pytest.raises(ImageError, match="no checkpoint 'zz'.*1 \\(a b\\)"):
        store.resolve("zz")
    for bad in ("12", "", " x", "a\nb"):
        with pytest.raises(ImageError, match="invalid checkpoint name"):
            store.add(make_image(), bad, pages=pages())
    with pytest.raises(ImageError, match="exists already"):
        store.add(make_image(), "a b", pages=pages())


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BINFMT_IMG_STORE", raising=False)
    assert Store.default_path("/w") == "/w/img-checkpoints"
    monkeypatch.setenv("BINFMT_IMG_STORE", "/env")
    assert Store.default_path("/w") == "/env"
    assert Store.default_path("/w", "d") == "/w/d"


def test_delete_and_prune_free_packs(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    store.add(make_image(), pages=pages())
    for i in range(3):  # each adds one page of its own
        store.add(make_image(), pages=[(v, page(0x1000 + i) if v == 0x7F0000001000 else d)
                                       for v, d in pages()])
    packs = tmp_path / "s" / "packs"
    assert len(list(packs.iterdir())) == 4
    store.delete(2)
    assert sorted(p.name for p in packs.iterdir()) == ["000001.pack", "000003.pack",
                                                       "000004.pack"]
    gone = store.prune(1)
    assert [e.number for e in gone] == [1, 3]
    # The first pack still holds the pages checkpoint 4 shares with it.
    assert sorted(p.name for p in packs.iterdir()) == ["000001.pack", "000004.pack"]
    assert store.load(4).page_at(0x7F0000001000) == page(0x1002)
    new = store.add(make_image(), pages=pages())
    assert new.number == 5 and new.new_pages == 0  # numbers never come back


def test_export_import(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    store.add(make_image(), "x", pages=pages())
    path = tmp_path / "x.img"
    store.export("x", str(path))
    image = image_file.load(str(path))
    assert _all_pages((r.vaddr, b"".join(image.run_data(r))) for r in image.runs) \
        == _all_pages(pages())
    other = Store(str(tmp_path / "t"))
    entry = other.import_image(str(path), "y")
    assert entry.new_pages == 11
    assert other.load("y").page_at(0x400000) == page(0x400000)


def test_damage_is_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    store.add(make_image(), pages=pages())
    manifest = tmp_path / "s" / "checkpoints" / "000001.ckpt"
    data = bytearray(manifest.read_bytes())
    data[-3] ^= 0xFF
    manifest.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="checksum mismatch in the page map"):
        store.load(1)
    store.add(make_image(), pages=pages())
    (tmp_path / "s" / "packs" / "000001.pack").write_bytes(b"\0" * 100)
    image = store.load(2)
    with pytest.raises(ImageError):
        image.page_at(0x400000)
    (tmp_path / "s" / "packs" / "000001.pack").unlink()
    with pytest.raises(ImageError, match="pack 1 of the store: No such file"):
        store.load(2)  # before a restore starts anything


def test_loaded_checkpoint_outlives_a_prune(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    store.add(make_image(), pages=pages())
    image = store.load(1)
    Store(str(tmp_path / "s")).prune(0)  # another debugger
    assert not list((tmp_path / "s" / "packs").iterdir())
    assert image.page_at(0x400000) == page(0x400000)


def test_compression_per_chunk(tmp_path: Path) -> None:
    assert store_pages.compress(bytes(PAGE_SIZE) * 4)[1] == store_pages.FLAG_ZSTD
    noise = os.urandom(PAGE_SIZE * 4)
    assert store_pages.compress(noise) == (noise, 0)
    store = Store(str(tmp_path / "s"))
    store.add(make_image(), pages=[(0x600000, page(1) + page(2) + page(3))])
    entry = store.add(make_image(), pages=[(0x600000, page(1) + page(2) + page(3)),
                                           (0x7F0000000000, noise[:2 * PAGE_SIZE])])
    assert entry.new_pages == 2
    packs = tmp_path / "s" / "packs"
    assert (packs / "000001.pack").stat().st_size < PAGE_SIZE  # compressed
    assert (packs / "000002.pack").stat().st_size == 2 * PAGE_SIZE  # stored raw
    image = store.load(2)
    assert image.page_at(0x7F0000001000) == noise[PAGE_SIZE:2 * PAGE_SIZE]
    view = memoryview(bytearray(5 * PAGE_SIZE))
    image.reader.read_into(0, view)  # every page at once, across both packs
    assert bytes(view[:PAGE_SIZE]) == page(1)
    assert bytes(view[3 * PAGE_SIZE:]) == noise[:2 * PAGE_SIZE]


def test_blobs(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    digest = store.put_blob(b"libc " * 1000)
    assert store.put_blob(b"libc " * 1000) == digest and store.has_blob(digest)
    assert store.get_blob(digest) == b"libc " * 1000
    with pytest.raises(ImageError):
        store.get_blob("0" * 32)


# ---- in real debuggers ----

def _entries(text: str) -> list[dict]:
    return json.loads(text[text.index("["):])


@needs_gdb
def test_gdb_three_checkpoints(tmp_path: Path) -> None:
    binary = compile_program("store_threads", tmp_path)
    store = tmp_path / "store"
    gdb = Gdb(str(binary))
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console("break checkpoint")
        gdb.until_stopped(f"run > {tmp_path / 'part1'}")
        said = gdb.console(f"img-checkpoint first --store {store}")
        assert "checkpoint 1 (first)" in said, said
        gdb.until_stopped("continue")
        gdb.console(f"img-checkpoint --store {store}")
        gdb.until_stopped("continue")
        gdb.console(f"img-checkpoint third --store {store}")
        listed = gdb.console(f"img-checkpoints --store {store}")
        assert "checkpoint at checkpoint.h:3" in listed and "third" in listed, listed
        entries = _entries(gdb.console(f"img-checkpoints --store {store} --json"))
        gdb.console(f"img-checkpoint --export 2 {tmp_path / 'two.img'} --store {store}")
    finally:
        gdb.close()
    # The second checkpoint adds about the pages the program changed.
    assert [e["number"] for e in entries] == [1, 2, 3]
    assert CHANGED <= entries[1]["new_pages"] <= CHANGED + 24, entries
    assert entries[1]["size"] < entries[0]["size"], entries

    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        for ref in ("2", "third", "1"):  # any order, one after another
            gdb.console(f"set args > {tmp_path / f'out.{ref}'}")
            gdb.console(f"img-restore {ref} --store {store} --yes")
            stop = gdb.until_stopped("continue")
            assert stop.get("reason") == "exited-normally", stop
        gdb.console(f"set args > {tmp_path / 'out.file'}")
        gdb.console(f"img-restore {tmp_path / 'two.img'}")
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    for ref, first in (("1", 1), ("2", 2), ("third", 3), ("file", 2)):
        text = (tmp_path / f"out.{ref}").read_text()
        assert text.startswith(f"resumed after checkpoint {first}\n"), (ref, text)
        passes(text, 3)


@needs_gdb
def test_gdb_manage(tmp_path: Path) -> None:
    binary = compile_program("store_threads", tmp_path)
    store = tmp_path / "store"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        gdb.until_stopped(f"run > {tmp_path / 'part1'}")
        gdb.console(f"img-checkpoint a --store {store}")
        gdb.console(f"img-checkpoint b --store {store}")
        gdb.console(f"img-checkpoint c --store {store}")
        assert "deleted checkpoint 2 (b)" in gdb.console(f"img-checkpoint --delete b "
                                                         f"--store {store}")
        said = gdb.console(f"img-checkpoint --prune 1 --store {store}")
        assert "deleted 1 checkpoints (1 (a)), kept the last 1" in said, said
        image = tmp_path / "c.img"
        gdb.console(f"img-checkpoint --export c {image} --store {store}")
        said = gdb.console(f"img-checkpoint --import {image} again --store {store}")
        assert "as checkpoint 4 (again) (0 B new)" in said, said
        listed = gdb.console(f"img-checkpoints --store {store}")
        assert "again" in listed and " b " not in listed, listed
        with pytest.raises(AssertionError, match="no checkpoint 'b'"):
            gdb.console(f"img-restore b --store {store} --yes")
        # A compressed single image, restored over the live process.
        packed_image = tmp_path / "packed.img"
        gdb.console(f"img-dump {packed_image} --compress")
        gdb.console(f"img-dump {tmp_path / 'plain.img'}")
        gdb.console(f"set args > {tmp_path / 'out'}")
        gdb.console("delete")
        gdb.console(f"img-restore {packed_image} --yes")
        assert gdb.until_stopped("continue").get("reason") == "exited-normally"
    finally:
        gdb.close()
    assert packed_image.stat().st_size < (tmp_path / "plain.img").stat().st_size / 4
    text = (tmp_path / "out").read_text()
    assert text.startswith("resumed after checkpoint 1\n"), text
    passes(text, 3)


@needs_lldb
def test_lldb_three_checkpoints(tmp_path: Path) -> None:
    binary = compile_program("store_threads", tmp_path)
    store = tmp_path / "store"
    taken = lldb_batch(f"settings set target.output-path {tmp_path / 'part1'}",
                       "breakpoint set -n checkpoint", "run",
                       f"img-checkpoint one --store {store}", "continue",
                       f"img-checkpoint --store {store}", "continue",
                       f"img-checkpoint three --store {store}",
                       f"img-checkpoints --store {store}",
                       f"img-checkpoints --store {store} --json", "kill", program=binary)
    out = taken.stdout + taken.stderr
    assert "error:" not in out, out
    assert "checkpoint at checkpoint.h:3" in out, out
    entries = json.loads(next(line for line in taken.stdout.splitlines()
                              if line.startswith("[{")))
    assert CHANGED <= entries[1]["new_pages"] <= CHANGED + 24, entries
    for ref in ("three", "1"):
        outfile = tmp_path / f"out.{ref}"
        restored = lldb_batch(f"settings set target.output-path {outfile}",
                              f"img-restore {ref} --store {store}", "continue")
        output = restored.stdout + restored.stderr
        assert "exited with status = 0" in restored.stdout, output
        text = read(outfile)
        first = 3 if ref == "three" else 1
        assert text.startswith(f"resumed after checkpoint {first}\n"), (ref, text)
        passes(text, 3)


# ---- compressed single images ----

BIG = 0x10000000  # an anonymous mapping of 256 pages, added to the synthetic image


def _compressed(tmp_path: Path, chunks=None) -> Path:
    path = tmp_path / "c.img"
    image = make_image()
    image.vmas.append(Vma(BIG, BIG + 256 * PAGE_SIZE, 3, MAP_PRIVATE | MAP_ANONYMOUS))
    image.vmas.sort(key=lambda v: v.start)
    image_file.save(str(path), image, "v1", pages() if chunks is None else chunks,
                    compress=True)
    return path


def test_compressed_image_round_trip(tmp_path: Path) -> None:
    path = _compressed(tmp_path)
    raw = tmp_path / "r.img"
    image_file.save(str(raw), make_image(), "v1", pages())
    assert path.stat().st_size < raw.stat().st_size / 2
    assert struct.unpack_from("<I", path.read_bytes(), 4)[0] == v1.VERSION_COMPRESSED
    image = image_file.load(str(path))
    assert v1.verify_pages(image) == []
    for vaddr, data in _all_pages(pages()).items():
        assert image.page_at(vaddr) == data, hex(vaddr)
    # Incompressible pages are stored raw, page aligned; long runs are split.
    noise = os.urandom(3 * PAGE_SIZE)
    heap = b"".join(page(BIG + i) for i in range(packed.RUN_PAGES + 3))
    mixed = _compressed(tmp_path, [(BIG, heap), (BIG + 128 * PAGE_SIZE, noise)])
    image = image_file.load(str(mixed))
    assert [r.count for r in image.runs] == [packed.RUN_PAGES, 3, 3]
    stored = image.reader.stored
    assert [s.compressed for s in stored] == [True, True, False]
    assert stored[2].offset % PAGE_SIZE == 0
    assert image.page_at(BIG + 130 * PAGE_SIZE) == noise[2 * PAGE_SIZE:]
    assert image.page_at(BIG + 66 * PAGE_SIZE) == page(BIG + 66)


def test_compressed_image_damage(tmp_path: Path) -> None:
    path = _compressed(tmp_path)
    image = image_file.load(str(path))
    first = image.reader.stored[0]
    data = bytearray(path.read_bytes())
    data[first.offset + first.length // 2] ^= 0x55
    path.write_bytes(bytes(data))
    image = image_file.load(str(path))
    assert [r.vaddr for r in v1.verify_pages(image)] == [first.vaddr]
    with pytest.raises(ImageError, match="no longer matches its checksum"):
        image.page_at(first.vaddr)
    # A compressed run in an image of the plain version is refused by the reader.
    plain = bytearray(_compressed(tmp_path).read_bytes())
    struct.pack_into("<I", plain, 4, v1.VERSION)
    with pytest.raises(ImageError, match="marked compressed"):
        image_file.parse(memoryview(bytes(plain)))


def test_compressed_frame_claiming_too_much() -> None:
    frame = zstandard.ZstdCompressor().compress(bytes(PAGE_SIZE * 2))
    with pytest.raises(ImageError, match="claims 8192 bytes, 4096 expected"):
        packed._decompress(frame, PAGE_SIZE, 0x1000)


@needs_lldb
def test_lldb_compressed_image(tmp_path: Path) -> None:
    binary = compile_program("store_threads", tmp_path)
    image = tmp_path / "c.img"
    dumped = lldb_batch(f"settings set target.output-path {tmp_path / 'part1'}",
                        "breakpoint set -n checkpoint", "run", "continue",
                        f"img-dump {image} --compress-with zstd", "kill", program=binary)
    assert image.exists(), dumped.stdout + dumped.stderr
    assert struct.unpack_from("<I", image.read_bytes(), 4)[0] == v1.VERSION_COMPRESSED
    restored = lldb_batch(f"settings set target.output-path {tmp_path / 'out'}",
                          f"img-restore {image}", "continue")
    assert "exited with status = 0" in restored.stdout, restored.stdout + restored.stderr
    text = read(tmp_path / "out")
    assert text.startswith("resumed after checkpoint 2\n"), text
    passes(text, 3)


def test_many_pages_across_chunks(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    count = 3 * store_pages.CHUNK_PAGES + 5
    heap = b"".join(page(BIG + i % (count - 7)) for i in range(count))  # 7 repeat earlier ones
    image = make_image()
    image.vmas.append(Vma(BIG, BIG + 256 * PAGE_SIZE, 3, MAP_PRIVATE | MAP_ANONYMOUS))
    entry = store.add(image, pages=[(BIG, heap)])
    assert (entry.pages, entry.new_pages) == (count, count - 7)
    loaded = store.load(1)
    view = memoryview(bytearray(count * PAGE_SIZE))
    loaded.reader.read_into(0, view)
    assert bytes(view) == heap
    piece = memoryview(bytearray(70 * PAGE_SIZE))  # a piece starting inside a chunk
    loaded.reader.read_into(60 * PAGE_SIZE, piece)
    assert bytes(piece) == heap[60 * PAGE_SIZE:130 * PAGE_SIZE]


def test_restore_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from binfmt_img.store import frontend

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BINFMT_IMG_STORE", raising=False)
    assert frontend.restore_source("1", None) is None  # no store here: a file name
    Store(str(tmp_path / "img-checkpoints")).add(make_image(), "x", pages=pages())
    image, what = frontend.restore_source("x", None)
    assert what == "checkpoint 1 (x)" and image.page_at(0x400000) == page(0x400000)
    (tmp_path / "x").write_bytes(b"")
    assert frontend.restore_source("x", None) is None  # a path that exists wins
    with pytest.raises(ImageError, match="no such checkpoint store"):
        frontend.restore_source("1", str(tmp_path / "elsewhere"))


@needs_lldb
def test_lldb_manage(tmp_path: Path) -> None:
    binary = compile_program("store_threads", tmp_path)
    store, image = tmp_path / "store", tmp_path / "b.img"
    done = lldb_batch(f"settings set target.output-path {tmp_path / 'part1'}",
                      "breakpoint set -n checkpoint", "run",
                      f"img-checkpoint a --store {store}", f"img-checkpoint b --store {store}",
                      f"img-checkpoint --delete a --store {store}",
                      f"img-checkpoint --export b {image} --store {store}",
                      f"img-checkpoint --import {image} c --store {store}",
                      f"img-checkpoint --prune 1 --store {store}",
                      f"img-checkpoints --store {store}", "kill", program=binary)
    out = done.stdout + done.stderr
    assert "error:" not in out, out
    for said in ("deleted checkpoint 1 (a)", f"checkpoint 2 (b) exported to {image}",
                 "as checkpoint 3 (c) (0 B new)", "deleted 1 checkpoints (2 (b))"):
        assert said in out, out
    table = out[out.index("img-checkpoints --store"):]
    assert "\n3    c " in table and " b " not in table, table


def test_save_a_reader_image_with_long_runs(tmp_path: Path) -> None:
    """image_file.save's own page chunks of an image read through a reader: runs longer
    than one 16 MiB piece come out whole."""
    from binfmt_img.formats import model

    store = Store(str(tmp_path / "s"))
    image = make_image()
    image.vmas.append(Vma(BIG, BIG + 256 * PAGE_SIZE, 3, MAP_PRIVATE | MAP_ANONYMOUS))
    heap = b"".join(page(BIG + i) for i in range(40))
    store.add(image, pages=[(BIG, heap)])
    loaded = store.load(1)
    real = model._read_through
    try:  # pieces of 16 pages stand for 16 MiB ones
        model._read_through = lambda r, o, s, piece=16 * PAGE_SIZE: real(r, o, s, piece)
        image_file.save(str(tmp_path / "x.img"), loaded)
    finally:
        model._read_through = real
    saved = image_file.load(str(tmp_path / "x.img"))
    assert b"".join(bytes(c) for r in saved.runs for c in saved.run_data(r)) == heap
