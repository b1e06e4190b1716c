"""CRC-32 (zlib's) of byte ranges of a file, on two threads: the check of every page run
before a restore's first change reads and hashes all the page data, and one thread's
zlib.crc32 (under 2 GB/s) is the larger part of a 1 GiB restore's fixed cost. Each range is
cut in pieces hashed apart (zlib.crc32 lets go of the GIL) and the pieces' checksums joined
by `combine`, the CRC of a concatenation computed from its parts' CRCs."""

from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from binfmt_img.formats.crc import crc32

POLY = 0xEDB88320  # CRC-32's polynomial, bit-reflected as zlib computes it
PIECE = 16 << 20  # bytes hashed by one task
WORKERS = max(1, min(2, os.cpu_count() or 1))


def _times(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (bit-reflected: bit 31 is x^0)."""
    product = 0
    bit = 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ POLY if b & 1 else b >> 1
    return product


# _SQUARES[k] = x^(2^k) modulo the polynomial: x^(8 n) for any n from its binary digits.
_SQUARES = [1 << 30]  # x^1
for _ in range(63):
    _SQUARES.append(_times(_SQUARES[-1], _SQUARES[-1]))


def _shift(length: int) -> int:
    """x^(8 * length) modulo the polynomial: what a CRC is multiplied by when `length`
    bytes follow the data it covers."""
    power, k, n = 1 << 31, 3, length  # x^0; 8 = 2^3
    while n:
        if n & 1:
            power = _times(_SQUARES[k], power)
        n >>= 1
        k += 1
    return power


def combine(first: int, second: int, second_length: int) -> int:
    """zlib.crc32(a + b) from zlib.crc32(a), zlib.crc32(b) and len(b)."""
    return _times(_shift(second_length), first) ^ second


def file_ranges(fd: int, ranges: list[tuple[int, int]]) -> list[int | None]:
    """zlib.crc32 of each (offset, size) range of the file `fd`, read with pread into reused
    buffers (hashing the file's mapping would fault in every page, several times slower);
    None for a range the file ends before."""
    tasks = [(i, offset + at, min(PIECE, size - at))
             for i, (offset, size) in enumerate(ranges) for at in range(0, size, PIECE)]
    local = threading.local()

    def piece(task: tuple[int, int, int]) -> tuple[int, int | None, int]:
        i, offset, size = task
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = memoryview(mmap.mmap(-1, PIECE))
        crc, done = 0, 0
        while done < size:
            got = os.preadv(fd, [buffer[:size - done]], offset + done)
            if got <= 0:
                return i, None, size
            crc = crc32(buffer[:got], crc)
            done += got
        return i, crc, size

    out: list[int | None] = [0] * len(ranges)
    started = [False] * len(ranges)
    if WORKERS > 1 and len(tasks) > 1:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            done = list(pool.map(piece, tasks))
    else:
        done = [piece(task) for task in tasks]
    for i, crc, size in done:  # in order: each range's pieces joined from its start
        if crc is None or out[i] is None:
            out[i] = None
        elif not started[i]:
            out[i], started[i] = crc, True
        else:
            out[i] = combine(out[i], crc, size)
    return out
