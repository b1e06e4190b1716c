"""Images from someone else (issue 11): a hostile or damaged image gets one line, runs no
command, opens no FIFO or device, and leaves a running inferior exactly as it was."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from cprogs import ROOT, compile_program
from gdbmi import Gdb, GdbError
from lldb_helpers import gdb_batch, lldb_batch, lldb_missing
from test_gdb_restore import dump_at_checkpoint

from binfmt_img.formats import image_file
from binfmt_img.formats.model import Image, Xsave

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real image of the heap program, and the program."""
    where = tmp_path_factory.mktemp("untrusted")
    binary = compile_program("heap", where)
    image = where / "good.img"
    dump_at_checkpoint(binary, image)
    return binary, image


def mutated(good_image: Path, out: Path, edit: Callable[[Image], None]) -> Path:
    image = image_file.load(str(good_image))
    edit(image)
    image_file.save(str(out), image)
    return out


def refused_in_fresh_gdb(image: Path, marker: Path | None = None) -> str:
    """img-restore with nothing running: one error line, no traceback, no hang."""
    done = gdb_batch(f"img-restore {image}", timeout=60)
    text = done.stdout + done.stderr
    errors = [line for line in text.splitlines() if line.startswith("img-restore: ")
              and "warning" not in line and "starting" not in line]
    assert "Traceback" not in text and "Python Exception" not in text, text
    assert len(errors) == 1, text
    if marker is not None:
        assert not marker.exists(), "a command from the image ran"
    return errors[0]


def test_executable_path_with_a_newline_runs_no_command(good, tmp_path: Path) -> None:
    binary, good_image = good
    marker = tmp_path / "pwned"
    # A file of that name exists, as one shipped beside the image would.
    evil_name = f"{binary}\nshell touch {marker}"
    bad = mutated(good_image, tmp_path / "bad.img",
                  lambda image: setattr(image, "exe_path", evil_name))
    line = refused_in_fresh_gdb(bad, marker)
    assert "control characters" in line and "\\n" in line


def test_escape_sequences_in_a_mapped_path_are_refused(good, tmp_path: Path) -> None:
    _, good_image = good

    def edit(image: Image) -> None:
        vma = next(v for v in image.vmas if v.path)
        vma.path = "/lib/x\x1b[2K\rimg-restore: done"
    line = refused_in_fresh_gdb(mutated(good_image, tmp_path / "bad.img", edit))
    assert "\x1b" not in line and "control characters" in line


def test_executable_that_is_a_fifo_or_a_directory(good, tmp_path: Path) -> None:
    _, good_image = good
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, word in ((fifo, "FIFO"), (tmp_path, "directory")):
        bad = mutated(good_image, tmp_path / "bad.img",
                      lambda image, t=target: setattr(image, "exe_path", str(t)))
        assert word in refused_in_fresh_gdb(bad)


def test_executable_that_is_a_script(good, tmp_path: Path) -> None:
    _, good_image = good
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    bad = mutated(good_image, tmp_path / "bad.img",
                  lambda image: setattr(image, "exe_path", str(script)))
    assert "not an ELF executable" in refused_in_fresh_gdb(bad)


def _set_register(name: str, value: int) -> Callable[[Image], None]:
    def edit(image: Image) -> None:
        image.threads[0].registers[name] = value
    return edit


def _garbage_xsave(image: Image) -> None:
    thread = image.threads[0]
    assert thread.xsave is not None
    data = bytearray(thread.xsave.data)
    data[520:528] = b"\xff" * 8  # XCOMP_BV: the compacted format, which xrstor64 rejects
    thread.xsave = replace(thread.xsave, data=bytes(data))


