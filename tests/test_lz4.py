"""LZ4 runs of compressed images (version 0x202, formats/lz4fast, docs/FORMAT.md "LZ4 runs"):
synthetic round trips, blocks that lie or are cut short refused in one line without writing
past their place, older images read as before, liblz4 missing; and in real GDB and LLDB a
program dumped with `img-dump --compress`, checked with img-info --verify and restored."""

from __future__ import annotations

import mmap
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from cprogs import compile_program
from gdbmi import Gdb
from lldb_helpers import lldb_batch, lldb_missing, read
from selfcheck import GDB_SIGNALS, LLDB_SIGNALS, passes
from test_gdb_restore import restore_and_finish
from test_page_paths import BIG, _chunks, _expected, _heap, _image, _read_all, _with_heap

from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file, lz4fast, packed, v1
from binfmt_img.formats.model import PAGE_SIZE

pytestmark = pytest.mark.skipif(not lz4fast.AVAILABLE, reason=lz4fast.MISSING)
needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")
IMG_INFO = Path(__file__).resolve().parent.parent / "scripts" / "img-info"


def _lz4_image(tmp_path: Path, data: bytes | None = None, chunk: int = 300) -> Path:
    path = tmp_path / "l.img"
    image_file.save(str(path), _with_heap(), "v1", _chunks(data or _heap(), chunk * PAGE_SIZE),
                    compress="lz4")
    return path


def _block(data: bytes) -> bytes:
    out = memoryview(bytearray(lz4fast.bound(len(data))))
    return bytes(out[:lz4fast.compress_into(data, out)])


def _version(path: Path) -> int:
    return struct.unpack_from("<I", path.read_bytes(), 4)[0]


def test_blocks_round_trip_from_any_buffer() -> None:
    data = _heap()[:64 * PAGE_SIZE]
    mapped = mmap.mmap(-1, len(data))
    mapped[:] = data
    for source in (data, bytearray(data), memoryview(mapped), memoryview(data)):
        block = _block(source)
        assert len(block) < len(data) // 2
        out = memoryview(bytearray(len(data)))
        assert lz4fast.decompress_into(block, out) == len(data)
        assert bytes(out) == data


# Chunks of a few pages (many in flight, from copies), small ones, and one larger than
# pagedata.SMALL (compressed in place).
@pytest.mark.parametrize("chunk", [7, 300, 700])
def test_lz4_image_round_trip(tmp_path: Path, chunk: int) -> None:
    data = _heap()
    path = _lz4_image(tmp_path, data, chunk)
    assert _version(path) == v1.VERSION_LZ4
    image = image_file.load(str(path))
    assert v1.verify_pages(image) == []
    got = {vaddr: bytes(view) for vaddr, view in image.iter_pages() if vaddr >= BIG}
    assert got == _expected(data)
    stored = image.reader.stored
    assert any(s.lz4 for s in stored) and any(not s.compressed for s in stored)
    assert all(s.lz4 == s.compressed for s in stored)
    assert image.reader.codec == "lz4"
    for size in (PAGE_SIZE, 100 * PAGE_SIZE, 1 << 20):  # any pieces, two threads at once
        assert _read_all(image, size, 2) == _read_all(image, 1 << 24, 1)
    # Half the size of the plain image, or less, on these pages.
    plain = _image(tmp_path, data, False)
    assert path.stat().st_size < plain.stat().st_size * 0.6


def test_zstd_and_plain_images_keep_their_versions(tmp_path: Path) -> None:
    data = _heap()
    for compress, version in ((False, v1.VERSION), (True, v1.VERSION_COMPRESSED),
                              ("zstd", v1.VERSION_COMPRESSED)):
        path = tmp_path / f"{compress}.img"
        image_file.save(str(path), _with_heap(), "v1", _chunks(data, 300 * PAGE_SIZE),
                        compress=compress)
        assert _version(path) == version
        image = image_file.load(str(path))
        assert v1.verify_pages(image) == []
        got = {vaddr: bytes(view) for vaddr, view in image.iter_pages() if vaddr >= BIG}
        assert got == _expected(data)
    # An image of incompressible pages only holds no LZ4 block: 0x201, for older readers.
    noise = _heap(2)[400 * PAGE_SIZE:470 * PAGE_SIZE]
    path = tmp_path / "noise.img"
    image_file.save(str(path), _with_heap(), "v1", [(BIG, noise)], compress="lz4")
    assert _version(path) == v1.VERSION_COMPRESSED


def _sections(data: bytearray) -> list[tuple[int, int, int, int]]:
    """(entry's offset, type, offset, length) of each section of an image file's bytes."""
    count = struct.unpack_from("<I", data, 8)[0]
    out = []
    for i in range(count):
        at = v1.HEADER_SIZE + i * v1.ENTRY_SIZE
        kind, _crc, offset, length = struct.unpack_from("<IIQQ", data, at)
        out.append((at, kind, offset, length))
    return out


