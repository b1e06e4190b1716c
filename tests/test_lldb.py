"""The LLDB front end against the real lldb-19: dump at checkpoint(), restore in a fresh LLDB,
and the resumed program's output must complete the uninterrupted run's output exactly."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from cprogs import PROGRAMS, compile_program, run_uninterrupted
from lldb_helpers import GDB, gdb_batch, lldb_batch, lldb_missing, read

from binfmt_img.formats import image_file
from binfmt_img.formats.model import PAGE_SIZE, PROT_EXEC

_MISSING = lldb_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed")

# Signals the programs raise on purpose: LLDB would stop at each one.
QUIET_SIGNALS = "process handle SIGUSR1 SIGUSR2 SIGALRM -s false -n false -p true"


def _build(tmp_path: Path, name: str) -> tuple[Path, str]:
    """The same C programs as the GDB tests (tests/programs)."""
    binary = compile_program(name, tmp_path)
    return binary, run_uninterrupted(binary)


def _dump_in_lldb(binary: Path, image: Path, *setup: str) -> str:
    """Run to checkpoint() under LLDB, dump, kill; returns what the program printed."""
    out = binary.parent / "dump.out"
    result = lldb_batch(f"settings set target.output-path {out}", QUIET_SIGNALS, *setup,
                        "breakpoint set -n checkpoint", "run", f"img-dump {image}", "kill",
                        program=binary)
    assert image.exists(), result.stdout + result.stderr
    return read(out)


def _restore_in_lldb(image: Path, out: Path, *after: str, setup: tuple[str, ...] = (),
                     options: str = ""):
    result = lldb_batch(f"settings set target.output-path {out}", *setup,
                        f"img-restore {image} {options}".strip(), QUIET_SIGNALS, *after)
    assert "img-restore:" in result.stdout and "error:" not in result.stderr, (
        result.stdout + result.stderr)
    return result


def _info_json(image: Path) -> str:
    result = lldb_batch(f"img-info {image} --json")
    return next(line for line in result.stdout.splitlines() if line.startswith("{"))


@pytest.mark.parametrize("name", ["heap", "tls", "vdso", "signals"])
def test_restored_output_completes_the_run(tmp_path: Path, name: str) -> None:
    binary, expected = _build(tmp_path, name)
    image = tmp_path / f"{name}.img"
    printed = _dump_in_lldb(binary, image)
    out = tmp_path / "restored.out"
    result = _restore_in_lldb(image, out, "continue")
    assert "exited with status = 0" in result.stdout, result.stdout + result.stderr
    assert printed + read(out) == expected


def test_lldb_view_after_restore(tmp_path: Path) -> None:
    """bt names checkpoint and main; image list has the image's files at their addresses;
    a breakpoint set after the restore is hit; step-over, finish and continue work."""
    binary, expected = _build(tmp_path, "loop")
    image = tmp_path / "loop.img"
    printed = _dump_in_lldb(binary, image)
    line = next(n for n, text in enumerate((PROGRAMS / "loop.c").read_text().splitlines(), 1)
                if "loop body" in text)
    out = tmp_path / "restored.out"
    result = _restore_in_lldb(
        image, out, "bt", "image list", "finish", f"breakpoint set -f loop.c -l {line}",
        "continue", "frame variable i total", "thread step-over", "continue",
        "frame variable i", "breakpoint disable", "continue")
    text = result.stdout
    bt = text[text.index("(lldb) bt"):text.index("(lldb) image list")]
    assert "loop`checkpoint" in bt and "loop`main" in bt, bt
    modules = text[text.index("(lldb) image list"):text.index("(lldb) finish")]
    assert f"0x0000555555554000 {binary}" in modules, modules
    assert "libc.so.6" in modules and "ld-linux-x86-64.so.2" in modules, modules
    assert "stop reason = step out" in text, text
    assert "stop reason = breakpoint 1.1" in text, text
    assert "(int) i = 3" in text and "(int) total = 6" in text, text
    assert "stop reason = step over" in text, text
    assert "(int) i = 4" in text, text
    assert "exited with status = 0" in text, text
    assert printed + read(out) == expected


def test_dlopen_after_restore_is_seen(tmp_path: Path) -> None:
    """LLDB names the modules as its loader does: a dlopen after the restore adds the new
    library (its pending breakpoint resolves and is hit) and nothing twice."""
    binary, expected = _build(tmp_path, "dlopen")
    image = tmp_path / "dlopen.img"
    printed = _dump_in_lldb(binary, image)
    out = tmp_path / "restored.out"
    result = _restore_in_lldb(image, out, "breakpoint set -n cbrt", "continue", "image list",
                              "continue")
    text = result.stdout
    assert "stop reason = breakpoint 1.1" in text and "libm.so.6`" in text, text
    modules = text[text.index("(lldb) image list"):]
    paths = [line.split()[-1] for line in modules.splitlines() if line.startswith("[")]
    names = [os.path.basename(path) for path in paths]
    assert "libm.so.6" in names and len(names) == len(set(names)), modules
    assert printed + read(out) == expected


def test_v0_image(tmp_path: Path) -> None:
    """The seed's format names no files: the modules come from the restored link map."""
    binary, expected = _build(tmp_path, "loop")
    image = tmp_path / "loop.img"
    out = tmp_path / "dump.out"
    lldb_batch(f"settings set target.output-path {out}", "breakpoint set -n checkpoint", "run",
               f"img-dump {image} --format v0", "kill", program=binary)
    printed = read(out)
    out = tmp_path / "restored.out"
    result = lldb_batch(f"settings set target.output-path {out}", f"img-restore {image}", "bt",
                        "image list", "continue", program=binary)
    assert "loop`main" in result.stdout and "libc.so.6" in result.stdout, result.stdout
    assert printed + read(out) == expected


