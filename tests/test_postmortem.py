"""Post-mortem resume in real GDB: gcore and kernel cores become images (core2img, or
img-restore of the core itself), images become cores that stock GDB opens (img2core)."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cprogs import ROOT, compile_program, run_uninterrupted
from gdbmi import Gdb
from test_gdb_restore import restore_and_finish

from binfmt_img.formats import elfcore, image_file

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                          capture_output=True, text=True, timeout=60)


def frames(bt: str) -> list[str]:
    return re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\w+)", bt, re.MULTILINE)


def stock_gdb_bt(binary: Path, core: Path) -> tuple[str, list[str]]:
    """What `gdb -batch EXE CORE -ex bt` prints on opening the core, and bt's functions."""
    shown = subprocess.run(["gdb", "-batch", "-nx", str(binary), str(core),
                            "-ex", "echo BACKTRACE\\n", "-ex", "bt"],
                           capture_output=True, text=True, timeout=60)
    opening, _, bt = shown.stdout.partition("BACKTRACE\n")
    return opening + shown.stderr, frames(bt)


@pytest.mark.parametrize("name", ["fpu", "heap"])
def test_gcore_at_breakpoint_resumes_from_image(tmp_path: Path, name: str) -> None:
    binary = compile_program(name, tmp_path)
    expected = run_uninterrupted(binary)
    core, image, part1 = tmp_path / "gcore", tmp_path / f"{name}.img", tmp_path / "part1"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped(f"run > {part1}").get("reason") == "breakpoint-hit"
        gdb.console(f"gcore {core}")
        gdb.console("kill")
    finally:
        gdb.close()
    converted = script("core2img", str(core), "-o", str(image))
    assert converted.returncode == 0, converted.stderr
    assert "SIGTRAP" in converted.stdout  # the breakpoint's, recorded but not re-raised
    after = restore_and_finish(image, tmp_path / "part2")
    assert part1.read_text() + after == expected


@contextmanager
def cores_written_to(directory: Path) -> Iterator[str]:
    """Make the kernel write cores of processes run in `directory` there: as it is when
    core_pattern names a plain file, else (as root) by setting it for the moment. Yields
    how the core's name starts."""
    pattern = CORE_PATTERN.read_text().strip()
    if not pattern.startswith("|") and "/" not in pattern:
        yield pattern.split("%")[0]  # relative: the core lands in the working directory
        return
    if os.geteuid() != 0:
        pytest.skip(f"core_pattern is {pattern!r}: cores do not land in the test's directory, "
                    "and only root may change that")
    try:
        CORE_PATTERN.write_text(f"{directory}/core\n")
    except OSError as error:
        pytest.skip(f"core_pattern is {pattern!r} and cannot be changed here: {error}")
    try:
        yield "core"
    finally:
        CORE_PATTERN.write_text(pattern + "\n")


def unlimited_cores() -> None:
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def crash_core(workdir: Path) -> tuple[Path, Path]:
    """A program that writes through a null pointer, and the kernel's core of its crash."""
    binary = compile_program("crash", workdir)
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("RLIMIT_CORE's hard limit is 0: no core can be written")
    with cores_written_to(workdir) as prefix, open(os.devnull, "wb") as sink:
        run = subprocess.run([str(binary)], cwd=workdir, stdout=sink, timeout=60,
                             preexec_fn=unlimited_cores)
    assert run.returncode == -signal.SIGSEGV
    cores = [p for p in workdir.iterdir() if p.name.startswith(prefix) and p != binary]
    if not cores:
        pytest.skip(f"the kernel wrote no core (core_pattern {CORE_PATTERN.read_text()!r})")
    return binary, cores[0]


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return crash_core(tmp_path_factory.mktemp("crash"))


def fault_report(gdb: Gdb, first: int) -> dict:
    """The stop GDB reports for a signal, with the console text after it (MI may send them
    after the command's own result)."""
    def reported(_records: list[dict]) -> bool:
        return any(r["type"] == "console" and "is not passed on" in r["payload"]
                   for r in gdb.records[first:])
    if not reported([]):
        gdb._collect(reported, 20)
    return next(r["payload"] for r in gdb.records[first:]
                if r["type"] == "notify" and r["message"] == "stopped"
                and r["payload"].get("signal-name") not in (None, "0"))


