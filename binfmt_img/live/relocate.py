"""Where a restore finds the image's mapped files on this machine: --exe, --map OLD=NEW,
--sysroot DIR, and the files a packed image carries (materialised in a cache by hash).

Applied to a loaded image before anything else (before a process is started for it): the
image's paths are replaced by the ones found, `image.moved` keeps old -> new, and the
identity check (RestorePlan._check_files) then compares the file found with the image's
record. An image is untrusted input: a packed file is written only under a name made of its
verified hash, in the cache directory, and never over anything but such a file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from binfmt_img.errors import RestoreError
from binfmt_img.formats import identity
from binfmt_img.formats.identity import PackedFile
from binfmt_img.formats.model import Image


@dataclass
class Relocation:
    exe: str | None = None
    maps: list[tuple[str, str]] = field(default_factory=list)  # (old prefix, new prefix)
    sysroot: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.exe or self.maps or self.sysroot)


def parse_map(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise RestoreError(f"--map {text!r}: give OLD=NEW (path prefixes)")
    return old.rstrip("/") or "/", new.rstrip("/") or "/"


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "binfmt-img")


def _substituted(path: str, how: Relocation, exe_path: str | None) -> str:
    """--exe for the executable; else the first --map whose OLD prefixes it; then --sysroot
    DIR + path where that exists."""
    if how.exe and path == exe_path:
        return os.path.abspath(how.exe)
    for old, new in how.maps:
        if path == old or path.startswith(old.rstrip("/") + "/"):
            path = new + path[len(old.rstrip("/")):]
            break
    if how.sysroot:
        under = os.path.join(how.sysroot, path.lstrip("/"))
        if os.path.exists(under):
            return os.path.abspath(under)
    return path


def _identical(image: Image, original: str, path: str) -> bool:
    """The file at `path` is the one the image recorded for `original` (by content)."""
    recorded = image.contents.get(original)
    if recorded is None:
        return os.path.exists(path)
    try:
        now = identity.content_id(path, identity.mapped_ranges(image, original),
                                  recorded.algo or None, need_digest=not recorded.build_id)
    except OSError:
        return False
    return recorded.differs(now) is None


def content_check(image: Image, path: str) -> None:
    """Refuse, in one line, a mapped file that is not the one the image recorded."""
    recorded = image.contents[path]
    try:
        now = identity.content_id(path, identity.mapped_ranges(image, path),
                                  recorded.algo or None, need_digest=not recorded.build_id)
    except OSError as error:
        raise RestoreError(f"mapped file {path}: {error.strerror}") from None
    change = recorded.differs(now)
    if change is not None:
        was = next((o for o, n in image.moved.items() if n == path), None)
        raise RestoreError(f"mapped file {path}" + (f" (for the image's {was})" if was else "")
                           + f" changed since the dump: {change}")


def prepare(image: Image, how: Relocation, local: bool = True) -> list[str]:
    """Substitute the image's paths (options, then packed copies for files missing or
    different here); returns lines to tell the user. Refuses a v1 image whose executable is
    nowhere to be found, naming it."""
    if image.format != "v1" or not local:
        if how.given:
            raise RestoreError("--exe, --map and --sysroot need a v1 image restored into a "
                               "process on this machine")
        return []
    packed = {p: f for f in image.packed for p in f.paths}
    notes: list[str] = []
    for original in identity.needed_paths(image):
        path = _substituted(original, how, image.exe_path)
        if original in packed and not _identical(image, original, path):
            path = materialise(image, packed[original], original)
            notes.append(f"{original}: the image's packed copy, {path}")
            if any(v.path == original and v.is_shared for v in image.vmas):
                # Faithful or loud: the program's writes no longer reach the original file.
                notes.append(f"{original}: shared mapping of the packed copy: what the program "
                             f"writes through it goes to {path}, not to {original}")
        if path != original:
            image.moved[original] = path
    _apply(image)
    exe = image.exe_path
    if exe and not os.path.exists(exe):
        was = next((o for o, n in image.moved.items() if n == exe), exe)
        raise RestoreError(f"the image's executable {was} is gone"
                           + (f" (looked for {exe})" if was != exe else "")
                           + ": give its new place with --exe PATH, --map OLD=NEW or "
                           "--sysroot DIR")
    return notes


def _apply(image: Image) -> None:
    moved = image.moved
    if not moved:
        return
    for vma in image.vmas:
        if vma.path in moved:
            vma.path = moved[vma.path]
    if image.exe_path in moved:
        image.exe_path = moved[image.exe_path]
    image.contents = {moved.get(p, p): c for p, c in image.contents.items()}


# ---- the cache of packed files ----

def materialise(image: Image, packed: PackedFile, original: str) -> str:
    """The packed file's bytes in the cache: files/HASH/NAME, NAME the base name of the
    image's path when it is a plain one (a debugger shows it as the module's name), else
    "file". An existing copy is used when its bytes match the hash, else replaced (the
    directory is the cache's own); another name of the same bytes is a hard link."""
    name = packed.digest.hex()
    if len(packed.digest) != 32:
        raise RestoreError(f"packed file {packed.paths[0]}: malformed hash")
    directory = os.path.join(cache_dir(), "files", name)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, _plain_name(original))
    if _cached(path, packed.digest):
        return path
    for other in os.listdir(directory):
        source = os.path.join(directory, other)
        if not other.startswith(".") and _cached(source, packed.digest):
            _replace_with(path, lambda temporary, source=source: os.link(source, temporary))
            return path
    data = packed.data(image)  # checked against the digest

    def write(temporary: str) -> None:
        with open(temporary, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o555)  # the executable is started from here; nobody writes it
    _replace_with(path, write)
    return path