def test_restore_into_a_live_process_via_debugger(tmp_path: Path) -> None:
    """Into a process LLDB already runs, stopped at a user breakpoint, with glibc's rseq
    area registered (it must be unregistered before the old memory goes)."""
    binary, expected = _build(tmp_path, "tls")
    image = tmp_path / "tls.img"
    printed = _dump_in_lldb(binary, image)
    out = tmp_path / "restored.out"
    result = lldb_batch(f"settings set target.output-path {out}", "breakpoint set -n main",
                        "run", f"img-restore {image} --via debugger", "continue", program=binary)
    assert "via debugger" in result.stdout, result.stdout + result.stderr
    assert "exited with status = 0" in result.stdout, result.stdout + result.stderr
    assert printed + read(out) == expected


def test_registers_lldb_does_not_show_are_set_by_arch_prctl(tmp_path: Path) -> None:
    """An LLDB without fs_base/gs_base: dump reads and restore sets them by arch_prctl."""
    binary, expected = _build(tmp_path, "tls")
    image = tmp_path / "tls.img"
    hide = "script lldb_img.target.LldbTarget.hidden = ('fs_base', 'gs_base')"
    printed = _dump_in_lldb(binary, image, hide)
    info = json.loads(_info_json(image))
    assert info["registers"]["fs_base"] != 0
    out = tmp_path / "restored.out"
    _restore_in_lldb(image, out, "continue", setup=(hide,))
    assert printed + read(out) == expected


def test_interrupted_system_call_restarts(tmp_path: Path) -> None:
    """LLDB cannot write orig_rax: the restart the kernel would make is done by hand, both
    for the process left running after img-dump and for the restored one."""
    binary, expected = _build(tmp_path, "syscall")
    assert expected == "before\nselect=0 errno=0\nafter\n"
    image = tmp_path / "syscall.img"
    dumped = tmp_path / "dump.out"
    result = lldb_batch(f"settings set target.output-path {dumped}",
                        "process handle SIGUSR1 -s true -n true -p false",
                        "process launch -- interrupt", program=binary,
                        on_signal=(f"img-dump {image}", "continue"))
    assert "stop reason = signal SIGUSR1" in result.stdout, result.stdout + result.stderr
    assert read(dumped) == expected  # the live process went on as if never stopped
    out = tmp_path / "restored.out"
    # The child that sent the signal is a zombie at the dump: not in the image, accepted.
    restored = _restore_in_lldb(image, out, "continue", options="--accept-loss")
    assert re.search(r"warning: not restored: child process \d+ \(syscall, a zombie\)",
                     restored.stderr), restored.stdout + restored.stderr
    assert read(out) == "select=0 errno=0\nafter\n"
    info = json.loads(_info_json(image))
    assert info["registers"]["orig_rax"] == 270  # pselect6, read from /proc/PID/syscall


