"""The restorer program (binfmt_img/live/restorer.py): its bytes against its source, and its table
run natively, in a child process this test forks (an RWX page called through ctypes)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from binfmt_img.live import restorer
from binfmt_img.live import syscalls as sc
from binfmt_img.live.restorer import Layout, Ref, build

GETPID, DUP, FCNTL, GETCWD = 39, 32, 72, 79
F_GETFD = 1
MAP_PRIVATE_ANON = 0x22

# rbx, r12, r14 from the C calling convention's rdi, rsi, rdx; call the program; r13 back.
TRAMPOLINE = bytes.fromhex(
    "53 41 54 41 55 41 56"  # push rbx; push r12; push r13; push r14
    "48 89 fb 49 89 f4 49 89 d6"  # mov rbx, rdi; mov r12, rsi; mov r14, rdx
    "e8 0b 00 00 00"  # call program (after the 11 bytes below)
    "4c 89 e8"  # mov rax, r13
    "41 5e 41 5d 41 5c 5b"  # pop r14; pop r13; pop r12; pop rbx
    "c3"  # ret
)


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as is not installed")
def test_bytes_are_the_source_assembled(tmp_path: Path) -> None:
    (tmp_path / "r.s").write_text(restorer.source())
    subprocess.run(["as", "--64", "-o", tmp_path / "r.o", tmp_path / "r.s"], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", tmp_path / "r.o",
                    tmp_path / "r.bin"], check=True)
    assert (tmp_path / "r.bin").read_bytes() == restorer.CODE


def _in_child(body: Callable[[], object]) -> object:
    """body() in a forked child (a wrong table may crash it); its pickled result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.write(write_end, pickle.dumps(body()))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"the child died: status {status:#x}"
    return pickle.loads(data)


def _run_natively(entries: list, data: bytes = b"") -> tuple[int, list[int], bytes]:
    """Run the table in this process: (r13 at the trap, results, data after)."""
    # The int3s become rets, so the program returns to the trampoline.
    program = restorer.CODE[:restorer.FAILED - 1] + b"\xc3\xc3" + restorer.CODE[restorer.END:]
    code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(TRAMPOLINE + program)
    table = mmap.mmap(-1, 1 << 20)
    base = ctypes.addressof(ctypes.c_char.from_buffer(table))
    layout = Layout(base, len(entries), len(data))
    table.write(build(layout, entries, data))
    function = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                                ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(code)))
    index = function(layout.table, len(entries), layout.results)
    ran = min(index + 1, len(entries))
    results = list(struct.unpack_from(f"<{ran}Q", table, layout.results - base))
    return index, results, bytes(table[layout.data - base:layout.end - base])


def test_program_starts_with_the_call_offset_the_trampoline_assumes() -> None:
    assert len(TRAMPOLINE) == 7 + 9 + 5 + 3 + 7 + 1


def test_a_table_runs_to_its_end() -> None:
    entries = [(GETPID, (), False), (sc.GETPID, (), False)]
    index, results, _ = _in_child(lambda: _run_natively(entries))
    assert index == 2
    assert results[0] == results[1] != os.getpid()  # the child's


def test_results_feed_later_arguments() -> None:
    """open -> fcntl(fd) -> dup(fd) -> close(fd): the fd is an earlier entry's result."""
    def body():
        data = b"/dev/null\0"
        path = Ref("data", 0)
        fd = Ref("result", 0)
        entries = [(sc.OPEN, (path, sc.O_CLOEXEC, 0), False),
                   (FCNTL, (fd, F_GETFD), False),
                   (DUP, (fd,), False),
                   (sc.CLOSE, (fd,), False),
                   (FCNTL, (fd, F_GETFD), True)]  # closed now: EBADF, allowed to fail
        index, results, _ = _run_natively(entries, data)
        return index, results, os.readlink(f"/proc/self/fd/{results[2]}")
    index, results, dup_target = _in_child(body)
    assert index == 5
    assert results[1] == 1  # FD_CLOEXEC
    assert results[2] != results[0] and dup_target == "/dev/null"
    assert results[3] == 0 and results[4] == (1 << 64) - errno.EBADF


def test_result_plus_an_immediate() -> None:
    """mmap a page, then getcwd into it at +100: an address computed from a result."""
    def body():
        page = Ref("result", 0)
        entries = [(sc.MMAP, (0, 4096, 3, MAP_PRIVATE_ANON, -1, 0), False),
                   (GETCWD, (page + 100, 200), False)]
        index, results, _ = _run_natively(entries)
        return index, ctypes.string_at(results[0] + 100).decode(), os.getcwd()
    index, written, cwd = _in_child(body)
    assert index == 2 and written == cwd