def _plain_name(path: str) -> str:
    name = os.path.basename(path)
    ok = name not in ("", ".", "..") and not name.startswith(".") and len(name) <= 200 \
        and name.isprintable()
    return name if ok else "file"


def _replace_with(path: str, make: Callable[[str], None]) -> None:
    """Make a file beside `path` under a temporary name, then rename it to `path`."""
    temporary = os.path.join(os.path.dirname(path), f".part-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        make(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def _cached(path: str, digest: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and identity.whole_file_digest(fd) == digest
    finally:
        os.close(fd)


def _safe_relative(path: str) -> str | None:
    """An image path as a relative path under a directory of ours, or None when it is not
    a plain absolute path (.., empty or odd components)."""
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        return None
    parts = path.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(parts)


def debugger_root(image: Image) -> str | None:
    """For a restore that moved files: a tree in the cache mirroring the image's original
    paths, each a symlink to the file used, for the debugger's sysroot (GDB reads the
    libraries named by the restored link map, which are the original paths). None when
    nothing moved."""
    if not image.moved:
        return None
    pairs = sorted((o, n) for o, n in image.moved.items())
    key = hashlib.blake2b(repr(pairs).encode(), digest_size=16).hexdigest()
    root = os.path.join(cache_dir(), "roots", key)
    used_paths = set(image.moved.values())
    originals = {v.path for v in image.vmas if v.path and v.path not in used_paths}
    for original in sorted(originals | set(image.moved)):
        used = image.moved.get(original, original)
        relative = _safe_relative(original)
        if relative is not None:
            _tree_link(root, relative, used)
    flat = flat_dir(root)
    os.makedirs(flat, mode=0o700, exist_ok=True)
    for original in sorted(originals | set(image.moved)):
        name = os.path.basename(original)
        if name and name not in (".", ".."):
            try:
                _link(image.moved.get(original, original), os.path.join(flat, name))
            except OSError:
                pass  # two paths of one base name: the first stays
    return root


def _tree_link(root: str, relative: str, used: str) -> None:
    """root/relative -> used, where every directory on the way is a real one of the tree
    (a path that is a file of the image and a directory of another is left out)."""
    link = os.path.join(root, relative)
    try:
        os.makedirs(os.path.dirname(link), mode=0o700, exist_ok=True)
        if os.path.realpath(os.path.dirname(link)) != os.path.join(
                os.path.realpath(root), os.path.dirname(relative)).rstrip("/"):
            return  # a link on the way: not ours to follow
        _link(used, link)
    except OSError:
        pass


def flat_dir(root: str) -> str:
    """Beside the tree: the files by base name, for a debugger that looks a library up by
    another path than the mapping's (/lib/... for /usr/lib/..., PT_INTERP's /lib64)."""
    return root + ".by-name"


def _link(target: str, link: str) -> None:
    if os.path.islink(link) and os.readlink(link) == target:
        return
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)
