"""The checkpoint store: many checkpoints of a process in one directory, each page stored once.

A store is a directory (docs/STORE.md gives its layout). Each checkpoint gets a number (1, 2,
... never reused) and an optional name; its pages are stored by content (xxh3-128), so a
checkpoint adds only the pages the store does not hold yet, compressed with zstd in chunks.

API (no debugger; binfmt_img.store may import binfmt_img.formats, never the reverse):

    Store.default_path(cwd, store=None) -> str
        `store` (--store DIR) if given, else $BINFMT_IMG_STORE, else CWD/img-checkpoints.
    store = Store(path, create=True)
        Opens (and with create, makes) the store directory.
    store.add(image, name=None, pages=None, pc_label="") -> Entry
        Stores an Image as the next checkpoint. `pages` gives (vaddr, data) chunks of whole
        pages (a dump's DumpPlan.pages()); by default the image's own stored runs.
    store.entries() -> list[Entry]              in checkpoint order
    store.resolve(ref: str | int) -> Entry      a number ("3", 3) or a name; ImageError if none
    store.load(ref) -> Image                    the checkpoint as an Image; its pages are read
                                                through image.reader (a PageReader)
    store.page_ids(ref) -> list[int]            one id per stored page, in the order of the
                                                image's runs: equal ids mean equal pages (a
                                                diff finds changed pages without reading them)
    store.delete(ref) -> Entry                  removes it; packs no checkpoint uses go too
    store.prune(keep: int) -> list[Entry]       deletes all but the last `keep`
    store.export(ref, path, compress=True) -> Entry  a single v1 image of one checkpoint
    store.import_image(path, name=None) -> Entry
    store.put_blob(data: bytes) -> str          a whole file, stored once by content (hex hash)
    store.get_blob(hash: str) -> bytes          ImageError when absent or damaged
    store.has_blob(hash: str) -> bool

The live checkpoint (img-dump's collection, into a store) is binfmt_img.store.frontend.take.

Entry fields: number, name, time (seconds since the epoch), threads, pc, pc_label (what the
debugger said of the pc at the checkpoint, may be ""), pages (stored pages in all), size (bytes
on disk this checkpoint added: its manifest and its pack), new_pages and new_bytes (pages
not in the store before it, uncompressed), exe_path.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import xxhash
import zstandard

from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file, v1
from binfmt_img.formats.model import PAGE_SIZE, Image, PageRun
from binfmt_img.formats.validate import validate
from binfmt_img.store import files as packed_files
from binfmt_img.store.check import CheckedReader
from binfmt_img.store.pages import (
    PackWriter,
    PageIndex,
    compress,
    decompress,
    pack_path,
    page_hash,
)

ENV = "BINFMT_IMG_STORE"
DEFAULT_DIR = "img-checkpoints"
MARKER = "STORE"
MANIFEST_MAGIC = b"BIMGCKP1"
# magic, then lengths and crc32s of the three parts: entry (JSON), metadata (zstd: a v1 image
# with no pages), page map (zstd: run count, runs as vaddr/count, then one u32 page id per page).
MANIFEST_HEAD = struct.Struct("<8sIIIIII")
RUN = struct.Struct("<QQ")
MAX_MAP = 1 << 34  # bytes of a decompressed page map: 4 G pages
MAX_META = 1 << 30  # bytes of decompressed metadata (8192 threads of XSAVE areas fit)


@dataclass
class Entry:
    number: int
    name: str | None
    time: float
    threads: int
    pc: int
    pc_label: str = ""
    pages: int = 0
    size: int = 0
    new_pages: int = 0
    new_bytes: int = 0
    exe_path: str | None = None

    @property
    def label(self) -> str:
        return f"{self.number} ({self.name})" if self.name else str(self.number)


def _manifest_name(number: int) -> str:
    return f"{number:06d}.ckpt"


class Store:
    def __init__(self, path: str, create: bool = True) -> None:
        self.path = os.path.abspath(path)
        marker = os.path.join(self.path, MARKER)
        if not os.path.exists(marker):
            if not create:
                raise ImageError(f"{self.path}: not a checkpoint store")
            if os.path.isdir(self.path) and os.listdir(self.path):
                raise ImageError(f"{self.path}: a directory that is not a checkpoint store")
            for sub in ("", "checkpoints", "packs", "blobs"):
                os.makedirs(os.path.join(self.path, sub), exist_ok=True)
            with open(marker, "w") as f:
                f.write("binfmt-img checkpoint store 1\n")
        self._index: PageIndex | None = None

    @staticmethod
    def default_path(cwd: str, store: str | None = None) -> str:
        """--store DIR, else $BINFMT_IMG_STORE, else CWD/img-checkpoints."""
        chosen = store or os.environ.get(ENV) or os.path.join(cwd, DEFAULT_DIR)
        return os.path.abspath(os.path.join(cwd, os.path.expanduser(chosen)))

    # ---- layout ----
    def _dir(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _packs(self) -> set[int]:
        return {int(n.split(".")[0]) for n in os.listdir(self._dir("packs"))
                if n.endswith(".pack") and n.split(".")[0].isdigit()}

    def index(self) -> PageIndex:
        if self._index is None:
            self._index = PageIndex(self._dir("pages.idx"), self._packs())
        return self._index

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (two debuggers sharing a store)."""
        fd = os.open(self._dir("lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._index = None  # another writer may have added pages meanwhile
            yield
        finally:
            os.close(fd)

    def _next_number(self) -> int:
        path = self._dir("counter")
        try:
            with open(path) as f:
                last = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        numbers = [e.number for e in self.entries()] + list(self._packs())
        number = max([last, *numbers]) + 1
        _write_atomic(path, f"{number}\n".encode())
        return number

    # ---- checkpoints ----
    def add(self, image: Image, name: str | None = None,
            pages: Iterable[tuple[int, memoryview | bytes]] | None = None,
            pc_label: str = "") -> Entry:
        """Store `image` as the next checkpoint; only pages the store lacks are written."""
        if name is not None:
            _check_name(name)
        with self._locked():
            if name is not None and any(e.name == name for e in self.entries()):
                raise ImageError(f"a checkpoint named {name!r} exists already")
            number = self._next_number()
            index = self.index()
            writer = PackWriter(pack_path(self.path, number), number, index)
            try:
                runs, ids = _page_map(image, pages if pages is not None
                                      else _image_pages(image), writer)
                writer.finish()
            except BaseException:
                writer.abort()
                raise
            entry = Entry(number=number, name=name, time=time.time(),
                          threads=len(image.threads), pc=image.registers.get("rip", 0),
                          pc_label=pc_label, pages=len(ids), new_pages=writer.new_pages,
                          new_bytes=writer.new_pages * PAGE_SIZE, exe_path=image.exe_path)
            manifest = _manifest(entry, packed_files.by_reference(self, image), runs, ids,
                                 writer.stored_bytes)
            _write_atomic(self._manifest_path(number), manifest)
        entry.size = writer.stored_bytes + len(manifest)
        return entry

    def _manifest_path(self, number: int) -> str:
        return os.path.join(self._dir("checkpoints"), _manifest_name(number))

    def entries(self) -> list[Entry]:
        out = []
        for name in sorted(os.listdir(self._dir("checkpoints"))):
            if name.endswith(".ckpt") and name.split(".")[0].isdigit():
                try:
                    out.append(self._read_manifest(int(name.split(".")[0]), parts=False)[0])
                except ImageError:
                    continue  # damaged: load names it
        return sorted(out, key=lambda e: e.number)

    def resolve(self, ref: str | int) -> Entry:
        entries = self.entries()
        text = str(ref).strip()
        for entry in entries:
            if entry.name is not None and entry.name == text:
                return entry
        if text.lstrip("#").isdigit():
            number = int(text.lstrip("#"))
            for entry in entries:
                if entry.number == number:
                    return entry
        known = ", ".join(e.label for e in entries) or "none"
        raise ImageError(f"no checkpoint {text!r} in {self.path} (checkpoints: {known})")

    def _read_manifest(self, number: int, parts: bool = True):
        path = self._manifest_path(number)
        try:
            with open(path, "rb") as f:
                data = f.read() if parts else f.read(MANIFEST_HEAD.size + (1 << 16))
        except OSError as error:
            raise ImageError(f"{path}: {error.strerror}") from None
        if len(data) < MANIFEST_HEAD.size:
            raise ImageError(f"{path}: truncated checkpoint")
        magic, n_entry, crc_entry, n_meta, crc_meta, n_map, crc_map = \
            MANIFEST_HEAD.unpack_from(data)
        if magic != MANIFEST_MAGIC:
            raise ImageError(f"{path}: not a checkpoint of a binfmt-img store")
        at = MANIFEST_HEAD.size
        blob = data[at:at + n_entry]
        if len(blob) != n_entry or zlib.crc32(blob) != crc_entry:
            raise ImageError(f"{path}: checksum mismatch in the entry")
        try:
            fields = json.loads(blob)
            entry = Entry(**{k: fields[k] for k in Entry.__dataclass_fields__ if k in fields})
        except (ValueError, TypeError) as error:
            raise ImageError(f"{path}: malformed entry: {error}") from None
        entry.number = number
        entry.size += os.path.getsize(path)
        if not parts:
            return entry, None, None
        meta = data[at + n_entry:at + n_entry + n_meta]
        page_map = data[at + n_entry + n_meta:at + n_entry + n_meta + n_map]
        if len(meta) != n_meta or zlib.crc32(meta) != crc_meta:
            raise ImageError(f"{path}: checksum mismatch in the metadata")
        if len(page_map) != n_map or zlib.crc32(page_map) != crc_map:
            raise ImageError(f"{path}: checksum mismatch in the page map")
        return entry, meta, page_map

    def load(self, ref: str | int) -> Image:
        """The checkpoint as an Image, validated as an image file is; pages read on demand."""
        entry = self.resolve(ref)
        _, meta, page_map = self._read_manifest(entry.number)
        try:
            meta = zstandard.ZstdDecompressor().decompress(meta, max_output_size=MAX_META)
            image, offsets = v1.read(memoryview(meta))
        except zstandard.ZstdError as error:
            raise ImageError(f"checkpoint {entry.label}: metadata: {error}") from None
        except ImageError as error:
            raise ImageError(f"checkpoint {entry.label}: {error.what}") from None
        runs, ids = _parse_map(page_map, entry.label)
        image.runs = runs
        image.source = None
        image.reader = CheckedReader(self.path, self.index(), ids, entry.label, runs)
        # Every pack opened now: a missing one is refused before a process is started for
        # the restore, and a prune meanwhile (another debugger) cannot take them away.
        image.reader.open_packs()
        packed_files.attach(self, image)
        image.path = self._manifest_path(entry.number)
        offsets["runs"] = []
        try:
            validate(image, offsets)
        except ImageError as error:
            raise ImageError(f"checkpoint {entry.label}: {error.what}") from None
        return image

    def page_ids(self, ref: str | int) -> list[int]:
        """The page ids a checkpoint uses, in its page order."""
        entry = self.resolve(ref)
        return _parse_map(self._read_manifest(entry.number)[2], entry.label)[1]

    def delete(self, ref: str | int) -> Entry:
        with self._locked():
            entry = self.resolve(ref)
            os.unlink(self._manifest_path(entry.number))
            self._collect()
        return entry

    def prune(self, keep: int) -> list[Entry]:
        """Delete all checkpoints but the last `keep`."""
        if keep < 0:
            raise ImageError(f"cannot keep {keep} checkpoints")
        with self._locked():
            entries = self.entries()
            gone = entries[:max(0, len(entries) - keep)]
            for entry in gone:
                os.unlink(self._manifest_path(entry.number))
            self._collect()
        return gone

    def _collect(self) -> None:
        """Remove the packs no remaining checkpoint uses a page of."""
        used: set[int] = set()
        index = PageIndex(self._dir("pages.idx"), self._packs())
        for entry in self.entries():
            ids = _parse_map(self._read_manifest(entry.number)[2], entry.label)[1]
            used.update(index.pack_of(i) for i in set(ids))
        for pack in self._packs() - used:
            os.unlink(pack_path(self.path, pack))
        self._index = None

    # ---- single images ----
    def export(self, ref: str | int, path: str, compress: bool = True) -> Entry:
        """One checkpoint as a single v1 image file, its pages compressed unless told."""
        entry = self.resolve(ref)
        image = self.load(entry.number)
        image.reader.check_pages()  # a damaged page is refused, not given a new checksum
        image_file.save(path, image, "v1", image_chunks(image), compress)
        return entry

    def import_image(self, path: str, name: str | None = None) -> Entry:
        image = image_file.load(path)
        return self.add(image, name=name)

    # ---- whole files ----
    def _blob_path(self, digest: str) -> str:
        if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
            raise ImageError(f"not a blob hash: {digest!r}")
        return os.path.join(self._dir("blobs"), digest[:2], digest)

    def put_blob(self, data: bytes | memoryview) -> str:
        digest = xxhash.xxh3_128_hexdigest(data)
        path = self._blob_path(digest)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            stored, flags = compress(data, level=3)
            _write_atomic(path, bytes([flags]) + stored)
        return digest

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self._blob_path(digest))

    def get_blob(self, digest: str) -> bytes:
        path = self._blob_path(digest)
        try:
            with open(path, "rb") as f:
                stored = f.read()
        except OSError as error:
            raise ImageError(f"blob {digest}: {error.strerror}") from None
        if not stored:
            raise ImageError(f"blob {digest}: empty")
        data = decompress(stored[1:], stored[0], 1 << 40)
        if xxhash.xxh3_128_hexdigest(data) != digest:
            raise ImageError(f"blob {digest}: its content does not match its hash")
        return data


def _check_name(name: str) -> None:
    if not name or name.isdigit() or name.startswith("#") or len(name) > 200 \
            or any(c in name for c in "\n\r\t\0") or name != name.strip():
        raise ImageError(f"invalid checkpoint name {name!r}: not a number, no tabs or line "
                         "breaks, at most 200 characters")


def _write_atomic(path: str, data: bytes) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)