def test_crash_core_restores_at_the_fault_and_runs_on_after_a_fix(
        tmp_path: Path, crash: tuple[Path, Path]) -> None:
    _, core = crash
    out = tmp_path / "out"
    gdb = Gdb()
    try:
        gdb.console(f"set args > {out}")
        first = len(gdb.records)
        gdb.console(f"img-restore {core}")  # the core itself, converted on the way
        stop = fault_report(gdb, first)
        assert stop["signal-name"] == "SIGSEGV" and stop["frame"]["func"] == "main", stop
        assert "= 11" in gdb.console("print $_siginfo.si_signo")
        assert "0x0" in gdb.console("print $_siginfo._sifields._sigfault.si_addr")
        assert frames(gdb.console("bt")) == ["main"]
        pointer = re.search(r",\(%(\w+)\)", gdb.console("x/i $pc"))
        assert pointer is not None
        gdb.console(f"set var ${pointer.group(1)} = (long)&target")
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()
    # The first line sat in the stdio buffer when the process crashed.
    assert out.read_text() == "before the crash\nafter the crash: target=42\n"


def test_crash_core_converts_and_back_to_a_core_gdb_opens(
        tmp_path: Path, crash: tuple[Path, Path]) -> None:
    binary, core = crash
    image, again = tmp_path / "crash.img", tmp_path / "again.core"
    assert script("core2img", str(core), "-o", str(image)).returncode == 0
    loaded = image_file.load(str(image))
    direct = image_file.load_any(str(core))
    assert loaded.signal == direct.signal and elfcore.is_fault(loaded.signal)
    assert loaded.registers == direct.registers and loaded.mm == direct.mm
    assert all(loaded.mm[n] for n in ("start_brk", "brk", "start_stack", "arg_start"))
    assert {v.name for v in loaded.vmas} >= {"[stack]", "[heap]", "[vdso]"}
    assert script("img2core", str(image), "-o", str(again)).returncode == 0
    opening, bt = stock_gdb_bt(binary, again)
    assert "Program terminated with signal SIGSEGV" in opening and bt == ["main"], opening
    assert "warning" not in opening, opening


def test_image_to_core_shows_the_live_backtrace(tmp_path: Path) -> None:
    binary = compile_program("debugme", tmp_path)
    image, core = tmp_path / "debugme.img", tmp_path / "debugme.core"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped("run > /dev/null").get("reason") == "breakpoint-hit"
        live = frames(gdb.console("bt"))
        gdb.console(f"img-dump {image}")
        gdb.console("kill")
    finally:
        gdb.close()
    written = script("img2core", str(image), "-o", str(core))
    assert written.returncode == 0, written.stderr
    opening, bt = stock_gdb_bt(binary, core)
    assert live == ["checkpoint", "inner", "main"]
    assert bt == live, opening
    assert "warning" not in opening, opening  # no section too small, no unreadable memory


def refused(path: Path, out_dir: Path) -> str:
    """core2img's one line on stderr for a file it cannot use; exit status 2, no image."""
    out = out_dir / "never.img"
    result = script("core2img", str(path), "-o", str(out))
    assert result.returncode == 2 and not result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()
    return lines[0]


def test_truncated_and_foreign_files_get_one_line(tmp_path: Path,
                                                  crash: tuple[Path, Path]) -> None:
    _, core = crash
    data = core.read_bytes()
    cut = tmp_path / "cut.core"
    cut.write_bytes(data[:len(data) // 2])
    assert "truncated core" in refused(cut, tmp_path)
    tiny = tmp_path / "tiny.core"
    tiny.write_bytes(data[:40])
    assert "truncated core" in refused(tiny, tmp_path)
    assert "not a core file: ELF type ET_DYN" in refused(Path("/bin/true"), tmp_path)
    arm = tmp_path / "arm.core"
    arm.write_bytes(data[:18] + (183).to_bytes(2, "little") + data[20:])  # EM_AARCH64
    assert "not an x86-64 core" in refused(arm, tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not a core\n")
    assert "not an ELF core" in refused(text, tmp_path)


def test_moved_executable_is_named_and_found_with_exe(tmp_path: Path) -> None:
    binary, core = crash_core(tmp_path)
    moved = binary.rename(tmp_path / "moved")
    result = script("core2img", str(core), "-o", str(tmp_path / "a.img"))
    assert result.returncode == 0
    assert result.stderr.splitlines() == [  # one line for the file, not one per mapping
        f"core2img: warning: {binary}: gone; the core lacks 2 pages that it should provide"]
    result = script("core2img", str(core), "-o", str(tmp_path / "b.img"), "--exe", str(moved))
    assert result.returncode == 0 and not result.stderr
    image = image_file.load(str(tmp_path / "b.img"))
    assert image.exe_path == str(moved)
    assert str(binary) not in {v.path for v in image.vmas}
