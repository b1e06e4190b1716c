"""After img-restore, GDB's view matches the checkpoint and debugging carries on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cprogs import compile_program, run_uninterrupted
from gdbmi import Gdb, GdbError
from test_gdb_restore import dump_at_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


@pytest.fixture(scope="module")
def debugme(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """debugme dumped with address randomisation on."""
    tmp = tmp_path_factory.mktemp("debugme")
    binary = compile_program("debugme", tmp)
    expected = run_uninterrupted(binary)
    image = tmp / "debugme.img"
    before = dump_at_checkpoint(binary, image, aslr=True)
    return binary, image, before, expected


def restored_in_other_program(image: Path, out: Path) -> Gdb:
    """A GDB whose live process runs /bin/sleep when the image is restored into it."""
    gdb = Gdb("/bin/sleep")
    gdb.console(f"set args 1000 > {out}")
    gdb.until_stopped("starti")
    text = gdb.console(f"img-restore {image}")
    assert "Cannot insert breakpoint" not in text
    return gdb


def test_backtrace_libraries_and_breakpoints(debugme, tmp_path: Path) -> None:
    binary, image, before, expected = debugme
    out = tmp_path / "out"
    gdb = restored_in_other_program(image, out)
    try:
        bt = gdb.console("bt")
        assert "checkpoint" in bt and "inner" in bt and "main" in bt
        libs = gdb.console("info sharedlibrary")
        assert "libc.so.6" in libs and "No " not in libs.replace("(*): Shared", "")
        assert str(binary) in gdb.console("info inferiors") or "debugme" in gdb.console(
            "info proc exe")
        gdb.console("break helper")
        gdb.console("break strdup")
        stop = gdb.until_stopped("continue")
        assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "helper"
        stop = gdb.until_stopped("next")
        assert stop["frame"]["func"] == "helper"
        stop = gdb.until_stopped("finish")
        assert stop["frame"]["func"] == "main"
        stop = gdb.until_stopped("continue")
        assert stop["reason"] == "breakpoint-hit" and "strdup" in stop["frame"]["func"]
        stop = gdb.until_stopped("stepi")
        assert stop["reason"] == "end-stepping-range"
        gdb.console("delete")
        stop = gdb.until_stopped("continue")
        assert stop["reason"] == "exited-normally"
        assert "Cannot insert breakpoint" not in "".join(
            str(r.get("payload")) for r in gdb.records)
    finally:
        gdb.close()
    assert before + out.read_text() == expected


def test_stepping_right_after_restore(debugme, tmp_path: Path) -> None:
    _, image, _, _ = debugme
    gdb = restored_in_other_program(image, tmp_path / "out")
    try:
        assert gdb.until_stopped("finish")["frame"]["func"] == "inner"
        assert gdb.until_stopped("finish")["frame"]["func"] == "main"
        assert gdb.until_stopped("next")["frame"]["func"] == "main"
        assert gdb.until_stopped("continue")["reason"] == "exited-normally"
    finally:
        gdb.close()


def test_help_and_errors_are_one_line(tmp_path: Path) -> None:
    gdb = Gdb()
    try:
        assert "img-restore FILE" in gdb.console("help img-restore")
        assert "img-dump FILE" in gdb.console("help img-dump")
        assert "img-info FILE" in gdb.console("help img-info")
        bad = tmp_path / "bad.img"
        bad.write_bytes(b"\x43\x8d\x5b\xa7\x00\x01\x00\x00" + b"\0" * 20)
        for command, wanted in ((f"img-restore {tmp_path}/missing.img", "No such file"),
                                (f"img-restore {bad}", "truncated"),
                                (f"img-info {bad}", "truncated"),
                                ("img-restore", "the following arguments are required")):
            with pytest.raises(GdbError) as caught:
                gdb.console(command)
            message = str(caught.value)
            assert wanted in message and "Traceback" not in message and "\n" not in message
        assert "Traceback" not in "".join(str(r.get("payload")) for r in gdb.records)
    finally:
        gdb.close()


def test_changed_mapped_file_is_refused_before_any_change(tmp_path: Path) -> None:
    binary = compile_program("filemap", tmp_path)
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 3 * 4096)
    image = tmp_path / "filemap.img"
    dump_at_checkpoint(binary, image, str(data))
    data.write_bytes(b"y" * 4 * 4096)
    gdb = Gdb(str(binary))
    try:
        gdb.until_stopped("starti")
        before = gdb.console("info proc mappings")
        with pytest.raises(GdbError, match="changed since the dump"):
            gdb.console(f"img-restore {image}")
        assert gdb.console("info proc mappings") == before
    finally:
        gdb.close()


def test_restore_into_a_running_process_at_a_breakpoint_twice(tmp_path: Path) -> None:
    """The live process has run: libc, libthread_db, an rseq area, a breakpoint at its pc."""
    binary = compile_program("heap", tmp_path)
    expected = run_uninterrupted(binary)
    image = tmp_path / "heap.img"
    before = dump_at_checkpoint(binary, image)
    out = tmp_path / "out"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run > {out}")["reason"] == "breakpoint-hit"
        gdb.console(f"img-restore {image}")
        gdb.console(f"img-restore {image}")
        assert "Thread 0x" in gdb.console("info threads")  # libthread_db is back
        stop = gdb.until_stopped("continue")
        assert stop["reason"] == "exited-normally", stop
    finally:
        gdb.close()
    assert out.read_text() == before + expected[len(before):]


def test_dump_leaves_the_process_to_carry_on(tmp_path: Path) -> None:
    """After img-dump at a breakpoint, `continue` goes on from there, not into it again."""
    binary = compile_program("tls", tmp_path)
    expected = run_uninterrupted(binary)
    out = tmp_path / "out"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run > {out}")["reason"] == "breakpoint-hit"
        gdb.console(f"img-dump {tmp_path / 'tls.img'}")
        assert gdb.until_stopped("continue")["reason"] == "exited-normally"
    finally:
        gdb.close()
    assert out.read_text() == expected


def test_damaged_page_data_is_refused_and_nothing_is_left_running(tmp_path: Path) -> None:
    binary = compile_program("tls", tmp_path)
    image = tmp_path / "tls.img"
    dump_at_checkpoint(binary, image)
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the page data, which only the run checksums cover
    damaged = tmp_path / "damaged.img"
    damaged.write_bytes(bytes(data))
    gdb = Gdb()
    try:
        with pytest.raises(GdbError, match="page data damaged"):
            gdb.console(f"img-restore {damaged}")
        assert "process" not in gdb.console("info inferiors")  # the process it started: gone
    finally:
        gdb.close()


def test_dump_at_a_syscall_entry_is_refused_and_harmless(tmp_path: Path) -> None:
    binary = compile_program("stdio_buffer", tmp_path)
    expected = run_uninterrupted(binary)
    out = tmp_path / "out"
    gdb = Gdb(str(binary))
    try:
        gdb.console("catch syscall write")
        assert gdb.until_stopped(f"run > {out}")["reason"] == "syscall-entry"
        with pytest.raises(GdbError, match="entry of system call"):
            gdb.console(f"img-dump {tmp_path / 'x.img'}")
        gdb.console("delete")
        assert gdb.until_stopped("continue")["reason"] == "exited-normally"
    finally:
        gdb.close()
    assert out.read_text() == expected


def test_restored_process_has_the_image_programs_name(debugme, tmp_path: Path) -> None:
    binary, image, _, _ = debugme
    gdb = restored_in_other_program(image, tmp_path / "out")
    try:
        pid = int(gdb.console("python print(gdb.selected_inferior().pid)").split()[-1])
        assert Path(f"/proc/{pid}/comm").read_text().strip() == binary.name
        assert Path(f"/proc/{pid}/exe").resolve() == binary.resolve()
    finally:
        gdb.close()