@needs_gdb
def test_image_dumped_in_gdb_restores_in_lldb(tmp_path: Path) -> None:
    binary, expected = _build(tmp_path, "heap")
    image, dumped = tmp_path / "heap.img", tmp_path / "dump.out"
    result = gdb_batch("break checkpoint", f"run > {dumped}", f"img-dump {image}", "kill",
                       program=binary)
    assert image.exists(), result.stdout + result.stderr
    out = tmp_path / "restored.out"
    result = _restore_in_lldb(image, out, "bt", "continue")
    assert "heap`checkpoint" in result.stdout and "heap`main" in result.stdout, result.stdout
    assert read(dumped) + read(out) == expected


@needs_gdb
def test_image_dumped_in_lldb_restores_in_gdb(tmp_path: Path) -> None:
    binary, expected = _build(tmp_path, "signals")
    image = tmp_path / "signals.img"
    printed = _dump_in_lldb(binary, image)
    out = tmp_path / "restored.out"
    # Start the process with its stdout on a file first; img-restore then restores into it.
    result = gdb_batch("handle SIGUSR1 SIGUSR2 nostop noprint pass", f"file {binary}",
                       f"starti > {out}", f"img-restore {image}", "bt", "continue")
    assert "exited normally" in result.stdout, result.stdout + result.stderr
    assert "img-restore:" in result.stdout, result.stdout + result.stderr
    assert "checkpoint" in result.stdout and "main" in result.stdout, result.stdout
    assert printed + read(out) == expected


def test_dump_holds_no_breakpoint_traps(tmp_path: Path) -> None:
    """LLDB keeps its traps in memory while stopped (the user's at checkpoint, its own in
    ld.so): the code pages an image stores are the files' own bytes."""
    binary, _ = _build(tmp_path, "loop")
    image_path = tmp_path / "loop.img"
    _dump_in_lldb(binary, image_path)
    image = image_file.load(str(image_path))
    checked = 0
    for vma in image.vmas:
        if not (vma.is_file and vma.prot & PROT_EXEC):
            continue
        with open(vma.path, "rb") as f:
            for page in range(vma.start, vma.end, PAGE_SIZE):
                stored = image.page_at(page)
                if stored is not None:
                    f.seek(vma.pgoff * PAGE_SIZE + page - vma.start)
                    assert stored == f.read(PAGE_SIZE).ljust(PAGE_SIZE, b"\0"), hex(page)
                    checked += 1
    assert checked >= 2  # checkpoint's page and ld.so's _dl_debug_state page were written


def test_img_info_and_errors(tmp_path: Path) -> None:
    binary, _ = _build(tmp_path, "loop")
    image = tmp_path / "loop.img"
    _dump_in_lldb(binary, image)
    text = lldb_batch(f"img-info {image} --verify").stdout
    assert "image format v1" in text and "verify: OK" in text, text
    info = json.loads(_info_json(image))
    assert info["format"] == "v1" and info["exe_path"] == str(binary)
    help_text = lldb_batch("help img-restore").stdout
    assert "Values: auto | fast | debugger" in help_text, help_text
    for command, message in (
            (f"img-restore {tmp_path / 'missing.img'}", "No such file or directory"),
            (f"img-info {binary}", "an ELF executable, not a core"),
            ("img-restore", "the following arguments are required: file"),
            (f"img-restore {image} --via teleport", "invalid choice"),
            (f"img-dump {tmp_path / 'x.img'}", "no live process")):
        result = lldb_batch(command)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_crash_core_in_lldb_stops_at_the_fault_and_runs_on_after_a_fix(tmp_path: Path) -> None:
    from test_postmortem import crash_core

    binary, core = crash_core(tmp_path)
    out = tmp_path / "out"
    result = lldb_batch(f"target create {binary}", f"settings set target.output-path {out}",
                        f"img-restore {core}", "expr $rax = (long)&target", "continue")
    assert "SIGSEGV raised again at the faulting instruction" in result.stdout, result.stdout
    assert "exited with status = 0" in result.stdout, result.stdout + result.stderr
    assert read(out) == "before the crash\nafter the crash: target=42\n"
