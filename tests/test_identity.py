"""Restoring on another machine (issue 14): mapped files identified by content (build-id or
hash), --exe/--map/--sysroot for moved files, and packed images (img-dump --pack) restored
where the original files are different or absent, in GDB and LLDB."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cprogs import compile_program
from gdbmi import Gdb, GdbError
from lldb_helpers import lldb_batch, lldb_missing, read
from selfcheck import GDB_SIGNALS, LLDB_SIGNALS, passes
from test_gdb_restore import dump_at_checkpoint

from binfmt_img.formats import identity, image_file

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")
CHECKS = 3  # PASS lines of identity.c after the restore (4 with a data file)
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packed files go to this test's cache, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _restore_and_finish(gdb: Gdb, image: Path, out: Path, options: str = "") -> str:
    """img-restore, continue to the end in an open GDB; what the program printed after."""
    gdb.console(f"set args > {out}")
    gdb.console(f"img-restore {image} {options}".strip())
    stop = gdb.until_stopped("continue")
    assert stop.get("reason") == "exited-normally", (stop, read(out))
    return out.read_text()


def _refused(gdb: Gdb, command: str) -> str:
    with pytest.raises(GdbError) as caught:
        gdb.console(command)
    message = str(caught.value)
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


def test_identity_by_build_id_and_hash(tmp_path: Path) -> None:
    """The recorded identity: an ELF's build-id read from its notes, a hash of the mapped
    bytes for a file without one; a copy is the same, another build is not."""
    binary = compile_program("identity", tmp_path)
    ranges = [(0, 8192)]
    first = identity.content_id(str(binary), ranges)
    assert len(first.build_id) == 20 and not first.digest
    copy = tmp_path / "copy"
    shutil.copy(binary, copy)
    assert first.differs(identity.content_id(str(copy), ranges)) is None
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    other = compile_program("identity", rebuilt, "-DVARIANT=2")
    assert "build-id" in (first.differs(identity.content_id(str(other), ranges)) or "")
    data = tmp_path / "data"
    data.write_bytes(b"identity-data" * 1000)
    hashed = identity.content_id(str(data), ranges)
    assert not hashed.build_id and hashed.digest
    data.write_bytes(b"identity-data" * 999 + b"x" * 13)  # beyond what is mapped
    assert hashed.differs(identity.content_id(str(data), ranges)) is None
    data.write_bytes(b"x" * 13 + b"identity-data" * 999)
    assert "content" in (hashed.differs(identity.content_id(str(data), ranges)) or "")


@needs_gdb
def test_copied_executable_accepted_other_build_refused_gdb(tmp_path: Path) -> None:
    """Copied away (the original gone): refused naming the path and the options; --exe to
    the copy: restored; the copy moved back: restored; a rebuild with other code in its
    place: refused naming the build-ids; img-pack packs, and then refuses the rebuild."""
    binary = compile_program("identity", tmp_path)
    image = tmp_path / "identity.img"
    dump_at_checkpoint(binary, image, setup=(GDB_SIGNALS,))
    packed = tmp_path / "packed.img"
    assert _img_pack(image, "-o", packed).returncode == 0
    assert str(binary) in {p for f in image_file.load(str(packed)).packed for p in f.paths}
    moved = tmp_path / "moved" / "identity"
    moved.parent.mkdir()
    shutil.copy(binary, moved)  # another inode and mtime: the same content
    binary.unlink()
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        message = _refused(gdb, f"img-restore {image}")
        assert f"executable {binary} is gone" in message and "--exe" in message, message
        passes(_restore_and_finish(gdb, image, tmp_path / "out1", f"--exe {moved}"), CHECKS)
        assert "binfmt-img" in gdb.console("show sysroot")  # the tree of the files used
        shutil.move(moved, binary)
        passes(_restore_and_finish(gdb, image, tmp_path / "out2"), CHECKS)
        assert "binfmt-img" not in gdb.console("show sysroot")  # nothing moved: put back
        compile_program("identity", tmp_path, "-DVARIANT=2")  # the same path, other code
        message = _refused(gdb, f"img-restore {image}")
        assert f"mapped file {binary} changed since the dump: build-id " in message, message
        assert " vs " in message, message
    finally:
        gdb.close()
    refused = _img_pack(image)
    assert refused.returncode == 2, refused
    assert f"cannot pack {binary}: changed since the dump: build-id" in refused.stderr


def _img_pack(*args: object) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).parent.parent / "scripts" / "img-pack"
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=60)


@needs_gdb
def test_map_and_sysroot_gdb(tmp_path: Path) -> None:
    """The program and its data file moved under another directory: --map OLD=NEW finds
    them; a sysroot tree holding them at their old paths: --sysroot DIR."""
    old = tmp_path / "old"
    old.mkdir()
    binary = compile_program("identity", old)
    data = old / "data"
    data.write_bytes(b"identity-data".ljust(4096, b"."))
    image = tmp_path / "identity.img"
    dump_at_checkpoint(binary, image, str(data), setup=(GDB_SIGNALS,))
    new = tmp_path / "new"
    shutil.move(old, new)
    root = tmp_path / "root"
    (root / str(old).lstrip("/")).parent.mkdir(parents=True)
    shutil.copytree(new, root / str(old).lstrip("/"))
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        passes(_restore_and_finish(gdb, image, tmp_path / "out1", f"--map {old}={new}"),
               CHECKS + 1)
        passes(_restore_and_finish(gdb, image, tmp_path / "out2", f"--sysroot {root}"),
               CHECKS + 1)
        (new / "data").write_bytes(b"identity-DATA".ljust(4096, b"."))
        message = _refused(gdb, f"img-restore {image} --map {old}={new}")
        assert f"{new}/data (for the image's {old}/data) changed since the dump: content" \
            in message, message
    finally:
        gdb.close()


def _packed_program(tmp_path: Path) -> tuple[Path, Path, Path]:
    """identity.c linked against a copy of libc in tmp_path/lib (found by its rpath), so
    that a mount namespace can put another file there without touching the debugger's."""
    lib, bin_dir = tmp_path / "lib", tmp_path / "bin"
    lib.mkdir()
    bin_dir.mkdir()
    shutil.copy(LIBC, lib / "libc.so.6")
    binary = compile_program("identity", bin_dir, f"-Wl,-rpath,{lib}")
    return lib, bin_dir, binary


