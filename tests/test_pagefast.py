"""The page writes of a large restore beside the inferior's own work (binfmt_img/live/pagefast):
the inferior frees the replaced process's memory and populates its fresh pages while GDB
writes, and the result is exactly what the plain writes gave; a changed image is still
noticed, an old kernel (no MADV_POPULATE_WRITE) still restores, Ctrl-C still says so."""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import struct
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from lldb_helpers import gdb_batch
from test_gdb_restore import dump_at_checkpoint
from test_untrusted import CHANGE_MID_RESTORE, INTERRUPTED_RESTORE

from binfmt_img.formats.model import PAGE_SIZE, PROT_READ, PROT_WRITE, Image, PageRun, Vma
from binfmt_img.live import pagefast
from binfmt_img.live.inject import Batch, Injector
from binfmt_img.live.procfs import Mapping

gdb_missing = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
MIB = 72  # above POPULATE_FROM and PARK_FROM: the real thresholds, no patching


def _vma(start: int, pages: int, prot: int = PROT_READ | PROT_WRITE, flags: int = 0x22,
         path: str | None = None) -> Vma:
    return Vma(start=start, end=start + pages * PAGE_SIZE, prot=prot, flags=flags, pgoff=0,
               path=path)


def test_only_private_anonymous_writable_runs_are_populated() -> None:
    image = Image(vmas=[_vma(0x10000, 4), _vma(0x20000, 4, prot=PROT_READ),
                        _vma(0x30000, 4, flags=0x21), _vma(0x40000, 4, flags=0x2, path="/f"),
                        _vma(0x50000, 8)])
    runs = [PageRun(0x10000, 2, 0), PageRun(0x12000, 2, 0), PageRun(0x20000, 4, 0),
            PageRun(0x30000, 4, 0), PageRun(0x40000, 4, 0), PageRun(0x50000, 2, 0),
            PageRun(0x54000, 4, 0)]
    assert pagefast.populate_ranges(image, runs) == [(0x10000, 0x14000), (0x50000, 0x52000),
                                                     (0x54000, 0x58000)]


def test_chunks_go_down_from_the_top_and_stay_few() -> None:
    got = pagefast.chunks([(0, 20 << 20), (64 << 20, 72 << 20)])
    assert got == [(64 << 20, 8 << 20), (12 << 20, 8 << 20), (4 << 20, 8 << 20),
                   (0, 4 << 20)]
    many = pagefast.chunks([(0, 64 << 30)])
    assert len(many) <= pagefast.MAX_CHUNKS and sum(size for _, size in many) == 64 << 30
    assert all(size % PAGE_SIZE == 0 for _, size in many)


class _Word:
    def __init__(self, value: int) -> None:
        self.value = value
        self.reads = 0

    def read(self, _addr: int, _size: int) -> bytes:
        self.reads += 1
        return struct.pack("<Q", self.value)


def test_the_writer_trusts_only_page_aligned_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pagefast, "READ_EVERY", 1)
    word = _Word(pagefast.NOTHING)
    seen = pagefast.Populated(word, 0x1000)  # type: ignore[arg-type]
    assert not seen.covers(0x400000)
    word.value = 0x800000
    assert seen.covers(0x800000) and seen.covers(0x900000) and not seen.covers(0x7FF000)
    word.value = 0x600000 - 22  # madvise said EINVAL: an old kernel
    assert not seen.covers(0x600000) and seen.failed
    word.value = 0
    assert not seen.covers(0x900000)  # never again


def test_the_progress_is_read_every_third_piece_until_they_meet() -> None:
    word = _Word(0x800000)
    seen = pagefast.Populated(word, 0x1000)  # type: ignore[arg-type]
    answers = [seen.covers(0x100000 * i) for i in range(1, 11)]
    assert answers == [False] * 7 + [True] * 3  # read at 1 (too low), 4 and 7: then sure
    assert word.reads == 3
    assert seen.covers(0x900000) and word.reads == 3  # above what it read: no read


def test_vm_write_writes_and_stops_short_at_a_read_only_page() -> None:
    area = mmap.mmap(-1, 2 * PAGE_SIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    data = memoryview(bytearray(b"x" * PAGE_SIZE + b"y" * PAGE_SIZE))
    assert pagefast.vm_write(os.getpid(), base, data) == 2 * PAGE_SIZE
    assert area[:PAGE_SIZE] == b"x" * PAGE_SIZE and area[PAGE_SIZE:] == b"y" * PAGE_SIZE
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base + PAGE_SIZE, PAGE_SIZE, PROT_READ) == 0
    data[:] = b"z" * (2 * PAGE_SIZE)
    assert pagefast.vm_write(os.getpid(), base, data) == PAGE_SIZE  # /proc/PID/mem's to do
    assert pagefast.vm_write(os.getpid(), base, memoryview(b"ro")) == 0  # read-only source


