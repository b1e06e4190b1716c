"""zstd frames compressed and decompressed without holding the GIL, into buffers the caller
owns: the page paths (compressed images, the checkpoint store) run these on helper threads
while another thread reads or writes pages, and keep both cores busy.

The calls go to the libzstd that the `zstandard` package bundles, through its cffi module
(cffi lets other Python threads run during a C call); one compression and one decompression
context per thread, reused. Where that module is missing (another build of the package), the
package's public API does the same work, holding the GIL part of the time and copying once.
"""

from __future__ import annotations

import threading
from typing import Any

import zstandard

try:  # the package's own cffi binding of its bundled libzstd
    from zstandard import _cffi as _native

    _lib: Any = _native.lib
    _ffi: Any = _native.ffi
except ImportError:  # pragma: no cover - a zstandard built without cffi
    _lib = _ffi = None

NATIVE = _lib is not None
_UNKNOWN = 2**64 - 1  # ZSTD_CONTENTSIZE_UNKNOWN
_ERROR = 2**64 - 2  # ZSTD_CONTENTSIZE_ERROR


class ZstdFailure(Exception):
    """A frame that does not decompress (the message is zstd's), or a compression error."""


class _Contexts(threading.local):
    dctx: Any = None
    cctx: Any = None
    level: int | None = None
    verify = True


_local = _Contexts()


def _check(result: int) -> int:
    if _lib.ZSTD_isError(result):
        raise ZstdFailure(_ffi.string(_lib.ZSTD_getErrorName(result)).decode())
    return result


def content_size(frame: Any) -> int | None:
    """The decompressed size a frame's header declares; None when it declares none."""
    if not NATIVE:
        try:
            size = zstandard.get_frame_parameters(bytes(frame[:18])).content_size
        except zstandard.ZstdError as error:
            raise ZstdFailure(str(error)) from None
        return size or None  # 0: not declared (or empty)
    size = _lib.ZSTD_getFrameContentSize(_ffi.from_buffer(frame), len(frame))
    if size == _ERROR:
        raise ZstdFailure("not a zstd frame header")
    return None if size == _UNKNOWN else size


def has_checksum(frame: Any) -> bool:
    """Whether a zstd frame carries a checksum of its content (the header's flag)."""
    return len(frame) > 4 and bytes(frame[:4]) == b"\x28\xb5\x2f\xfd" and bool(frame[4] & 4)


def decompress_into(frame: Any, out: memoryview, verify: bool = True) -> int:
    """Decompress one frame into `out` (writable, at most len(out) bytes; a frame that would
    need more fails, nothing is written past it). Returns the decompressed size. The frame's
    content checksum, when it has one, is checked unless `verify` is False: a caller that
    has checked the frame's own bytes (crc32) saves that pass over the output."""
    if not NATIVE:
        try:
            data = zstandard.ZstdDecompressor().decompress(bytes(frame),
                                                           max_output_size=len(out))
        except zstandard.ZstdError as error:
            raise ZstdFailure(str(error)) from None
        if len(data) > len(out):
            raise ZstdFailure("Destination buffer is too small")
        out[:len(data)] = data
        return len(data)
    dctx = _local.dctx
    if dctx is None:
        dctx = _local.dctx = _ffi.gc(_lib.ZSTD_createDCtx(), _lib.ZSTD_freeDCtx)
    if _local.verify != verify:
        _check(_lib.ZSTD_DCtx_setParameter(dctx, _lib.ZSTD_d_forceIgnoreChecksum,
                                           0 if verify else 1))
        _local.verify = verify
    return _check(_lib.ZSTD_decompressDCtx(dctx, _ffi.from_buffer(out), len(out),
                                           _ffi.from_buffer(frame), len(frame)))


def bound(size: int) -> int:
    """The largest frame `size` bytes can compress to."""
    return _lib.ZSTD_compressBound(size) if NATIVE else size + (size >> 7) + 512


def compress_into(data: Any, out: memoryview, level: int) -> int:
    """Compress `data` as one frame (content size and checksum in it) into `out`, which holds
    at least bound(len(data)) bytes. Returns the frame's length."""
    if not NATIVE:
        frame = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
        out[:len(frame)] = frame
        return len(frame)
    cctx = _local.cctx
    if cctx is None:
        cctx = _local.cctx = _ffi.gc(_lib.ZSTD_createCCtx(), _lib.ZSTD_freeCCtx)
        _check(_lib.ZSTD_CCtx_setParameter(cctx, _lib.ZSTD_c_checksumFlag, 1))
    if _local.level != level:
        _check(_lib.ZSTD_CCtx_setParameter(cctx, _lib.ZSTD_c_compressionLevel, level))
        _local.level = level
    return _check(_lib.ZSTD_compress2(cctx, _ffi.from_buffer(out), len(out),
                                      _ffi.from_buffer(data), len(data)))