def _namespace(tmp_path: Path, lib: Path, bin_dir: Path, argv: list[str]
               ) -> subprocess.CompletedProcess[str]:
    """argv in a new mount namespace where lib/libc.so.6 is another file (/bin/true) and
    the program's directory is empty."""
    script = (f"mount -t tmpfs none {lib} && cp /bin/true {lib}/libc.so.6 && "
              f"mount -t tmpfs none {bin_dir} && exec \"$@\"")
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv],
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, "TERM": "dumb",
                               "XDG_CACHE_HOME": str(tmp_path / "cache")})


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="unshare -m is not allowed")


@needs_gdb
@needs_unshare
def test_packed_image_in_mount_namespace_gdb(tmp_path: Path) -> None:
    """Dumped with --pack (and checkpointed twice into a store with --pack: each file one
    blob); restored where libc is another file and the executable and the mapped data file
    are gone: from the cache, resuming exactly, with symbols; the store's checkpoint too."""
    lib, bin_dir, binary = _packed_program(tmp_path)
    image, store = tmp_path / "identity.img", tmp_path / "store"
    data = bin_dir / "data"
    data.write_bytes(b"identity-data".ljust(4096, b"."))
    gdb = Gdb(str(binary))
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console("break checkpoint")
        gdb.until_stopped(f"run {data} > {tmp_path / 'part1'}")
        gdb.console(f"img-dump {image} --pack")
        for _ in range(2):  # into a store: the files once, as blobs
            gdb.console(f"img-checkpoint --store {store} --pack")
        gdb.console("kill")
    finally:
        gdb.close()
    packed = image_file.load(str(image)).packed
    assert {str(binary), str(lib / "libc.so.6"), str(data)} <= {p for f in packed
                                                                  for p in f.paths}
    blobs = [name for _, _, names in os.walk(store / "blobs") for name in names]
    assert len(blobs) == len(packed), blobs
    out, out2 = tmp_path / "out", tmp_path / "out2"
    root = Path(__file__).parent.parent
    done = _namespace(tmp_path, lib, bin_dir, [
        shutil.which("gdb") or "gdb", "-nx", "-q", "-batch",
        "-ex", f"source {root / 'gdb_img' / 'init.py'}", "-ex", GDB_SIGNALS,
        "-ex", f"set args > {out}", "-ex", f"img-restore {image}", "-ex", "bt",
        "-ex", "info sharedlibrary", "-ex", "continue", "-ex", f"set args > {out2}",
        "-ex", f"img-restore 2 --store {store}", "-ex", "continue"])
    text = done.stdout + done.stderr
    assert text.count("exited normally") == 2, text
    passes(out.read_text(), CHECKS + 1)
    passes(out2.read_text(), CHECKS + 1)
    assert "inner_function" in text and "outer_function" in text and "main" in text, text
    cache = str(tmp_path / "cache" / "binfmt-img")
    libc_lines = [line for line in text.splitlines() if "libc.so.6" in line and "0x" in line]
    assert libc_lines and all(cache in line and "Yes" in line for line in libc_lines), text


