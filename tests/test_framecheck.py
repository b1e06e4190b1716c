"""Compressed runs whose crc32 is right (an image crafted elsewhere computes it) but whose
frame or block does not decode to exactly the run's pages: the check before a restore
decodes every one (packed.RunReader.bad_runs) and names it, so the restore is refused before
its first change; img-info --verify says the same. Synthetic images for each kind of lie
(short, header lying about its size, corrupt sequence, content checksum), and in real GDB a
running program that a refused restore leaves running to its end, for both codecs."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from cprogs import compile_program
from gdbmi import Gdb, GdbError
from test_lz4 import _set_run
from test_page_paths import _chunks, _heap, _with_heap

from binfmt_img.formats import image_file, lz4fast, packed, v1, zstdfast
from binfmt_img.formats.model import PAGE_SIZE

needs_lz4 = pytest.mark.skipif(not lz4fast.AVAILABLE, reason=lz4fast.MISSING)
needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
IMG_INFO = Path(__file__).resolve().parent.parent / "scripts" / "img-info"
CODECS = [pytest.param("lz4", marks=needs_lz4), "zstd"]


def _encode(data: bytes, lz4: bool) -> bytes:
    out = memoryview(bytearray(max(lz4fast.bound(len(data)) if lz4 else 0,
                                   zstdfast.bound(len(data)))))
    size = (lz4fast.compress_into(data, out) if lz4
            else zstdfast.compress_into(data, out, packed.LEVEL))
    return bytes(out[:size])


def _target(path: Path, lz4: bool) -> tuple[int, packed.StoredRun, bytes]:
    """A compressed run of several pages: its index, record and pages."""
    image = image_file.load(str(path))
    index = next(i for i, s in enumerate(image.reader.stored)
                 if s.compressed and s.lz4 == lz4 and s.count > 1)
    return index, image.reader.stored[index], image.reader._pages(index)


def _rewrite(path: Path, out: Path, index: int, frame: bytes, lz4: bool,
             fewer: int = 0) -> Path:
    """`path` with run `index`'s frame replaced by `frame` (in its place: no longer than the
    old one) and its record's length and crc32 made to match; `fewer` pages in the record."""
    data = bytearray(path.read_bytes())
    image = image_file.load(str(path))
    run = image.reader.stored[index]
    assert len(frame) <= run.length
    data[run.offset:run.offset + len(frame)] = frame
    _set_run(data, index, [run.vaddr, run.count - fewer, run.offset, zlib.crc32(frame),
                           len(frame) | (packed.LZ4_BIT if lz4 else 0)])
    out.write_bytes(bytes(data))
    return out


def _short(path: Path, out: Path, lz4: bool) -> tuple[Path, packed.StoredRun]:
    """The image with one run's frame holding one page less than the run."""
    index, run, pages = _target(path, lz4)
    return _rewrite(path, out, index, _encode(pages[:-PAGE_SIZE], lz4), lz4), run


def _fcs_lies(frame: bytes, size: int) -> bytes:
    """A zstd frame whose header's content size field is made to say `size` (4 bytes)."""
    descriptor = frame[4]
    single = bool(descriptor & 0x20)
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    old = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
    return (frame[:4] + bytes([descriptor & 0x3F | 0x80]) + frame[5:at]
            + struct.pack("<I", size) + frame[at + old:])


def _image(tmp_path: Path, codec: str) -> Path:
    path = tmp_path / f"{codec}.img"
    image_file.save(str(path), _with_heap(), "v1", _chunks(_heap(), 300 * PAGE_SIZE),
                    compress=codec)
    assert v1.verify_pages(image_file.load(str(path))) == []
    return path


def _only_bad(path: Path, run: packed.StoredRun, problem: str) -> None:
    bad = v1.verify_pages(image_file.load(str(path)))
    assert [(r.vaddr, r.offset) for r in bad] == [(run.vaddr, run.offset)], bad
    assert problem in bad[0].problem, bad[0].problem


