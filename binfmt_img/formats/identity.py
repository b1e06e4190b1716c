"""What a mapped file is by its content, not by where it sits: the ELF build-id where the
file has one, else a hash of the bytes the image maps. A byte-identical copy, an `mv` or a
deterministic rebuild is the same file; another build is not.

The build-id is read from the file's own program headers (PT_NOTE, NT_GNU_BUILD_ID), never
through a debugger. The hash is xxh3-128 when the `xxhash` package is installed, else BLAKE2b
(160 bits); the record says which, so a reader without xxhash can still tell it is not a
match it can check.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from binfmt_img.errors import ImageError
from binfmt_img.formats.model import PAGE_SIZE, Image

try:  # optional: several times faster than BLAKE2b
    import xxhash
except ImportError:  # pragma: no cover - depends on the environment
    xxhash = None

ALGO_NONE, ALGO_BLAKE2B, ALGO_XXH3 = 0, 1, 2
ALGO_NAMES = {ALGO_NONE: "none", ALGO_BLAKE2B: "blake2b-160", ALGO_XXH3: "xxh3-128"}
PT_NOTE, NT_GNU_BUILD_ID = 4, 3
MAX_NOTES = 1 << 16  # a note segment larger than this is not read (corrupt or hostile)
CHUNK = 1 << 20


@dataclass(frozen=True)
class ContentId:
    """A mapped file's identity by content: build_id (may be empty) and/or a digest of the
    mapped ranges, by the algorithm `algo`."""

    build_id: bytes = b""
    algo: int = ALGO_NONE
    digest: bytes = b""

    def differs(self, other: ContentId) -> str | None:
        """None when `other` is the same file; else what differs, in words."""
        if self.build_id and other.build_id:
            if self.build_id != other.build_id:
                return f"build-id {self.build_id.hex()} vs {other.build_id.hex()}"
            return None
        if self.build_id or other.build_id:
            return (f"build-id {self.build_id.hex() or 'none'} vs "
                    f"{other.build_id.hex() or 'none'}")
        if self.algo != other.algo:
            return f"content hash {ALGO_NAMES.get(self.algo, self.algo)} not computable here"
        if self.digest != other.digest:
            return (f"content ({ALGO_NAMES.get(self.algo)}) {self.digest.hex()[:16]} vs "
                    f"{other.digest.hex()[:16]}")
        return None


def build_id(fd: int) -> bytes:
    """The NT_GNU_BUILD_ID note of a 64-bit little-endian ELF file, or b""."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return b""
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    if phentsize < 56 or phnum > 512:
        return b""
    table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(len(table) // phentsize):
        kind, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if kind == PT_NOTE and 0 < filesz <= MAX_NOTES:
            found = _build_id_note(os.pread(fd, filesz, offset))
            if found:
                return found
    return b""


def _build_id_note(notes: bytes) -> bytes:
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, at)
        name_at = at + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        end = desc_at + (descsz + 3) // 4 * 4
        if end > len(notes) + 3:
            return b""
        if kind == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0":
            return bytes(notes[desc_at:desc_at + descsz])
        at = end
    return b""


def _hasher() -> tuple[int, object]:
    if xxhash is not None:
        return ALGO_XXH3, xxhash.xxh3_128()
    return ALGO_BLAKE2B, hashlib.blake2b(digest_size=20)


def digest_ranges(fd: int, ranges: Iterable[tuple[int, int]], algo: int | None = None
                  ) -> tuple[int, bytes]:
    """A hash of the bytes at (offset, length) ranges, each clipped to the file's end, its
    clipped length hashed too (a shorter file differs)."""
    chosen, h = _hasher()
    if algo == ALGO_BLAKE2B and chosen != ALGO_BLAKE2B:
        chosen, h = ALGO_BLAKE2B, hashlib.blake2b(digest_size=20)
    size = os.fstat(fd).st_size
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    for offset, length in ranges:
        length = max(0, min(length, size - offset))
        h.update(struct.pack("<QQ", offset, length))  # type: ignore[attr-defined]
        done = 0
        while done < length:
            got = os.preadv(fd, [view[:min(CHUNK, length - done)]], offset + done)
            if got <= 0:
                break
            h.update(view[:got])  # type: ignore[attr-defined]
            done += got
    return chosen, h.digest()  # type: ignore[attr-defined]


def mapped_ranges(image: Image, path: str) -> list[tuple[int, int]]:
    """The file ranges the image's VMAs map from `path` (the path as the image names it),
    merged and sorted: what the hash covers, the same at dump and at restore."""
    spans = sorted((v.pgoff * PAGE_SIZE, v.pgoff * PAGE_SIZE + v.size)
                   for v in image.vmas if v.path == path)
    out: list[list[int]] = []
    for start, end in spans:
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(start, end - start) for start, end in out]