def test_the_first_failing_entry_stops_the_table() -> None:
    entries = [(sc.GETPID, (), False), (sc.CLOSE, (-1,), True), (sc.CLOSE, (-1,), False),
               (sc.GETPID, (), False)]
    index, results, _ = _in_child(lambda: _run_natively(entries))
    assert index == 2  # the entry's index, as the Python side names the step
    assert results[1:] == [(1 << 64) - errno.EBADF] * 2


def test_store_puts_a_result_into_data() -> None:
    """STORE: an earlier result (getpid) copied into the data, then read by a later call."""
    def body():
        out = Ref("data", 8)
        entries = [(sc.GETPID, (), False), (restorer.STORE, (Ref("result", 0), out), False)]
        index, results, data = _run_natively(entries, bytes(24))
        return index, results, data, os.getpid()
    index, results, data, pid = _in_child(body)
    assert index == 2 and results == [pid, 0]
    assert struct.unpack_from("<Q", data, 8)[0] == pid


def test_xrstor_loads_the_vector_registers() -> None:
    """XRSTOR from an area holding SSE state (mxcsr in the legacy area), then an xsave-free
    check: the table's getpid still runs after it and the area is left as it was."""
    def body():
        area = bytearray(4096)
        struct.pack_into("<I", area, 24, 0x1F80)  # mxcsr: the default
        struct.pack_into("<Q", area, 512, 0x2)  # XSTATE_BV: SSE
        entries = [(restorer.XRSTOR, (Ref("data", 0), 0x2, 0), False),
                   (sc.GETPID, (), False)]
        index, results, _ = _run_natively(entries, bytes(area))
        return index, results, os.getpid()
    index, results, pid = _in_child(body)
    assert index == 2 and results == [0, pid]


def test_data_is_written_back_in_place() -> None:
    """A call's output into the batch's data: rt_sigprocmask reads the mask into it."""
    def body():
        out = Ref("data", 16)
        entries = [(sc.RT_SIGPROCMASK, (sc.SIG_SETMASK, 0, out, 8), False)]
        _, _, data = _run_natively(entries, bytes(24))
        return data
    data = _in_child(body)
    assert data[:16] == bytes(16) and len(data) == 24


# ---- end to end: the restorer inside GDB and LLDB ----

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
ROOT = Path(__file__).resolve().parent.parent


def _manyvmas(tmp_path: Path) -> Path:
    binary = tmp_path / "manyvmas"
    subprocess.run(["gcc", "-O0", "-g", "-pthread", "-I", str(ROOT / "tests" / "programs"),
                    "-o", str(binary), str(ROOT / "tests" / "programs" / "manyvmas.c")],
                   check=True)
    return binary


