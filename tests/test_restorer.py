"""The restorer program (binfmt_img/restorer.py): its bytes against its source, and its table
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

from binfmt_img import restorer
from binfmt_img import syscalls as sc
from binfmt_img.restorer import Layout, Ref, build

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
    program = restorer.CODE[:restorer.FAILED - 1] + b"\xc3\xc3"
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


def test_data_is_written_back_in_place() -> None:
    """A call's output into the batch's data: rt_sigprocmask reads the mask into it."""
    def body():
        out = Ref("data", 16)
        entries = [(sc.RT_SIGPROCMASK, (sc.SIG_SETMASK, 0, out, 8), False)]
        _, _, data = _run_natively(entries, bytes(24))
        return data
    data = _in_child(body)
    assert data[:16] == bytes(16) and len(data) == 24