def _set_run(data: bytearray, index: int, run: list[int]) -> None:
    """Rewrite run record `index`, with the section's and the table's checksums fixed."""
    sections = _sections(data)
    at, _kind, offset, length = next(s for s in sections if s[1] == v1.SECTION_PAGE_RUNS)
    v1.RUN_RECORD.pack_into(data, offset + 4 + index * v1.RUN_RECORD.size, *run)
    struct.pack_into("<I", data, at + 4, zlib.crc32(data[offset:offset + length]))
    table = data[v1.HEADER_SIZE:v1.HEADER_SIZE + len(sections) * v1.ENTRY_SIZE]
    struct.pack_into("<I", data, 12, zlib.crc32(table))


def test_lz4_run_in_a_0x201_image_refused(tmp_path: Path) -> None:
    data = bytearray(_lz4_image(tmp_path).read_bytes())
    struct.pack_into("<I", data, 4, v1.VERSION_COMPRESSED)
    with pytest.raises(ImageError, match=r"marked LZ4 in a version 0x201 image"):
        image_file.parse(memoryview(bytes(data)))
    struct.pack_into("<I", data, 4, v1.VERSION)
    with pytest.raises(ImageError, match="marked compressed in a version 0x200 image"):
        image_file.parse(memoryview(bytes(data)))
    struct.pack_into("<I", data, 4, v1.VERSION_LZ4)
    runs = next(s for s in _sections(data) if s[1] == v1.SECTION_PAGE_RUNS)[2] + 4
    vaddr, count, offset, crc, _length = v1.RUN_RECORD.unpack_from(data, runs)
    _set_run(data, 0, [vaddr, count, offset, crc, packed.LZ4_BIT])
    with pytest.raises(ImageError, match=f"page run {vaddr:#x}: an LZ4 block of 0 bytes"):
        image_file.parse(memoryview(bytes(data)))


