"""formats/checksum: zlib's CRC-32 of file ranges on two threads, pieces joined by combine."""

from __future__ import annotations

import os
import random
import zlib

from binfmt_img.formats import checksum


def test_combine_matches_zlib() -> None:
    rng = random.Random(12)
    for _ in range(100):
        a = rng.randbytes(rng.randrange(0, 5000))
        b = rng.randbytes(rng.randrange(0, 5000))
        assert checksum.combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_file_ranges_in_pieces(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(checksum, "PIECE", 1 << 16)  # many pieces per range
    data = random.Random(5).randbytes(1 << 20)
    path = tmp_path / "data"
    path.write_bytes(data)
    ranges = [(0, len(data)), (4096, 300000), (7, 0), (len(data) - 10, 100), (3, 65537)]
    fd = os.open(path, os.O_RDONLY)
    try:
        got = checksum.file_ranges(fd, ranges)
    finally:
        os.close(fd)
    assert got == [zlib.crc32(data[o:o + s]) if o + s <= len(data) else None
                   for o, s in ranges]