@pytest.mark.parametrize(("edit", "word"), [
    (_set_register("rip", 0x0000900000000000), "canonical"),
    (_set_register("fs_base", 0xFFFF000000000000), "canonical"),
    (_set_register("eflags", (1 << 64) - 1), "eflags"),
    (_garbage_xsave, "XSAVE"),
    (lambda image: setattr(image.threads[0], "xsave", Xsave(0x2FF, bytes(200_000))), "XSAVE"),
    (lambda image: (setattr(image, "vmas", []), setattr(image, "runs", [])), "no VMA"),
    (lambda image: setattr(image, "auxv", [(6, 4096)] * 100_000), "auxiliary vector"),
    (lambda image: image.mm.update(start_brk=image.mm["brk"] + 4096), "order"),
    (lambda image: setattr(image, "threads", image.threads * 5000), "threads"),
])
def test_refused_before_any_change_in_a_running_process(good, tmp_path: Path, edit,
                                                          word: str) -> None:
    """Into a process stopped at a breakpoint: refused in one line, registers and memory as
    they were."""
    binary, good_image = good
    bad = mutated(good_image, tmp_path / "bad.img", edit)
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        gdb.until_stopped("run > /dev/null")
        probe = ("python import gdb, zlib; i = gdb.selected_inferior(); "
                 "print(gdb.execute('info registers rip rsp rbp fs_base', to_string=True), "
                 "zlib.crc32(i.read_memory(int(gdb.parse_and_eval('$sp')) & ~4095, 4096)))")
        before = gdb.console(probe)
        with pytest.raises(GdbError) as refused:
            gdb.console(f"img-restore {bad}")
        message = str(refused.value)
        assert word in message and "Traceback" not in message, message
        assert gdb.console(probe) == before
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()


def test_a_mapped_file_that_became_a_fifo_is_not_opened(good, tmp_path: Path) -> None:
    binary, good_image = good
    copy = tmp_path / "prog"
    shutil.copy(binary, copy)
    fifo = tmp_path / "lib.fifo"
    os.mkfifo(fifo)

    def edit(image: Image) -> None:
        vma = next(v for v in image.vmas if v.path and "libc" in v.path)
        vma.path, vma.file = str(fifo), None
    line = refused_in_fresh_gdb(mutated(good_image, tmp_path / "bad.img", edit))
    assert "FIFO" in line


CHANGE_MID_RESTORE = '''
import os, gdb
from binfmt_img.formats import image_file
from binfmt_img.errors import RestoreError
from binfmt_img.live.restore import RestorePlan
from gdb_img.target import GdbTarget
image = image_file.load({image!r})
plan = RestorePlan(GdbTarget(image.exe_path), image)
plan.check()
run = max(image.runs, key=lambda r: r.count)
with open({image!r}, "r+b") as f:
    if {truncate!r}:
        f.truncate(run.offset)
    else:
        f.seek(run.offset + 100)
        f.write(b"changed")
try:
    plan.run()
    print("RESULT restored")
except RestoreError as error:
    print("RESULT", error)
'''


@pytest.mark.parametrize("truncate", [False, True])
def test_image_changed_or_truncated_during_the_restore(good, tmp_path: Path,
                                                       truncate: bool) -> None:
    """The pages are read from the one descriptor that was checked, with pread, and their
    checksums computed again as they are written: a change is caught, a truncation is an
    error and not a SIGBUS that kills GDB."""
    binary, good_image = good
    image = tmp_path / "changing.img"
    shutil.copy(good_image, image)
    script = tmp_path / "script.py"
    script.write_text(CHANGE_MID_RESTORE.format(image=str(image), truncate=truncate))
    done = gdb_batch("break checkpoint", "run > /dev/null", f"source {script}",
                     program=binary)
    result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT")),
                  done.stdout + done.stderr)
    expected = "ends before its page data" if truncate else "changed during the restore"
    assert expected in result, result


INTERRUPTED_DUMP = '''
import gdb
from binfmt_img.live import dump as dumping
real_pages = dumping.DumpPlan.pages
def interrupted(self, progress=None):
    for n, chunk in enumerate(real_pages(self, progress)):
        if n == 1:
            raise KeyboardInterrupt
        yield chunk
dumping.DumpPlan.pages = interrupted
try:
    gdb.execute("img-dump {image}")
except gdb.error as error:
    print("RESULT", error)
dumping.DumpPlan.pages = real_pages
'''


def test_an_interrupted_dump_keeps_the_old_image_and_the_stop(good, tmp_path: Path) -> None:
    """Interrupted half way (Ctrl-C, a full disk): the image already at that path is intact,
    no partial file is left, and the next img-dump and `continue` work."""
    binary, good_image = good
    where = tmp_path / "images"
    where.mkdir()
    image = where / "app.img"
    shutil.copy(good_image, image)
    before = image.read_bytes()
    script = tmp_path / "script.py"
    script.write_text(INTERRUPTED_DUMP.format(image=str(image)))
    out = tmp_path / "out"
    done = gdb_batch("break checkpoint", f"run > {out}", f"source {script}",
                     f"img-dump {where / 'second.img'}", "continue", program=binary)
    text = done.stdout + done.stderr
    assert "RESULT img-dump: interrupted" in text, text
    assert image.read_bytes() == before
    assert sorted(p.name for p in where.iterdir()) == ["app.img", "second.img"], text
    assert "exited normally" in text, text


