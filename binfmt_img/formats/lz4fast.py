"""LZ4 blocks compressed and decompressed without holding the GIL, into buffers the caller
owns: the fast codec of compressed images (`img-dump --compress`, version 0x202,
docs/FORMAT.md "LZ4 runs"). On the heaps of python3 and perl it compresses about twice as
fast as zstd at level -7 (1.3-1.45 and 0.9 GB/s per core, against 0.6 and 0.5), to a third and
under a half of the pages (zstd: a quarter and two fifths); zstd's faster levels that match
its speed (-20) leave more than half.

The calls go to the system's liblz4 (Debian's liblz4-1, which apt itself depends on) through
ctypes, which releases the GIL for the call: two helper threads compress at once. A block is
LZ4's raw block format (no frame header, no checksum): the run record around it holds its
length, its decompressed size (the run's pages) and a crc32 of its bytes. Decompression is
LZ4_decompress_safe, bounded by the output buffer: a block that lies about its size fails
without writing past it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

ACCELERATION = 16  # LZ4_compress_fast's: higher is faster and larger (1 is LZ4's default)
MAX_INPUT = 0x7E000000  # LZ4_MAX_INPUT_SIZE


class Lz4Failure(Exception):
    """A block that does not decompress, or a compression error."""


def _load() -> Any:
    for name in ("liblz4.so.1", ctypes.util.find_library("lz4")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.LZ4_compress_fast.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                              ctypes.c_int, ctypes.c_int]
            lib.LZ4_decompress_safe.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                ctypes.c_int, ctypes.c_int]
            lib.LZ4_compressBound.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            continue
        for function in (lib.LZ4_compress_fast, lib.LZ4_decompress_safe,
                         lib.LZ4_compressBound):
            function.restype = ctypes.c_int
        return lib
    return None


_lib = _load()
AVAILABLE = _lib is not None
MISSING = "liblz4 (liblz4.so.1, Debian's liblz4-1) is not installed"


def _need() -> Any:
    if _lib is None:
        raise Lz4Failure(MISSING)
    return _lib


def _source(data: Any) -> tuple[Any, int]:
    """(what ctypes passes as the address of data's bytes, their count), without a copy
    where the buffer allows it (bytes, or a writable contiguous buffer)."""
    if isinstance(data, bytes):
        return data, len(data)
    view = memoryview(data)
    if view.readonly or not view.contiguous:
        copy = view.tobytes()  # rare: a read-only slice (an LLDB read of code pages)
        return copy, len(copy)
    if not view.nbytes:
        return None, 0
    return ctypes.addressof(ctypes.c_char.from_buffer(view)), view.nbytes


def _target(out: memoryview) -> tuple[int, int]:
    view = memoryview(out)
    if view.readonly or not view.contiguous:
        raise ValueError("the output buffer must be writable and contiguous")
    if not view.nbytes:
        raise Lz4Failure("no room for the output")
    return ctypes.addressof(ctypes.c_char.from_buffer(view)), view.nbytes


def bound(size: int) -> int:
    """The largest block `size` bytes can compress to."""
    return _need().LZ4_compressBound(size) if size <= MAX_INPUT else 0


def compress_into(data: Any, out: memoryview, acceleration: int = ACCELERATION) -> int:
    """Compress `data` as one LZ4 block into `out`; returns the block's length. `out` should
    hold bound(len(data)) bytes; a smaller one fails rather than being overrun."""
    lib = _need()
    source, size = _source(data)
    if not 0 < size <= MAX_INPUT:
        raise Lz4Failure(f"{size} bytes cannot be one LZ4 block")
    address, room = _target(out)
    written = lib.LZ4_compress_fast(source, address, size, min(room, MAX_INPUT), acceleration)
    if written <= 0:
        raise Lz4Failure(f"{size} bytes do not compress into {room}")
    return written


def decompress_into(block: Any, out: memoryview) -> int:
    """Decompress one LZ4 block into `out`, writing at most len(out) bytes (a block that
    would need more fails, nothing is written past it). Returns the decompressed size."""
    lib = _need()
    source, size = _source(block)
    if not 0 < size <= MAX_INPUT:
        raise Lz4Failure(f"a block of {size} bytes")
    address, room = _target(out)
    got = lib.LZ4_decompress_safe(source, address, size, min(room, MAX_INPUT))
    if got < 0:
        raise Lz4Failure(f"malformed LZ4 block (error at input byte {-got - 1})")
    return got