def _gdb_script(tmp_path: Path, body: str, binary: Path) -> str:
    script = tmp_path / "script.py"
    script.write_text("import gdb\n"
                      f"gdb.execute('source {ROOT}/gdb_img/init.py')\n" + body)
    done = subprocess.run(["gdb", "-q", "-batch", "-nx", "-x", str(script), str(binary)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


BATCHES = """
gdb.execute("break checkpoint")
gdb.execute("run 10 > {out}")
gdb.execute("set scheduler-locking on")
from binfmt_img.errors import RestoreError
from binfmt_img.live.inject import Injector, free_area, RESERVED
from binfmt_img.live.procfs import read_maps
from binfmt_img.live.target import counting
from gdb_img.target import GdbTarget
target = counting(GdbTarget())
inj = Injector(target)
pid = gdb.selected_inferior().pid
inj.open_scratch(free_area([(m.start, m.end) for m in read_maps(pid)], RESERVED))
before = target.stops
with inj.batch() as b:
    fd = b.call(2, b.put_string("/dev/null"), 0, 0, step="opening /dev/null")
    copy = b.call(32, fd, step="dup")
    b.raw(3, fd)
    b.raw(3, copy)
    closed = b.raw(3, fd)
print("CHAIN", b.value(fd), b.value(copy), b.value(closed) - (1 << 64), target.stops - before)
try:
    with inj.batch() as b:
        b.call(39, step="getpid")
        b.call(3, 9999, step="closing nothing", address=0x1234)
        b.call(39, step="never run")
except RestoreError as error:
    print("ERROR", error)
before = target.stops
with inj.batch() as b:  # far more than the data pages hold: the table area
    pids = [b.call(39, step="getpid") for _ in range(5000)]
print("BIG", len({{b.value(p) for p in pids}}), b.value(pids[-1]) == pid, target.stops - before)
inj.close_scratch()
gdb.execute("kill")
"""


@needs_gdb
def test_batches_in_gdb(tmp_path: Path) -> None:
    """Results feed later calls; a failure names the step, address and errno; a batch too
    large for the scratch page runs from the table area; each batch is one stop."""
    out = _gdb_script(tmp_path, BATCHES.format(out=tmp_path / "out"), _manyvmas(tmp_path))
    chain = next(line for line in out.splitlines() if line.startswith("CHAIN")).split()
    assert int(chain[2]) == int(chain[1]) + 1 and chain[3] == "-9" and chain[4] == "1", out
    assert "ERROR closing nothing at 0x1234: close failed: EBADF (Bad file descriptor)" in out
    # mapping the table area is one more stop
    assert "BIG 1 True 2" in out, out


SCALE = """
gdb.execute("break checkpoint")
gdb.execute("run {n} {threads} > {out1}")
gdb.execute("img-dump {image}")
gdb.execute("kill")
gdb.execute("delete")
{fallback}
gdb.execute("set args > {out2}")
import gdb_img.commands as c
gdb.execute("img-restore {image}")
print("STOPS", c.last_dump.stops, c.last_restore.stops)
gdb.execute("continue")
"""
WITHOUT_RUN_TO_TRAP = "import gdb_img.target as t; del t.GdbTarget.run_to_trap"


def _stops(tmp_path: Path, n: int, fallback: bool = False,
           threads: int = 1) -> tuple[int, int]:
    binary = _manyvmas(tmp_path)
    out2 = tmp_path / f"{n}-{threads}.2"
    out = _gdb_script(tmp_path, SCALE.format(
        n=n, threads=threads, out1=tmp_path / f"{n}.1", out2=out2,
        image=tmp_path / f"{n}.img", fallback=WITHOUT_RUN_TO_TRAP if fallback else ""), binary)
    assert out2.read_text() == f"manyvmas {n} {threads}: ok\n", out
    line = next(line for line in out.splitlines() if line.startswith("STOPS"))
    return int(line.split()[1]), int(line.split()[2])


@needs_gdb
def test_restore_stops_do_not_grow_with_the_threads_gdb(tmp_path: Path) -> None:
    """The threads are cloned by one table and given their state by one run of all their
    tables (binfmt_img/live/threads.py): 2 or 16 threads, the same number of stops."""
    (_, two), (_, sixteen) = (_stops(tmp_path, 10, threads=2),
                              _stops(tmp_path, 10, threads=16))
    assert two == sixteen, (two, sixteen)


@needs_gdb
def test_stops_do_not_grow_with_the_vmas_gdb(tmp_path: Path) -> None:
    """Both past the size where the table area is mapped (two stops more: map, unmap)."""
    small, large = _stops(tmp_path, 1000), _stops(tmp_path, 3000)
    assert small == large, (small, large)
    assert large[1] < 100


@needs_gdb
def test_single_steps_without_run_to_trap(tmp_path: Path) -> None:
    """A Target without run_to_trap: each batched call its own single-step, as before."""
    dump_stops, restore_stops = _stops(tmp_path, 200, fallback=True)
    assert restore_stops > 200


_NO_LLDB = None
try:
    from lldb_helpers import lldb_batch, lldb_missing

    _NO_LLDB = lldb_missing()
except ImportError:  # pragma: no cover
    _NO_LLDB = "no lldb helpers"
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")
STOPS = "script import binfmt_img.live.target as t; print('STOPS', t.TOTAL['stops'])"


def _lldb_stops(tmp_path: Path, n: int, threads: int = 1) -> int:
    binary = _manyvmas(tmp_path)
    image, out = tmp_path / f"l{n}-{threads}.img", tmp_path / f"l{n}-{threads}.out"
    dumped = lldb_batch("breakpoint set -n checkpoint", f"process launch -- {n} {threads}",
                        f"img-dump {image}", "process kill", program=binary, timeout=300)
    assert image.exists(), dumped.stdout + dumped.stderr
    restored = lldb_batch(f"target create {binary}", f"settings set target.output-path {out}",
                          f"img-restore {image}", STOPS, "continue", timeout=300)
    text = restored.stdout + restored.stderr
    assert out.read_text() == f"manyvmas {n} {threads}: ok\n", text
    line = next(line for line in restored.stdout.splitlines() if line.startswith("STOPS"))
    return int(line.split()[1])


@needs_lldb
def test_stops_do_not_grow_with_the_vmas_lldb(tmp_path: Path) -> None:
    small, large = _lldb_stops(tmp_path, 1000), _lldb_stops(tmp_path, 3000)
    assert small == large and large < 100, (small, large)


@needs_lldb
def test_restore_stops_do_not_grow_with_the_threads_lldb(tmp_path: Path) -> None:
    """As in GDB; LLDB stops every thread when the first reaches its trap, so a thread
    still in its table is resumed once more: a few resumes of slack on a busy machine (4 seen
    under load), not one per thread (14 more threads cost 182 stops before the restorer
    cloned them)."""
    two, sixteen = _lldb_stops(tmp_path, 10, threads=2), _lldb_stops(tmp_path, 10, threads=16)
    assert sixteen <= two + 6, (two, sixteen)