def _lldb_dump(binary: Path, image: Path, *options: str, args: tuple[str, ...] = ()) -> None:
    dumped = lldb_batch(f"settings set target.output-path {binary.parent / 'lldb.part1'}",
                        LLDB_SIGNALS, "breakpoint set -n checkpoint",
                        f"process launch -- {' '.join(args)}".strip(),
                        f"img-dump {image} {' '.join(options)}".strip(), "kill",
                        program=binary)
    assert image.exists(), dumped.stdout + dumped.stderr


def _lldb_restore(image: Path, out: Path, options: str = "",
                  then: tuple[str, ...] = ()) -> str:
    done = lldb_batch(f"settings set target.output-path {out}",
                      f"img-restore {image} {options}".strip(), LLDB_SIGNALS, *then,
                      "continue")
    return done.stdout + done.stderr


@needs_lldb
def test_copied_executable_accepted_other_build_refused_lldb(tmp_path: Path) -> None:
    binary = compile_program("identity", tmp_path)
    image = tmp_path / "identity.img"
    _lldb_dump(binary, image)
    moved = tmp_path / "moved" / "identity"
    moved.parent.mkdir()
    shutil.copy(binary, moved)
    binary.unlink()
    text = _lldb_restore(image, tmp_path / "out0")
    assert f"executable {binary} is gone" in text and "--exe" in text, text
    text = _lldb_restore(image, tmp_path / "out1", f"--exe {moved} --map /nowhere=/else",
                         then=("bt",))
    assert "exited with status = 0" in text and "inner_function" in text, text
    passes(read(tmp_path / "out1"), CHECKS)
    root = tmp_path / "root"
    (root / str(binary).lstrip("/")).parent.mkdir(parents=True)
    shutil.copy(moved, root / str(binary).lstrip("/"))
    text = _lldb_restore(image, tmp_path / "out3", f"--sysroot {root}", then=("image list",))
    assert "exited with status = 0" in text and str(root) in text, text
    passes(read(tmp_path / "out3"), CHECKS)
    shutil.move(moved, binary)
    compile_program("identity", tmp_path, "-DVARIANT=2")
    text = _lldb_restore(image, tmp_path / "out2")
    assert f"mapped file {binary} changed since the dump: build-id " in text, text


@needs_lldb
@needs_unshare
def test_packed_image_in_mount_namespace_lldb(tmp_path: Path) -> None:
    lib, bin_dir, binary = _packed_program(tmp_path)
    image = tmp_path / "identity.img"
    data = bin_dir / "data"
    data.write_bytes(b"identity-data".ljust(4096, b"."))
    _lldb_dump(binary, image, "--pack", args=(str(data),))
    out = tmp_path / "out"
    argv = [shutil.which("lldb-19") or "lldb-19", "--no-lldbinit", "--batch"]
    for command in (f"command script import {Path(__file__).parent.parent / 'lldb_img'}",
                    f"settings set target.output-path {out}", f"img-restore {image}",
                    LLDB_SIGNALS, "bt", "image list", "continue"):
        argv += ["-o", command]
    done = _namespace(tmp_path, lib, bin_dir, argv)
    text = done.stdout + done.stderr
    assert "exited with status = 0" in text, text
    passes(read(out), CHECKS + 1)
    assert "inner_function" in text and "outer_function" in text, text
    cache = str(tmp_path / "cache" / "binfmt-img" / "files")
    listed = [line for line in text.splitlines() if line.lstrip().startswith("[")]
    assert any(cache in line for line in listed), text  # the executable and libc
    assert sum(cache in line for line in listed) >= 2, text


# ---- packed files and identities as untrusted input (no debugger) ----