def _image_pages(image: Image) -> Iterator[tuple[int, memoryview]]:
    return image_chunks(image)


def image_chunks(image: Image) -> Iterator[tuple[int, memoryview]]:
    """(vaddr, data) for an image's stored runs, in pieces (reader images reuse buffers)."""
    for run in image.runs:
        vaddr = run.vaddr
        for data in image.run_data(run):
            yield vaddr, data
            vaddr += len(data)


def _page_map(image: Image, chunks: Iterable[tuple[int, memoryview | bytes]],
              writer: PackWriter) -> tuple[list[tuple[int, int]], list[int]]:
    """Runs (vaddr, count) and one page id per page; zero pages of anonymous memory are
    left out, as a v1 image leaves them out. The loop runs once per page: kept lean."""
    keep_zero = v1._file_backed(image)  # noqa: SLF001 - the same rule as v1's writer
    runs: list[list[int]] = []  # [vaddr, count]
    ids: list[int] = []
    zero_hash = page_hash(v1.ZERO_PAGE)
    known = writer.index.by_hash.get
    digest_of = xxhash.xxh3_128_digest
    add = ids.append
    last, run_end = -1, -1
    for vaddr, data in chunks:
        if vaddr <= last:
            raise ImageError(f"page {vaddr:#x} given twice or out of address order")
        view = memoryview(data).cast("B")
        for at in range(0, len(view), PAGE_SIZE):
            page = view[at:at + PAGE_SIZE]
            digest = digest_of(page)
            addr = vaddr + at
            if digest == zero_hash and page == v1.ZERO_PAGE and not keep_zero(addr):
                continue
            page_id = known(digest)
            add(writer.page_id(page, digest) if page_id is None else page_id)
            if addr == run_end:
                runs[-1][1] += 1
            else:
                runs.append([addr, 1])
            run_end = addr + PAGE_SIZE
        last = vaddr + len(view) - PAGE_SIZE
    return [(v, c) for v, c in runs], ids