@pytest.mark.parametrize("codec", CODECS)
def test_short_frame_found_before_any_read(tmp_path: Path, codec: str) -> None:
    lz4 = codec == "lz4"
    bad, run = _short(_image(tmp_path, codec), tmp_path / "short.img", lz4)
    size = run.count * PAGE_SIZE
    _only_bad(bad, run, f"decompresses to {size - PAGE_SIZE} bytes, {size} expected")
    done = _img_info(bad)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{run.vaddr:#x}-" in done.stdout and "decompresses to" in done.stdout, done.stdout


def test_zstd_frame_whose_header_says_the_right_size(tmp_path: Path) -> None:
    """Its blocks decode to less than its header (and the run) says."""
    path = _image(tmp_path, "zstd")
    index, run, pages = _target(path, lz4=False)
    frame = _fcs_lies(_encode(pages[:-PAGE_SIZE], lz4=False), run.count * PAGE_SIZE)
    assert zstdfast.content_size(frame) == run.count * PAGE_SIZE
    bad = _rewrite(path, tmp_path / "fcs.img", index, frame, lz4=False)
    _only_bad(bad, run, "")


def test_zstd_frame_with_a_wrong_content_checksum(tmp_path: Path) -> None:
    """A restore checks a frame's own checksum as it decodes: the check before it does too."""
    path = _image(tmp_path, "zstd")
    index, run, pages = _target(path, lz4=False)
    frame = bytearray(_encode(pages, lz4=False))
    assert zstdfast.has_checksum(frame)
    frame[-1] ^= 0xFF
    bad = _rewrite(path, tmp_path / "sum.img", index, bytes(frame), lz4=False)
    _only_bad(bad, run, "does not decompress")


@needs_lz4
def test_lz4_block_cut_or_long(tmp_path: Path) -> None:
    path = _image(tmp_path, "lz4")
    index, run, pages = _target(path, lz4=True)
    block = _encode(pages, lz4=True)
    cut = _rewrite(path, tmp_path / "cut.img", index, block[:-5], lz4=True)
    _only_bad(cut, run, "does not decompress")
    # One page more than the run holds: fails at the end of the scratch buffer, not past it.
    longer = _rewrite(path, tmp_path / "long.img", index, block, lz4=True, fewer=1)
    _only_bad(longer, run, "does not decompress")


def _img_info(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(IMG_INFO), "--verify", str(path)],
                          capture_output=True, text=True, timeout=60)


@needs_gdb
@needs_lz4
def test_refused_before_any_change_and_the_program_runs_on(tmp_path: Path) -> None:
    """The program that was running (one thread: a restore replaces a process of several),
    stopped at a breakpoint, is offered an image (of itself, each codec) with a frame that
    decodes short: refused in one line naming the run, and the program runs to its end with
    its own output."""
    binary = compile_program("heap", tmp_path)
    expected = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60,
                              check=True).stdout
    out = tmp_path / "out"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run > {out}").get("reason") == "breakpoint-hit"
        probe = ("python import gdb, zlib; i = gdb.selected_inferior(); "
                 "print(gdb.execute('info registers rip rsp rbp fs_base', to_string=True), "
                 "zlib.crc32(i.read_memory(int(gdb.parse_and_eval('$sp')) & ~4095, 4096)))")
        before = gdb.console(probe)
        for codec, option in (("lz4", "--compress"), ("zstd", "--compress-with zstd")):
            good = tmp_path / f"{codec}.img"
            gdb.console(f"img-dump {good} {option}")
            bad, run = _short(good, tmp_path / f"{codec}-short.img", codec == "lz4")
            with pytest.raises(GdbError) as refused:
                gdb.console(f"img-restore {bad}")
            message = str(refused.value)
            assert f"the first at {run.vaddr:#x}" in message, message
            assert f"file offset {run.offset:#x}" in message, message
            assert "decompresses to" in message and "Traceback" not in message, message
            assert gdb.console(probe) == before
            info = _img_info(bad)
            assert info.returncode == 2 and f"{run.vaddr:#x}-" in info.stdout, info.stdout
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()
    text = out.read_text()
    assert text == expected and "round 7" in text, text
