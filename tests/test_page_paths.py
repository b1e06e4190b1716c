"""The fast page paths of compressed images and the store (formats/zstdfast, formats/pagedata,
packed.RunReader, store.pages.PageReader, live/vmread): the bytes that come out are the bytes
that went in, whatever the piece boundaries and however many threads read at once; damage is
refused with one line. Synthetic data, no debugger."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard
from synthetic import make_image

from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file, packed, pagedata, v1, zstdfast
from binfmt_img.formats.model import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, Vma
from binfmt_img.live import vmread
from binfmt_img.live.pagewrite import joined, pieces
from binfmt_img.store import Store

BIG = 0x10000000
PAGES = 700  # more than ten runs of 64, and two chunks of the producer below


def _heap(seed: int = 1) -> bytes:
    """Compressible pages, a few zero pages among them, and some incompressible ones."""
    rng = random.Random(seed)
    out = bytearray()
    for i in range(PAGES):
        if i % 97 == 5:
            out += bytes(PAGE_SIZE)
        elif i % 131 == 7 or 400 <= i < 470:  # a raw run among them
            out += rng.randbytes(PAGE_SIZE)
        else:
            out += b"".join(struct.pack("<QQ", i, rng.randrange(1 << 16))
                            for _ in range(PAGE_SIZE // 16))
    return bytes(out)


def _chunks(data: bytes, size: int) -> list[tuple[int, memoryview]]:
    """The data as a dump's producer gives it: page-aligned buffers of `size` bytes."""
    out = []
    for at in range(0, len(data), size):
        buffer = mmap.mmap(-1, size)
        part = data[at:at + size]
        buffer[:len(part)] = part
        out.append((BIG + at, memoryview(buffer)[:len(part)]))
    return out


def _with_heap():
    image = make_image()
    image.vmas.append(Vma(BIG, BIG + PAGES * PAGE_SIZE, 3, MAP_PRIVATE | MAP_ANONYMOUS))
    image.vmas.sort(key=lambda v: v.start)
    return image


def _image(tmp_path: Path, data: bytes, compress: bool, chunk: int = 300 * PAGE_SIZE) -> Path:
    path = tmp_path / ("c.img" if compress else "p.img")
    image = _with_heap()
    image_file.save(str(path), image, "v1", _chunks(data, chunk), compress=compress)
    return path


def _expected(data: bytes) -> dict[int, bytes]:
    return {BIG + at: data[at:at + PAGE_SIZE] for at in range(0, len(data), PAGE_SIZE)
            if data[at:at + PAGE_SIZE] != bytes(PAGE_SIZE)}


@pytest.mark.parametrize("compress", [False, True])
def test_pages_round_trip(tmp_path: Path, compress: bool) -> None:
    data = _heap()
    image = image_file.load(str(_image(tmp_path, data, compress)))
    assert v1.verify_pages(image) == []
    got = {vaddr: bytes(view) for vaddr, view in image.iter_pages() if vaddr >= BIG}
    assert got == _expected(data)
    if not compress:  # runs continue across the producer's chunks, checksums chained
        assert [(r.vaddr, r.count) for r in image.runs if r.vaddr >= BIG][:1] == [(BIG, 5)]
        for run in image.runs:
            assert zlib.crc32(b"".join(image.run_data(run))) == run.checksum
    else:
        stored = image.reader.stored
        assert any(not s.compressed for s in stored) and any(s.compressed for s in stored)
        assert all(s.offset % PAGE_SIZE == 0 for s in stored if not s.compressed)


def _read_all(image, size: int, threads: int) -> bytes:
    """The image's page space read in pieces of `size` bytes by `threads` threads at once."""
    runs = joined(image.runs)
    todo = [p for r in runs for p in pieces(r, size)]
    out = bytearray(image.reader.size if hasattr(image.reader, "size")
                    else sum(r.count for r in image.runs) * PAGE_SIZE)

    def load(piece) -> None:
        view = memoryview(bytearray(piece.count * PAGE_SIZE))
        image.reader.read_into(piece.offset, view)
        out[piece.offset:piece.offset + len(view)] = view
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(load, todo))
    return bytes(out)


def _page_space(image) -> bytes:
    return b"".join(bytes(view) for run in image.runs for view in image.run_data(run))


@pytest.mark.parametrize("size", [PAGE_SIZE, 5 * PAGE_SIZE, 100 * PAGE_SIZE, 1 << 20])
def test_compressed_reads_in_any_pieces_from_two_threads(tmp_path: Path, size: int) -> None:
    image = image_file.load(str(_image(tmp_path, _heap(), True)))
    assert len(joined(image.runs)) < len(image.runs)  # adjacent 64-page runs joined
    whole = _page_space(image)
    assert _read_all(image, size, 2) == whole


