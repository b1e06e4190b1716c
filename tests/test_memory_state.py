"""Memory beyond private and file mappings (issue 10, issue 11 defect 2): shared objects,
a shared file mapping's right to become writable, growsdown mappings, guard pages, madvise
state. Each is checked by a program of its own after a restore, in GDB and in LLDB."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import synthetic
from construct import Container
from cprogs import compile_program
from gdbmi import Gdb, GdbError
from lldb_helpers import lldb_batch, lldb_missing
from selfcheck import gdb_round_trip, lldb_round_trip
from test_gdb_restore import dump_at_checkpoint

from binfmt_img import state
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.formats import image_file, v1
from binfmt_img.formats.model import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, Vma
from binfmt_img.live.dump import DumpPlan
from binfmt_img.live.procfs import parse_maps
from binfmt_img.state import vma_extra

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")

PROGRAMS = {"mem_shared": 11, "mem_shared_file": 3, "mem_growsdown": 3, "mem_guard": 5,
            "mem_madvise": 12, "mem_sparse": 2}


@needs_gdb
@pytest.mark.parametrize(("name", "expected"), PROGRAMS.items())
def test_memory_gdb(tmp_path: Path, name: str, expected: int) -> None:
    gdb_round_trip(tmp_path, name, expected=expected)


@needs_lldb
@pytest.mark.parametrize(("name", "expected"), PROGRAMS.items())
def test_memory_lldb(tmp_path: Path, name: str, expected: int) -> None:
    lldb_round_trip(tmp_path, name, expected=expected)


# --- a restore never writes a file (issue 11, defect 2) ---------------------------------------

def _forged(image_path: Path, target: Path, flags: int) -> Path:
    """The image with the shared mapping of `target` given `flags` and a page of 'X's stored
    in it: what an image crafted to overwrite a file looks like."""
    image = image_file.load(str(image_path))
    vma = next(v for v in image.vmas if v.path == str(target))
    vma.flags = flags
    pages = sorted([(vaddr, bytes(data)) for vaddr, data in image.iter_pages()]
                   + [(vma.start, b"X" * PAGE_SIZE)])
    out = image_path.with_suffix(".forged.img")
    with open(out, "wb") as f:
        v1.write(f, image, pages)
    return out


@needs_gdb
@pytest.mark.parametrize("flags", [MAP_SHARED, MAP_SHARED | MAP_PRIVATE],
                         ids=["MAP_SHARED", "MAP_SHARED_VALIDATE"])
def test_restore_never_writes_a_mapped_file(tmp_path: Path, flags: int) -> None:
    target = tmp_path / "mapped.bin"
    binary = compile_program("mem_shared_file", tmp_path)
    image = tmp_path / "shared_file.img"
    dump_at_checkpoint(binary, image, str(target))
    before = target.read_bytes()
    forged = _forged(image, target, flags)
    gdb = Gdb()
    try:
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {forged}")
    finally:
        gdb.close()
    assert f"would land in shared file mapping {target}" in str(refused.value)
    assert "\n" not in str(refused.value).strip()
    assert target.read_bytes() == before


@needs_gdb
@needs_lldb
def test_restore_never_writes_a_mapped_file_lldb(tmp_path: Path) -> None:
    target = tmp_path / "mapped.bin"
    binary = compile_program("mem_shared_file", tmp_path)
    image = tmp_path / "shared_file.img"
    dump_at_checkpoint(binary, image, str(target))
    before = target.read_bytes()
    forged = _forged(image, target, MAP_SHARED | MAP_PRIVATE)
    result = lldb_batch(f"img-restore {forged}")
    assert f"would land in shared file mapping {target}" in result.stdout + result.stderr
    assert target.read_bytes() == before


def test_unknown_vma_flag_bits_are_refused() -> None:
    image = synthetic.make_image("v1")
    image.vmas[3].flags |= 0x40000  # MAP_HUGETLB: not a flag a dump records
    data = synthetic.encode(image, "v1")
    with pytest.raises(ImageError, match=r"has unknown flag bits 0x40000"):
        image_file.parse(memoryview(data))


def test_vma_without_a_sharing_type_is_refused() -> None:
    image = synthetic.make_image("v1")
    image.vmas[3].flags = MAP_ANONYMOUS | 0x04
    data = synthetic.encode(image, "v1")
    with pytest.raises(ImageError, match=r"no valid sharing type"):
        image_file.parse(memoryview(data))


def test_shared_validate_is_shared() -> None:
    assert Vma(0, PAGE_SIZE, 3, MAP_SHARED | MAP_PRIVATE).is_shared
    assert not Vma(0, PAGE_SIZE, 3, MAP_PRIVATE | MAP_ANONYMOUS).is_shared


# --- what the restore says -------------------------------------------------------------------

@needs_gdb
def test_sysv_identity_is_warned_about(tmp_path: Path) -> None:
    binary = compile_program("mem_shared", tmp_path)
    image = tmp_path / "mem_shared.img"
    dump_at_checkpoint(binary, image)
    gdb = Gdb()
    try:
        said = gdb.console(f"img-restore {image}")
    finally:
        gdb.close()
    assert re.search(r"SysV shared memory at 0x[0-9a-f]+ \(key 0x0\) comes back as a new "
                     "private segment", said), said


@needs_gdb
@needs_lldb
def test_sysv_identity_is_warned_about_lldb(tmp_path: Path) -> None:
    binary = compile_program("mem_shared", tmp_path)
    image = tmp_path / "mem_shared.img"
    dump_at_checkpoint(binary, image)
    result = lldb_batch(f"img-restore {image}")
    said = result.stdout + result.stderr
    assert re.search(r"SysV shared memory at 0x[0-9a-f]+ \(key 0x0\) comes back as a new "
                     "private segment", said), said


def test_unreadable_page_is_named() -> None:
    """A page that cannot be read gives one line naming its address, not a bare errno."""
    plan = DumpPlan.__new__(DumpPlan)
    plan.maps = parse_maps("7f0000000000-7f0000004000 rw-s 00000000 00:05 9 /dev/weird\n")
    plan.pid = 0  # no such process: process_vm_readv fails, /proc/PID/mem (Mem) is read

    class Mem:
        def read(self, addr: int, size: int) -> bytes:
            if addr == 0x7F0000002000:
                raise OSError(errno.EIO, "Input/output error")
            return bytes(size)

        def read_into(self, addr: int, view: memoryview) -> None:
            self.read(0x7F0000002000, PAGE_SIZE)

    with pytest.raises(RestoreError) as caught:
        plan._read(Mem(), 0x7F0000000000, memoryview(bytearray(4 * PAGE_SIZE)))  # type: ignore[arg-type]
    assert str(caught.value) == ("the page at 0x7f0000002000 (/dev/weird) cannot be read: "
                                 "Input/output error")


@needs_gdb
@pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("prlimit") is None,
                    reason="setpriv and prlimit are needed to take the mlock right away")
def test_refused_mlock_is_warned_about(tmp_path: Path) -> None:
    """Without CAP_IPC_LOCK and with RLIMIT_MEMLOCK 0 mlock is refused: the restore goes on
    and says which range is no longer locked, naming the limit."""
    binary = compile_program("mem_madvise", tmp_path)
    image = tmp_path / "mem_madvise.img"
    dump_at_checkpoint(binary, image)
    result = subprocess.run(
        ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "prlimit",
         "--memlock=0:0", "gdb", "-nx", "-q", "-batch", "-ex",
         f"source {Path(__file__).parent.parent / 'gdb_img' / 'init.py'}",
         "-ex", f"set args > {tmp_path / 'out'}", "-ex", f"img-restore {image}",
         "-ex", "continue"], capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)
    said = result.stdout + result.stderr
    assert re.search(r"0x[0-9a-f]+-0x[0-9a-f]+ was locked in memory \(mlock\) and is not now: "
                     r"EPERM .*RLIMIT_MEMLOCK", said), said
    assert "exited normally" in said, said
    assert "FAIL VmFlags lo kept" in (tmp_path / "out").read_text()


def _old_style(tmp_path: Path) -> Path:
    """mem_shared's image as a binfmt-img before vma_extra made it: shared anonymous memory
    recorded as a /dev/zero file mapping with no pages."""
    binary = compile_program("mem_shared", tmp_path)
    image_path = tmp_path / "mem_shared.img"
    dump_at_checkpoint(binary, image_path)
    image = state.decode(image_file.load(str(image_path)))
    old = {e.start for e in image.states.pop("vma_extra").vmas if e.object == 1}
    image.raw_states = [r for r in image.raw_states if r[0] != state.BY_NAME["vma_extra"].section]
    for vma in image.vmas:
        if vma.start in old:
            vma.path, vma.flags = "/dev/zero", MAP_SHARED
    pages = [(vaddr, bytes(data)) for vaddr, data in image.iter_pages()
             if not any(v.start <= vaddr < v.end for v in image.vmas if v.start in old)]
    forged = tmp_path / "old.img"
    with open(forged, "wb") as f:
        v1.write(f, image, pages)
    return forged


OLD_LOSS = (r"would not bring back: shared anonymous memory at 0x[0-9a-f]+-0x[0-9a-f]+ "
            r"\(the image holds no contents for it\)")


@needs_gdb
def test_old_image_shared_anonymous_is_a_loss(tmp_path: Path) -> None:
    """Refused, naming it; with --accept-loss restored with a warning."""
    forged = _old_style(tmp_path)
    gdb = Gdb()
    try:
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {forged}")
        said = gdb.console(f"img-restore {forged} --accept-loss")
    finally:
        gdb.close()
    assert re.search(OLD_LOSS, str(refused.value)), str(refused.value)
    assert "not restored: shared anonymous memory at" in said, said


@needs_gdb
@needs_lldb
def test_old_image_shared_anonymous_is_a_loss_lldb(tmp_path: Path) -> None:
    forged = _old_style(tmp_path)
    refused = lldb_batch(f"img-restore {forged}")
    assert re.search(OLD_LOSS, refused.stdout + refused.stderr), refused.stdout + refused.stderr
    accepted = lldb_batch(f"img-restore {forged} --accept-loss")
    said = accepted.stdout + accepted.stderr
    assert "not restored: shared anonymous memory at" in said, said


# --- the vma_extra record is checked before any change ---------------------------------------

def _entry(**fields: object) -> Container:
    entry = {"start": synthetic.SHM, "vmflags": "rd mr mw me sh", "object": 1, "inode": 7,
             "pgoff": 0, "key": 0, "name": "", "guards": []}
    entry.update(fields)
    return vma_extra.Record.parse(vma_extra.Record.build({"vmas": [entry]}))


@pytest.mark.parametrize(("fields", "message"), [
    ({"start": 0x1000}, "names a VMA at 0x1000 the image lacks"),
    ({"vmflags": "rd; shell"}, "are not two-letter codes"),
    ({"object": 9}, "unknown object kind 9"),
    ({"object": 2, "name": "a/b"}, "is not one memfd_create takes"),
    ({"pgoff": 1 << 40}, "is beyond any object"),
    ({"pgoff": (1 << 46) // PAGE_SIZE}, "more than 64 TiB"),
    ({"guards": [{"start": synthetic.SHM + PAGE_SIZE, "count": 1}]}, "lie outside it"),
])
def test_vma_extra_refused(fields: dict, message: str) -> None:
    image = synthetic.make_image("v1")
    image.vmas[5] = Vma(synthetic.SHM, synthetic.SHM + PAGE_SIZE, 3, MAP_SHARED | MAP_ANONYMOUS)
    plan = SimpleNamespace(image=image, report=SimpleNamespace(warnings=[]), local=True)
    with pytest.raises(RestoreError, match=re.escape(message)):
        vma_extra.check(plan, _entry(**fields))  # type: ignore[arg-type]


def test_vma_extra_object_on_a_file_is_refused() -> None:
    plan = SimpleNamespace(image=synthetic.make_image("v1"), report=SimpleNamespace(warnings=[]),
                           local=True)
    with pytest.raises(RestoreError, match="a shared object on a VMA that is not shared memory"):
        vma_extra.check(plan, _entry())  # type: ignore[arg-type]


def test_shared_file_no_longer_writable_is_refused(tmp_path: Path) -> None:
    """VmFlags mw: the file must be opened for writing again; a file that is not writable now
    is refused before any change, not found out at the open."""
    image = synthetic.make_image("v1")
    image.vmas[5].path = str(tmp_path / "gone")
    plan = SimpleNamespace(image=image, report=SimpleNamespace(warnings=[]), local=True)
    with pytest.raises(RestoreError, match=r"had it open for writing; it is not writable now"):
        vma_extra.check(plan, _entry(object=0, inode=0))  # type: ignore[arg-type]


@needs_gdb
@pytest.mark.skipif(not os.access("/proc/self/map_files", os.R_OK) or os.geteuid() != 0,
                    reason="map_files needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN")
def test_sparse_shared_object_dumps_its_data_only(tmp_path: Path) -> None:
    """2 GiB of shared objects holding two pages of data: the dump reads (and so allocates in
    the inferior) only those, not every page of the mappings."""
    binary = compile_program("mem_sparse", tmp_path)
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        gdb.until_stopped(f"run > {tmp_path / 'out'}")
        said = gdb.console(f"img-dump {tmp_path / 'sparse.img'}")
        gdb.console("kill")
    finally:
        gdb.close()
    read = re.search(r"(\d+) pages", said)
    assert read and int(read.group(1)) < 1000, said