RESTORE_AGAIN = '''
import gdb
from binfmt_img.live import pagefast
stats = {{"written": 0, "parked": 0}}
real_write, real_park = pagefast.vm_write, pagefast.park
def vm_write(pid, addr, view):
    done = real_write(pid, addr, view)
    stats["written"] += done
    return done
def park(*args):
    parked = real_park(*args)
    stats["parked"] += len(parked)
    return parked
pagefast.vm_write, pagefast.park = vm_write, park
{setup}
def maps():
    with open(f"/proc/{{gdb.selected_inferior().pid}}/maps") as f:
        return f.read()
def big():  # the large mapping's smaps fields that populating could change
    with open(f"/proc/{{gdb.selected_inferior().pid}}/smaps") as f:
        blocks = f.read().split("\\nVmFlags:")
    block = next(b for b in blocks if "Size:              73728 kB" in b)
    flags = blocks[blocks.index(block) + 1].split("\\n")[0]
    return [line for line in block.splitlines() if line.split(":")[0] in (
        "Rss", "Anonymous", "AnonHugePages", "Private_Dirty", "Swap")] + [flags]
before, fields = maps(), big()
gdb.execute("img-restore {image} --yes")
print("SAME MAPS", maps() == before)
print("SAME SMAPS", big() == fields, fields)
print("STATS", stats["written"], stats["parked"])
'''


def _restore_again(tmp_path: Path, setup: str = "") -> tuple[str, str, str]:
    """Dump bigmem at its checkpoint, restore the image into the running process (its large
    mapping parked and freed beside the writes), run on: (GDB's output, the program's
    output, the uninterrupted run's)."""
    binary = compile_program("bigmem", tmp_path)
    expected = run_uninterrupted(binary, str(MIB))
    image = tmp_path / "big.img"
    out = tmp_path / "out"
    script = tmp_path / "again.py"
    script.write_text(RESTORE_AGAIN.format(image=image, setup=setup))
    done = gdb_batch("break checkpoint", f"run {MIB} > {out}", f"img-dump {image}",
                     f"source {script}", "continue", program=binary, timeout=120)
    return done.stdout + done.stderr, out.read_text() if out.exists() else "", expected


@gdb_missing
def test_restore_into_a_running_process_populating(tmp_path: Path) -> None:
    text, output, expected = _restore_again(tmp_path)
    assert "SAME MAPS True" in text and "SAME SMAPS True" in text, text
    stats = next(line for line in text.splitlines() if line.startswith("STATS"))
    written, parked = (int(n) for n in stats.split()[1:])
    assert parked == 1 and written > 0, text  # both paths taken, not just the old one
    assert output == expected, text


@gdb_missing
def test_a_kernel_without_populate_write_restores_the_same(tmp_path: Path) -> None:
    """madvise refuses an advice it does not know (EINVAL): no page goes through
    process_vm_writev, and the restore is the same."""
    text, output, expected = _restore_again(tmp_path, "pagefast.MADV_POPULATE_WRITE = 0x7fff")
    assert "SAME MAPS True" in text and "STATS 0 1" in text, text
    assert output == expected, text


@gdb_missing
@pytest.mark.parametrize("truncate", [False, True])
def test_image_changed_during_a_populated_restore(tmp_path: Path, truncate: bool) -> None:
    """The re-check as the pages go in still notices a change or a truncation, with the
    inferior populating meanwhile (its table waited for, not left running)."""
    binary = compile_program("heap", tmp_path)
    good = tmp_path / "good.img"
    dump_at_checkpoint(binary, good)
    image = tmp_path / "changing.img"
    shutil.copy(good, image)
    script = tmp_path / "script.py"
    script.write_text("from binfmt_img.live import pagefast\npagefast.POPULATE_FROM = 0\n"
                      + CHANGE_MID_RESTORE.format(image=str(image), truncate=truncate)
                      + "print('REGS', gdb.parse_and_eval('$pc') != 0)\n")
    done = gdb_batch("break checkpoint", "run > /dev/null", f"source {script}",
                     program=binary)
    result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT")),
                  done.stdout + done.stderr)
    expected = "ends before its page data" if truncate else "changed during the restore"
    assert expected in result, result
    assert "REGS True" in done.stdout, done.stdout + done.stderr  # stopped, GDB can read it


