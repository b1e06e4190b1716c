"""What a file that is not an image looks like, for the one-line refusal of img-info,
img2core and img-restore: "looks like text", "an ELF executable, not a core", "gzip data"."""

from __future__ import annotations

import struct

from binfmt_img.formats.v0 import MAGIC

HEAD_SIZE = 4096  # a tar header's "ustar" at 257, an ELF file's program headers
IMAGE_MAGIC = struct.pack("<I", MAGIC)
ELF_MAGIC = b"\x7fELF"
ET_NAMES = {1: "an ELF object file", 2: "an ELF executable", 3: "a shared library"}
ET_DYN, ET_CORE = 3, 4
PT_INTERP = 3
SIGNATURES = (
    (b"\x1f\x8b", "gzip data"), (b"\xfd7zXZ\0", "xz data"), (b"(\xb5/\xfd", "zstd data"),
    (b"BZh", "bzip2 data"), (b"PK\x03\x04", "a zip archive"), (b"\x89PNG", "a PNG picture"),
    (b"%PDF", "a PDF document"), (b"#!", "a script"), (b"SQLite format 3\0", "an SQLite database"),
)
QUOTE = 40


def is_image(head: bytes) -> bool:
    """Starts like a binfmt-img image (a file too short for the whole magic counts too: it
    is reported as a truncated image)."""
    return bool(head) and head[:4] == IMAGE_MAGIC[:len(head)]


def is_core(head: bytes) -> bool:
    return head[:4] == ELF_MAGIC and len(head) >= 18 and _elf_type(head) == ET_CORE


def looks_like(head: bytes) -> str:
    """A few words on what `head` (a file's first HEAD_SIZE bytes) holds."""
    if not head:
        return "empty"
    if head[:4] == ELF_MAGIC:
        kind = _elf_type(head) if len(head) >= 18 else None
        if kind == ET_CORE:
            return "an ELF core"
        if kind == ET_DYN and _has_interpreter(head):
            kind = 2  # a position-independent executable
        return f"{ET_NAMES.get(kind, 'an ELF file')}, not a core"
    for magic, name in SIGNATURES:
        if head.startswith(magic):
            return name
    if head[257:262] == b"ustar":
        return "a tar archive"
    text = _text(head)
    if text is not None:
        line = text.strip().splitlines()[0] if text.strip() else ""
        quote = line[:QUOTE] + ("..." if len(line) > QUOTE else "")
        return f'looks like text ("{quote}")' if quote else "looks like text (blank)"
    return f"unknown data starting {head[:4].hex(' ')} (an image starts {IMAGE_MAGIC.hex(' ')})"


def _elf_type(head: bytes) -> int:
    order = ">" if head[5:6] == b"\x02" else "<"  # EI_DATA: big- or little-endian
    return struct.unpack_from(f"{order}H", head, 16)[0]


def _has_interpreter(head: bytes) -> bool:
    """Whether a 64-bit little-endian ELF file names a program interpreter (PT_INTERP) in
    the program headers `head` holds."""
    if head[4:6] != b"\x02\x01" or len(head) < 64:
        return False
    (phoff,) = struct.unpack_from("<Q", head, 32)
    size, count = struct.unpack_from("<HH", head, 54)
    for i in range(count):
        at = phoff + i * size
        if size < 4 or at + 4 > len(head):
            return False
        if struct.unpack_from("<I", head, at)[0] == PT_INTERP:
            return True
    return False


def _text(head: bytes) -> str | None:
    """The bytes as text when they are printable UTF-8 (a character cut at the end of the
    head allowed)."""
    for cut in range(4):
        try:
            text = head[:len(head) - cut].decode()
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if all(ch.isprintable() or ch in "\t\n\r\f" for ch in text):
        return text
    return None