def _packed_image(tmp_path: Path, content: bytes, paths: list[str]) -> Path:
    """A synthetic image carrying `content` as a packed file under `paths`."""
    import synthetic  # noqa: PLC0415 - the tests' image builder

    source = tmp_path / "source"
    source.write_bytes(content)
    image = synthetic.make_image()
    fd = os.open(source, os.O_RDONLY)
    digest = identity.whole_file_digest(fd)
    os.close(fd)
    image.packed = [identity.PackedFile(digest, len(content), paths, origin=str(source))]
    image.contents = {paths[0]: identity.ContentId(build_id=b"\x01" * 20)}
    out = tmp_path / "packed.img"
    out.write_bytes(synthetic.encode(image, "v1"))
    return out


def test_packed_file_round_trip_and_cache_names(tmp_path: Path) -> None:
    """Written and read back; materialised under files/HASH/NAME, a hostile name replaced,
    an existing copy reused; the contents section survives."""
    from binfmt_img.live import relocate  # noqa: PLC0415

    path = _packed_image(tmp_path, b"\x7fELF-not-really" * 100, ["/opt/x/../../etc/passwd",
                                                                   "/opt/app/libfoo.so"])
    image = image_file.load(str(path))
    assert image.contents["/opt/x/../../etc/passwd"].build_id == b"\x01" * 20
    (carried,) = image.packed
    assert carried.paths == ["/opt/x/../../etc/passwd", "/opt/app/libfoo.so"]
    cached = relocate.materialise(image, carried, carried.paths[0])
    assert cached.startswith(str(tmp_path / "cache" / "binfmt-img" / "files" /
                                 carried.digest.hex()))
    assert os.path.basename(cached) == "passwd" and Path(cached).read_bytes() == \
        b"\x7fELF-not-really" * 100
    assert relocate.materialise(image, carried, "/a/..").endswith("/file")
    other = relocate.materialise(image, carried, carried.paths[1])
    assert os.stat(other).st_ino == os.stat(cached).st_ino  # a hard link, not a second copy
    image.moved = {"/opt/x/../../etc/passwd": "/tmp/a", "/opt/app/libfoo.so": "/tmp/b"}
    root = relocate.debugger_root(image)  # no ".." path in the debugger's tree
    assert root is not None and not (Path(root) / "etc").exists()
    assert os.readlink(Path(root) / "opt" / "app" / "libfoo.so") == "/tmp/b"


def test_packed_file_damage_refused(tmp_path: Path) -> None:
    """Bytes that do not match the digest are refused when used; a size overrunning the
    section at load."""
    import synthetic  # noqa: PLC0415

    from binfmt_img.errors import ImageError  # noqa: PLC0415
    from binfmt_img.formats import v1  # noqa: PLC0415

    path = _packed_image(tmp_path, b"A" * 5000, ["/opt/app/data"])
    data = bytearray(path.read_bytes())
    offset, _ = synthetic.section(bytes(data), v1.SECTION_PACKED)
    at = data.index(b"A" * 5000, offset)
    data[at] = ord("B")
    path.write_bytes(data)
    image = image_file.load(str(path))
    with pytest.raises(ImageError, match="do not match its hash"):
        image.packed[0].data(image)
    grown = synthetic.patch_section(bytes(data), v1.SECTION_PACKED, lambda p: p + b"extra")
    path.write_bytes(grown)
    with pytest.raises(ImageError, match="packed file section"):
        image_file.load(str(path))


@needs_gdb
def test_rebuilt_while_running_packs_the_mapped_file_gdb(tmp_path: Path) -> None:
    """The program rebuilt (other code) while it runs: the dump records and packs the file
    the process maps (/proc/PID/map_files), not the new build at its path; the restore
    then runs the packed copy, and resumes exactly."""
    binary = compile_program("identity", tmp_path)
    image = tmp_path / "identity.img"
    gdb = Gdb(str(binary))
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console("break checkpoint")
        gdb.until_stopped(f"run > {tmp_path / 'part1'}")
        compile_program("identity", tmp_path, "-DVARIANT=2")  # a new file at the path
        gdb.console(f"img-dump {image} --pack")
        gdb.console("kill")
    finally:
        gdb.close()
    gdb = Gdb()
    try:
        gdb.console(GDB_SIGNALS)
        gdb.console(f"set args > {tmp_path / 'out'}")
        said = gdb.console(f"img-restore {image}")
        assert f"{binary}: the image's packed copy" in said, said
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()
    passes((tmp_path / "out").read_text(), CHECKS)