@gdb_missing
def test_an_interrupted_populated_restore_says_so(tmp_path: Path) -> None:
    binary = compile_program("heap", tmp_path)
    image = tmp_path / "heap.img"
    dump_at_checkpoint(binary, image)
    script = tmp_path / "script.py"
    script.write_text("from binfmt_img.live import pagefast\npagefast.POPULATE_FROM = 0\n"
                      + INTERRUPTED_RESTORE.format(image=str(image)))
    done = gdb_batch(f"source {script}")
    text = done.stdout + done.stderr
    assert "RESULT img-restore: interrupted; the process started for the restore was " \
           "half-restored and is killed" in text, text
    assert "PID 0" in text, text


def _files(**changed: str) -> dict[str, str]:
    files = {
        "/proc/sys/vm/overcommit_memory": "0\n",
        "/proc/7/limits": "Limit                     Soft Limit           Hard Limit    Units\n"
                          "Max address space         unlimited            unlimited     bytes\n",
        "/proc/meminfo": "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n",
        "/proc/7/cgroup": "4:memory:/jobs/one\n1:cpu:/\n0::/user/app\n",
        "/sys/fs/cgroup/memory/jobs/one/memory.limit_in_bytes": "9223372036854771712\n",
        "/sys/fs/cgroup/memory/jobs/one/memory.usage_in_bytes": "1000\n",
        "/sys/fs/cgroup/user/app/memory.max": "max\n",
        "/sys/fs/cgroup/user/app/memory.current": "1000\n",
        "/sys/fs/cgroup/user/memory.max": "max\n",
        "/sys/fs/cgroup/user/memory.current": "1000\n",
    }
    files.update({k.replace("__", "/"): v for k, v in changed.items()})
    return files


@pytest.mark.parametrize(("changed", "room"), [
    ({}, True),
    ({"__proc__sys__vm__overcommit_memory": "2\n"}, False),
    ({"__proc__7__limits": "Max address space         4294967296  unlimited  bytes\n"}, False),
    ({"__proc__meminfo": "MemAvailable:   1000000 kB\n"}, False),
    ({"__sys__fs__cgroup__user__memory.max": str(3 << 29)}, False),  # a parent's limit
    ({"__sys__fs__cgroup__memory__jobs__one__memory.limit_in_bytes": str(5 << 30)}, True),
    ({"__sys__fs__cgroup__memory__jobs__one__memory.limit_in_bytes": str(3 << 29)}, False),
])
def test_the_old_memory_stays_only_with_room_for_both(monkeypatch: pytest.MonkeyPatch,
                                                     changed: dict[str, str],
                                                     room: bool) -> None:
    """Strict overcommit, an address space limit, a tight memory cgroup (v1 or v2, any
    level) or machine: the replaced memory is unmapped first, as before."""
    files = _files(**changed)

    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]
    monkeypatch.setattr(pagefast, "_read", read)
    assert pagefast.room_to_park(7, 1 << 30) is room


class _Resumable:
    def resume_to_trap(self, traps: tuple[int, ...] = ()) -> bool:
        return True


def test_old_memory_moved_aside_only_for_a_populated_restore(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pagefast, "room_to_park", lambda _pid, _size: True)
    live = [Mapping(0x10000000, 0x10000000 + (64 << 20), "rw-p", 0, "00:00", 0, ""),
            Mapping(0x30000000, 0x30000000 + (64 << 20), "rw-s", 0, "00:01", 9, "/memfd:x"),
            Mapping(0x50000000, 0x50000000 + (1 << 20), "rw-p", 0, "00:00", 0, "")]
    batch = Batch(Injector(_Resumable()))  # type: ignore[arg-type]
    small = Image(vmas=[_vma(0x10000, 4)], runs=[PageRun(0x10000, 4, 0)])
    assert pagefast.park(batch, small, 7, live, []) == [] and len(batch) == 0
    pages = (128 << 20) // PAGE_SIZE
    big = Image(vmas=[_vma(0x400000000, pages)], runs=[PageRun(0x400000000, pages, 0)])
    area = pagefast.park(batch, big, 7, live, [(0x7F0000000000, 0x7F0004000000)])
    assert len(area) == 1 and len(batch) == 1  # the one large private anonymous mapping
    start, end = area[0]
    assert end - start >= 64 << 20 and not any(s < end and start < e for s, e in [
        (m.start, m.end) for m in live] + [(0x400000000, 0x408000000)])
    args = batch.entries[0].args
    assert args[0] == 0x10000000 and args[4] % pagefast.PMD == 0x10000000 % pagefast.PMD