def test_store_reads_whole_and_shared_chunks(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    data = _heap()
    store.add(_with_heap(), pages=_chunks(data, 300 * PAGE_SIZE))
    changed = bytearray(data)
    for i in range(3, PAGES, 50):  # a page here and there: new chunks and shared old ones
        changed[i * PAGE_SIZE:i * PAGE_SIZE + 8] = b"changed!"
    store.add(_with_heap(), pages=_chunks(bytes(changed), 300 * PAGE_SIZE))
    for number, expected in ((1, data), (2, bytes(changed))):
        image = store.load(number)
        got = {vaddr: bytes(view) for vaddr, view in image.iter_pages() if vaddr >= BIG}
        assert got == _expected(expected)
        for size in (PAGE_SIZE, 64 * PAGE_SIZE, 1 << 20):
            assert _read_all(image, size, 2) == _page_space(image)


def test_damaged_frame_refused_in_one_line(tmp_path: Path) -> None:
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(bytes(range(256)) * 64)
    out = memoryview(bytearray(len(frame) * 64))
    broken = bytearray(frame)
    broken[len(frame) // 2] ^= 0xFF
    with pytest.raises(zstdfast.ZstdFailure):  # its content checksum says so
        zstdfast.decompress_into(bytes(broken), out)
    with pytest.raises(ImageError, match="page run 0x1000 does not decompress"):
        packed._inflate(frame[:len(frame) // 2], out[:16384], 0x1000)
    with pytest.raises(ImageError, match="claims 16384 bytes, 4096 expected"):
        packed._inflate(frame, out[:4096], 0x1000)
    with pytest.raises(zstdfast.ZstdFailure):
        zstdfast.decompress_into(b"not a frame", out)
    assert zstdfast.decompress_into(frame, out) == 16384
    assert bytes(out[:16384]) == bytes(range(256)) * 64


def test_compress_into_is_a_checked_frame() -> None:
    data = _heap()[:64 * PAGE_SIZE]
    out = memoryview(bytearray(zstdfast.bound(len(data))))
    size = zstdfast.compress_into(data, out, packed.LEVEL)
    params = zstandard.get_frame_parameters(bytes(out[:size]))
    assert params.content_size == len(data) and params.has_checksum
    assert zstandard.ZstdDecompressor().decompress(bytes(out[:size])) == data


def test_gather_rewrites_a_partial_page(tmp_path: Path) -> None:
    writes: dict[int, bytes] = {}

    def write(offset: int, views: list[memoryview]) -> None:
        for view in views:
            assert offset % PAGE_SIZE == 0 and len(view) % PAGE_SIZE == 0
            writes[offset] = bytes(view)
            offset += len(view)
    gather = pagedata._Gather(write, 2 * PAGE_SIZE)
    gather.put(b"a" * 100)
    gather.flush()
    assert gather.put(b"b" * 50) == 2 * PAGE_SIZE + 100
    gather.align()
    gather.flush()
    assert writes[2 * PAGE_SIZE] == (b"a" * 100 + b"b" * 50).ljust(PAGE_SIZE, b"\0")
    assert gather.at == 3 * PAGE_SIZE


def test_large_writes_land_in_place(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    size = 4 * image_file.DirectWriter.GATHER + 3 * PAGE_SIZE
    data = os.urandom(size)
    buffer = mmap.mmap(-1, size)
    buffer[:] = data
    view = memoryview(buffer)
    views = [view[:PAGE_SIZE], view[PAGE_SIZE:size // 2 + PAGE_SIZE], view[size // 2 + PAGE_SIZE:]]
    for direct in (True, False):
        path.write_bytes(b"")
        with image_file.DirectWriter(str(path), direct=direct) as writer:
            writer.writev(PAGE_SIZE, views)
        assert path.read_bytes() == bytes(PAGE_SIZE) + data


def test_vmread_reads_this_process_and_refuses_what_it_cannot() -> None:
    source = mmap.mmap(-1, 3 * PAGE_SIZE)
    source[:] = os.urandom(3 * PAGE_SIZE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(source))
    out = memoryview(bytearray(3 * PAGE_SIZE))
    assert vmread.read_into(os.getpid(), address, out)
    assert bytes(out) == source[:]
    libc = ctypes.CDLL(None)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    none = libc.mmap(None, PAGE_SIZE, 0, 0x22, -1, 0)  # PROT_NONE, private anonymous
    try:
        assert not vmread.read_into(os.getpid(), none, out[:PAGE_SIZE])
    finally:
        libc.munmap(none, PAGE_SIZE)


def test_frame_changed_after_the_check_is_noticed_in_whole_reads(tmp_path: Path) -> None:
    path = _image(tmp_path, _heap(), True)
    image = image_file.load(str(path))
    run = next(s for s in image.reader.stored if s.compressed)
    with open(path, "r+b") as f:  # the file changes under the loaded image
        f.seek(run.offset + run.length // 2)
        byte = f.read(1)
        f.seek(run.offset + run.length // 2)
        f.write(bytes([byte[0] ^ 0x5A]))
    with pytest.raises(ImageError, match="no longer matches its checksum"):
        _read_all(image, 1 << 20, 2)


def test_crc32_is_zlibs_whatever_the_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    from binfmt_img.formats import crc

    data = os.urandom(1 << 18)
    buffer = mmap.mmap(-1, len(data))
    buffer[:] = data
    kinds = [data, memoryview(data), bytearray(data), memoryview(buffer),
             memoryview(buffer)[PAGE_SIZE:], memoryview(buffer).cast("Q"), data[:100]]
    for value in kinds:
        assert crc.crc32(value) == zlib.crc32(value)
        assert crc.crc32(value, 0x1234) == zlib.crc32(value, 0x1234)
    monkeypatch.setattr(crc, "_FAST", None)  # a system without libdeflate
    assert crc.crc32(memoryview(buffer), 7) == zlib.crc32(data, 7)