def content_id(path: str, ranges: list[tuple[int, int]], algo: int | None = None,
               need_digest: bool = False) -> ContentId:
    """The file's identity: its build-id if it has one, else (or with need_digest) a hash of
    `ranges` (by `algo` when given: the recorded one, to compare with)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        bid = build_id(fd)
        if bid and not need_digest:
            return ContentId(build_id=bid)
        chosen, digest = digest_ranges(fd, ranges, algo)
        return ContentId(bid, chosen, digest)
    finally:
        os.close(fd)


def whole_file_digest(fd: int) -> bytes:
    """The packed-file key: BLAKE2b-256 of all the bytes (one algorithm everywhere, so a
    store dedups across machines whatever is installed)."""
    h = hashlib.blake2b(digest_size=32)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    offset = 0
    while True:
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            return h.digest()
        h.update(view[:got])
        offset += got


@dataclass
class PackedFile:
    """One mapped file carried in the image (img-dump --pack), under every path the image
    maps it from. Its bytes are at `offset` of the image file (`size` bytes), or, while
    packing, read from `origin` on disk."""

    digest: bytes  # whole_file_digest: BLAKE2b-256
    size: int
    paths: list[str]
    offset: int = -1
    origin: str | None = None
    # In a checkpoint store's metadata: the bytes are the store's blob of this hash, not in
    # the section (written so when by_reference); fetch() gets them (set by the store).
    blob: str = ""
    by_reference: bool = False
    fetch: Callable[[], bytes] | None = None

    def data(self, image: Image) -> bytes:
        """The file's bytes; from the image (or the store) checked against the digest."""
        if self.origin is not None:
            fd = os.open(self.origin, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                out = bytearray()
                while len(out) < self.size:
                    chunk = os.pread(fd, min(CHUNK * 16, self.size - len(out)), len(out))
                    if not chunk:
                        break
                    out += chunk
                return bytes(out)
            finally:
                os.close(fd)
        if self.offset < 0:
            if self.fetch is None:
                raise ImageError(f"packed file {self.paths[0]}: its bytes are in a checkpoint "
                                 f"store (blob {self.blob}), not in this image")
            raw = self.fetch()
        elif image.fd is not None:
            raw = os.pread(image.fd, self.size, self.offset)
        else:
            assert image.source is not None
            raw = bytes(image.source[self.offset:self.offset + self.size])
        if len(raw) != self.size or hashlib.blake2b(raw, digest_size=32).digest() != self.digest:
            raise ImageError(f"packed file {self.paths[0]}: its bytes do not match its hash",
                             self.offset)
        return raw


def needed_paths(image: Image) -> list[str]:
    """Every file the image needs: its executable and each mapped path, once each."""
    paths = [image.exe_path] if image.exe_path else []
    paths += [v.path for v in image.vmas if v.path and v.path != "/dev/zero"]
    return list(dict.fromkeys(paths))


def record_contents(image: Image, sources: dict[str, str] | None = None) -> None:
    """At a dump: each mapped file's identity by content, into image.contents, read from
    `sources[path]` where given (the mapped file itself), else from the path. A file gone
    meanwhile is left out (the restore names it)."""
    for path in dict.fromkeys(v.path for v in image.vmas if v.path):
        if path == "/dev/zero":
            continue
        try:
            image.contents[path] = content_id((sources or {}).get(path, path),
                                              mapped_ranges(image, path))
        except OSError:
            pass


def pack(image: Image, sources: dict[str, str] | None = None) -> list[PackedFile]:
    """Every file the image needs, once per distinct content, read from `sources[path]`
    where given (at a dump: the mapped file itself), else from where the image names it; a
    file that is no longer the one the image recorded is refused."""
    by_digest: dict[bytes, PackedFile] = {}
    for path in needed_paths(image):
        recorded = image.contents.get(path)
        origin = (sources or {}).get(path, path)
        try:
            if recorded is not None:
                now = content_id(origin, mapped_ranges(image, path), recorded.algo or None,
                                 need_digest=not recorded.build_id)
                change = recorded.differs(now)
                if change is not None:
                    raise ImageError(f"cannot pack {path}: changed since the dump: {change}")
            fd = os.open(origin, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                digest, size = whole_file_digest(fd), os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError as error:
            raise ImageError(f"cannot pack {path}: {error.strerror}") from None
        entry = by_digest.setdefault(digest, PackedFile(digest, size, [], origin=origin))
        entry.paths.append(path)
    return list(by_digest.values())


def describe(image: Image) -> list[str]:
    """img-info's lines: each mapped file's identity by content, and the packed files."""
    if not image.contents and not image.packed:
        return []
    packed = {p: f for f in image.packed for p in f.paths}
    lines = [f"mapped files by content: {len(image.contents)}"
             + (f", {len(image.packed)} packed ({sum(f.size for f in image.packed)} bytes)"
                if image.packed else "")]
    for path in sorted(set(image.contents) | set(packed)):
        lines.append(f"  {path}: {_id_text(image.contents.get(path))}"
                     + (" [packed]" if path in packed else ""))
    return lines


def _id_text(content: ContentId | None) -> str:
    if content is None:
        return "no identity recorded"
    if content.build_id:
        return f"build-id {content.build_id.hex()}"
    return f"{ALGO_NAMES.get(content.algo, content.algo)} {content.digest.hex()}"


def describe_json(image: Image) -> list[dict[str, object]]:
    packed = {p: f for f in image.packed for p in f.paths}
    return [{"path": path,
             "build_id": image.contents[path].build_id.hex() if path in image.contents else None,
             "hash": (ALGO_NAMES.get(image.contents[path].algo),
                      image.contents[path].digest.hex()) if path in image.contents
             and image.contents[path].digest else None,
             "packed_size": packed[path].size if path in packed else None}
            for path in sorted(set(image.contents) | set(packed))]