def _manifest(entry: Entry, image: Image, runs: list[tuple[int, int]], ids: list[int],
              stored: int) -> bytes:
    meta = io.BytesIO()
    shell = Image(**{**image.__dict__, "runs": [], "source": None, "reader": None,
                     "mapping": None, "fd": None, "_starts": None})
    shell.format = "v1"
    v1.write(meta, shell, [])
    page_map = zstandard.ZstdCompressor(level=3).compress(
        struct.pack("<I", len(runs)) + b"".join(RUN.pack(v, c) for v, c in runs)
        + struct.pack(f"<{len(ids)}I", *ids))
    fields = asdict(entry)
    fields["size"] = stored  # the pack's share; the manifest's own length is added on reading
    blob = json.dumps(fields).encode()
    meta_bytes = zstandard.ZstdCompressor(level=3).compress(meta.getvalue())
    head = MANIFEST_HEAD.pack(MANIFEST_MAGIC, len(blob), zlib.crc32(blob), len(meta_bytes),
                              zlib.crc32(meta_bytes), len(page_map), zlib.crc32(page_map))
    out = head + blob + meta_bytes + page_map
    return out


def _parse_map(page_map: bytes, label: str) -> tuple[list[PageRun], list[int]]:
    try:
        data = zstandard.ZstdDecompressor().decompress(page_map, max_output_size=MAX_MAP)
    except zstandard.ZstdError as error:
        raise ImageError(f"checkpoint {label}: page map does not decompress: {error}") from None
    if len(data) < 4:
        raise ImageError(f"checkpoint {label}: truncated page map")
    (count,) = struct.unpack_from("<I", data)
    end = 4 + count * RUN.size
    if end > len(data) or (len(data) - end) % 4:
        raise ImageError(f"checkpoint {label}: page map of {len(data)} bytes for {count} runs")
    runs, at = [], 0
    for vaddr, pages in RUN.iter_unpack(memoryview(data)[4:end]):
        if pages == 0:
            raise ImageError(f"checkpoint {label}: empty page run at {vaddr:#x}")
        runs.append(PageRun(vaddr, pages, at * PAGE_SIZE, PAGE_SIZE, None))
        at += pages
    ids = list(memoryview(data)[end:].cast("I"))
    if len(ids) != at:
        raise ImageError(f"checkpoint {label}: {len(ids)} page ids for {at} pages")
    return runs, ids