def test_lying_block_refused_without_writing_past_its_place() -> None:
    block = _block(bytes(range(256)) * 32)  # 8192 bytes
    buffer = memoryview(bytearray(b"\xee" * 3 * PAGE_SIZE))
    slot = buffer[PAGE_SIZE:2 * PAGE_SIZE]  # a run of one page: the block claims two
    with pytest.raises(ImageError, match=r"page run 0x1000 does not decompress"):
        packed._inflate(block, slot, 0x1000, lz4=True)
    assert bytes(buffer[2 * PAGE_SIZE:]) == b"\xee" * PAGE_SIZE  # nothing past it
    assert bytes(buffer[:PAGE_SIZE]) == b"\xee" * PAGE_SIZE
    short = _block(bytes(range(256)) * 8)  # 2048 bytes for a page of 4096
    with pytest.raises(ImageError, match="decompresses to 2048 bytes, 4096 expected"):
        packed._inflate(short, slot, 0x1000, lz4=True)
    with pytest.raises(ImageError, match="does not decompress"):  # cut short
        packed._decompress(block[:len(block) // 2], 2 * PAGE_SIZE, 0x1000, lz4=True)
    with pytest.raises(ImageError, match="does not decompress"):
        packed._decompress(b"", PAGE_SIZE, 0x1000, lz4=True)


def test_lying_block_in_an_image(tmp_path: Path) -> None:
    """A run record whose block makes more pages than the run holds, its crc32 right: the
    check before a restore decodes it and names it, and reading the run refuses it in one
    line."""
    path = _lz4_image(tmp_path)
    data = bytearray(path.read_bytes())
    image = image_file.load(str(path))
    first = next(i for i, s in enumerate(image.reader.stored) if s.lz4 and s.count > 1)
    run = image.reader.stored[first]
    del image
    runs = next(s for s in _sections(data) if s[1] == v1.SECTION_PAGE_RUNS)[2] + 4
    vaddr, count, offset, crc, length = v1.RUN_RECORD.unpack_from(
        data, runs + first * v1.RUN_RECORD.size)
    _set_run(data, first, [vaddr, count - 1, offset, crc, length])
    lying = tmp_path / "lying.img"
    lying.write_bytes(bytes(data))
    image = image_file.load(str(lying))
    bad = v1.verify_pages(image)
    assert [r.vaddr for r in bad] == [run.vaddr]
    assert bad[0].problem.startswith("does not decompress"), bad[0].problem
    with pytest.raises(ImageError, match=f"page run {run.vaddr:#x} does not decompress"):
        image.page_at(run.vaddr)
    # Cut short: the file ends inside the page data.
    cut = tmp_path / "cut.img"
    cut.write_bytes(path.read_bytes()[:run.offset + run.length // 2])
    with pytest.raises(ImageError, match="overrun the file|truncated"):
        image_file.load(str(cut))


def test_damaged_block_found_by_verify_and_reads(tmp_path: Path) -> None:
    path = _lz4_image(tmp_path)
    image = image_file.load(str(path))
    run = next(s for s in image.reader.stored if s.lz4)
    del image
    data = bytearray(path.read_bytes())
    data[run.offset + run.length // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    image = image_file.load(str(path))
    assert [r.vaddr for r in v1.verify_pages(image)] == [run.vaddr]
    with pytest.raises(ImageError, match="no longer matches its checksum"):
        _read_all(image, 1 << 20, 2)
    done = subprocess.run([sys.executable, str(IMG_INFO), "--verify", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr


def test_without_liblz4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _lz4_image(tmp_path)
    monkeypatch.setattr(lz4fast, "AVAILABLE", False)
    monkeypatch.setattr(lz4fast, "_lib", None)
    assert packed.codec_for("zstd") == ("zstd", None)
    codec, note = packed.codec_for(True)
    assert codec == "zstd" and note is not None and "liblz4" in note
    image = image_file.load(str(path))  # described without its pages (img-info)
    with pytest.raises(ImageError, match=r"^the image's pages are LZ4 blocks and liblz4 "):
        v1.verify_pages(image)  # a restore's check: before any change
    run = next(s for s in image.reader.stored if s.lz4)
    with pytest.raises(ImageError, match="is an LZ4 block and liblz4"):
        image.page_at(run.vaddr)
    with pytest.raises(ValueError, match="choose lz4 or zstd"):
        packed.codec_for("gzip")


def _img_info(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(IMG_INFO), "--verify", str(path)],
                          capture_output=True, text=True, timeout=60)


@needs_gdb
def test_gdb_compressed_dump_restores(tmp_path: Path) -> None:
    binary = compile_program("lz4_heap", tmp_path)
    fast, small = tmp_path / "fast.img", tmp_path / "small.img"
    part1 = tmp_path / "part1"
    gdb = Gdb(str(binary))
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run > {part1}").get("reason") == "breakpoint-hit"
        said = gdb.console(f"img-dump {fast} --compress")
        assert "img-dump:" in said, said
        gdb.console(f"img-dump {small} --compress-with zstd")
        with pytest.raises(AssertionError, match="invalid choice: 'gzip'"):
            gdb.console(f"img-dump {tmp_path / 'x.img'} --compress-with gzip")
        gdb.console("kill")
    finally:
        gdb.close()
    assert _version(fast) == v1.VERSION_LZ4 and _version(small) == v1.VERSION_COMPRESSED
    info = _img_info(fast)
    assert info.returncode == 0 and "version 0x202" in info.stdout, info.stdout + info.stderr
    assert "verify: OK" in info.stdout, info.stdout
    text = part1.read_text() + restore_and_finish(fast, tmp_path / "out", setup=(GDB_SIGNALS,))
    passes(text, 3)


@needs_lldb
def test_lldb_compressed_dump_restores(tmp_path: Path) -> None:
    binary = compile_program("lz4_heap", tmp_path)
    image = tmp_path / "fast.img"
    before, after = tmp_path / "part1", tmp_path / "part2"
    dumped = lldb_batch(f"settings set target.output-path {before}", LLDB_SIGNALS,
                        "breakpoint set -n checkpoint", "run", f"img-dump {image} --compress",
                        f"img-dump {tmp_path / 'x.img'} --compress-with gzip", "kill",
                        program=binary)
    output = dumped.stdout + dumped.stderr
    assert image.exists(), output
    assert "invalid choice: 'gzip' (choose from lz4, zstd)" in output, output
    assert not (tmp_path / "x.img").exists()
    assert _version(image) == v1.VERSION_LZ4
    info = _img_info(image)
    assert info.returncode == 0, info.stdout + info.stderr
    restored = lldb_batch(f"settings set target.output-path {after}", f"img-restore {image}",
                          LLDB_SIGNALS, "continue")
    output = restored.stdout + restored.stderr
    assert "exited with status = 0" in restored.stdout, output
    passes(read(before) + read(after), 3)


def test_img_pack_keeps_the_codec(tmp_path: Path) -> None:
    from binfmt_img.cli import img_pack

    image = _with_heap()  # its one file, the executable, is this Python's
    image.exe_path = sys.executable
    image.vmas = [vma for vma in image.vmas if not vma.path]
    path = tmp_path / "l.img"
    image_file.save(str(path), image, "v1", _chunks(_heap(), 300 * PAGE_SIZE), compress="lz4")
    packed_path = tmp_path / "packed.img"
    assert img_pack.main([str(path), "-o", str(packed_path)]) == 0
    assert _version(packed_path) == v1.VERSION_LZ4
    image = image_file.load(str(packed_path))
    assert v1.verify_pages(image) == [] and image.reader.codec == "lz4"