@pytest.mark.skipif(lldb_missing() is not None, reason=lldb_missing() or "")
@pytest.mark.parametrize(("edit", "word"), [
    (_set_register("rip", 0x0000900000000000), "canonical"),
    (_garbage_xsave, "XSAVE"),
    (lambda image: setattr(image, "exe_path", "/bin/x\nshell touch /tmp/nope"), "control"),
])
def test_refused_in_lldb_with_the_process_unchanged(good, tmp_path: Path, edit,
                                                    word: str) -> None:
    binary, good_image = good
    bad = mutated(good_image, tmp_path / "bad.img", edit)
    script = tmp_path / "commands.lldb"  # sourced so that the error does not end the batch
    script.write_text(f"register read rip rsp rbp\nimg-restore {bad}\n"
                      "register read rip rsp rbp\ncontinue\n")
    done = lldb_batch("breakpoint set -n checkpoint", "run",
                      f"command source -e false -c false {script}", program=binary)
    text = done.stdout + done.stderr
    errors = [line for line in text.splitlines() if "img-restore:" in line and word in line]
    assert len(errors) == 1 and "Traceback" not in text, text
    reads = re.findall(r"rip = .*\n.*rsp = .*\n.*rbp = .*", text)
    assert len(reads) == 2 and reads[0] == reads[1], text
    assert "exited with status = 0" in text, text


INTERRUPTED_RESTORE = '''
import gdb
from binfmt_img.live import pagewrite
real_done = pagewrite.PageWriter._done
def interrupted(self, piece):
    real_done(self, piece)
    raise KeyboardInterrupt
pagewrite.PageWriter._done = interrupted
try:
    gdb.execute("img-restore {image}")
except gdb.error as error:
    print("RESULT", error)
pagewrite.PageWriter._done = real_done
print("PID", gdb.selected_inferior().pid)
'''


def test_an_interrupted_restore_says_so_and_kills_the_process_it_started(
        good, tmp_path: Path) -> None:
    """Ctrl-C half way through the pages: one line saying the process was half-restored,
    and the process img-restore started for it is gone."""
    _, good_image = good
    script = tmp_path / "script.py"
    script.write_text(INTERRUPTED_RESTORE.format(image=str(good_image)))
    done = gdb_batch(f"source {script}")
    text = done.stdout + done.stderr
    assert "RESULT img-restore: interrupted; the process started for the restore was " \
           "half-restored and is killed" in text, text
    assert "PID 0" in text, text


def test_a_core_naming_a_fifo_does_not_block_img_info(good, tmp_path: Path) -> None:
    """A core's NT_FILE note names the mapped files; one that is a FIFO is not opened."""
    binary, _ = good
    core = tmp_path / "core"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        gdb.until_stopped("run > /dev/null")
        gdb.console(f"gcore {core}")
        gdb.console("kill")
    finally:
        gdb.close()
    fifo = binary.parent / "hfif"
    if not fifo.exists():
        os.mkfifo(fifo)
    core.write_bytes(core.read_bytes().replace(f"{binary}\0".encode(), f"{fifo}\0".encode()))
    done = subprocess.run([str(ROOT / "scripts" / "img-info"), str(core)], capture_output=True,
                          text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    assert str(fifo) in done.stdout + done.stderr


def test_an_executable_under_a_path_with_a_space(tmp_path: Path) -> None:
    where = tmp_path / "my programs"
    where.mkdir()
    binary = compile_program("heap", where)
    image = tmp_path / "heap.img"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        gdb.until_stopped(f"run > {tmp_path / 'part1'}")
        gdb.console(f"img-dump {image}")
        gdb.console("kill")
    finally:
        gdb.close()
    gdb = Gdb()
    try:
        gdb.console(f"set args > {tmp_path / 'out'}")
        gdb.console(f"img-restore {image}")
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()
