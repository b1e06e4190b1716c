"""GDB's front end: what a restore leaves GDB holding, quitting afterwards, the MI shape."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cprogs import compile_program
from gdbmi import INIT, Gdb, GdbError
from test_gdb_restore import dump_at_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


@pytest.fixture(scope="module")
def threads_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("threads")
    binary = compile_program("threads_cond", tmp, "-pthread")
    image = tmp / "threads_cond.img"
    dump_at_checkpoint(binary, image)
    return binary, image


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for init to reap it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_quit_after_threaded_restore_20_times(threads_image, tmp_path: Path) -> None:
    """GDB started the process it restores into and keeps it as one it started: `quit`
    kills it, says nothing of a detach, and GDB does not abort (GDB 13's detach assertion
    on exiting threads wrote core files here when the restore re-attached)."""
    _, image = threads_image
    for run in range(20):
        done = subprocess.run(
            ["gdb", "--nx", "--batch", "-ex", "set confirm off", "-ex", f"source {INIT}",
             "-ex", f"img-restore {image}", "-ex", "info threads",
             "-ex", "python print('PID', gdb.selected_inferior().pid)",
             "-ex", "info inferiors", "-ex", "quit"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        text = done.stdout + done.stderr
        assert done.returncode == 0, (run, text)
        assert "internal-error" not in text and "detached" not in text.lower(), (run, text)
        assert text.count("threads_cond\" ") + text.count("threads_cond\"\n") >= 4, (run, text)
        pid = int(re.search(r"^PID (\d+)$", text, re.M).group(1))
        assert _gone(pid), (run, pid)
        assert not list(tmp_path.glob("core*")), (run, text)


def _records_of(gdb: Gdb, start: int) -> list[dict]:
    return gdb.records[start:]


def _console_lines(records: list[dict]) -> list[str]:
    text = "".join(r["payload"] for r in records
                   if r["type"] == "console" and isinstance(r["payload"], str))
    return [line for line in text.splitlines() if line.strip()]


def _mi_restore_into_live(binary: Path, image: Path, out: Path) -> tuple[Gdb, list[dict]]:
    gdb = Gdb(str(binary))
    gdb.console(f"set args > {out}")
    gdb.until_stopped("starti")
    start = len(gdb.records)
    gdb.console(f"img-restore {image}")
    return gdb, gdb.records[start:]


def _notes(records: list[dict], message: str) -> list[dict]:
    return [r for r in records if r["type"] == "notify" and r["message"] == message]


def _no_step_noise(records: list[dict], allowed: tuple[str, ...] = ()) -> list[str]:
    """Only the command's own lines (img-restore: ...) and the checkpoint's stop line, and
    lines matching `allowed`; returns those."""
    lines = _console_lines(records)
    noise = [line for line in lines if not line.startswith("img-restore: ")
             and "checkpoint" not in line and not re.match(r"\d+\s", line)]
    extra = [line for line in noise if any(re.fullmatch(a, line) for a in allowed)]
    assert noise == extra, lines
    return extra


def _one_answer(records: list[dict]) -> None:
    """`^done`, no `*running`, one `*stopped` (at the checkpoint, with its frame)."""
    results = [r for r in records if r["type"] == "result"]
    assert [r["message"] for r in results] == ["done"], records
    assert not _notes(records, "running"), records
    stops = _notes(records, "stopped")
    assert len(stops) == 1, records
    assert stops[0]["payload"]["frame"]["func"] == "checkpoint", stops


def test_mi_restore_shape(tmp_path: Path) -> None:
    """Under MI, a restore into a live process answers as a command that does not run the
    program: `^done`, one `*stopped` at the checkpoint with its frame, no `*running`, and no
    console line from the restore's internal steps (each step used to be a
    `*running`/`*stopped` pair and a frame line)."""
    binary = compile_program("loop", tmp_path)
    image = tmp_path / "loop.img"
    dump_at_checkpoint(binary, image)
    gdb, records = _mi_restore_into_live(binary, image, tmp_path / "out")
    try:
        _one_answer(records)
        _no_step_noise(records)
        assert len(records) < 25, records
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()


def test_mi_threaded_restore_shape(threads_image, tmp_path: Path) -> None:
    """A threaded program: the threads' creation (a resume GDB makes itself, so that it sees
    the clones) shows no record but the threads' own `=thread-created`."""
    binary, image = threads_image
    gdb, records = _mi_restore_into_live(binary, image, tmp_path / "out")
    try:
        _one_answer(records)
        assert len(_notes(records, "thread-created")) == 3, records
        _no_step_noise(records)
        assert len(records) < 60, records
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()


def test_mi_restore_fresh_process(tmp_path: Path) -> None:
    """With no process, the restore starts one: GDB's notifications of the new process
    (thread group, thread, libraries) come through; its `starti` stop does not."""
    binary = compile_program("loop", tmp_path)
    image = tmp_path / "loop.img"
    dump_at_checkpoint(binary, image)
    gdb = Gdb()
    try:
        gdb.console(f"set args > {tmp_path / 'out'}")
        start = len(gdb.records)
        gdb.console(f"img-restore {image}")
        records = _records_of(gdb, start)
        _one_answer(records)
        assert _notes(records, "thread-group-started") and _notes(records, "thread-created")
        _no_step_noise(records)
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
        assert "iteration 5" in (tmp_path / "out").read_text()
    finally:
        gdb.close()


def test_mi_damaged_image_is_one_error(threads_image, tmp_path: Path) -> None:
    binary, image = threads_image
    damaged = tmp_path / "damaged.img"
    damaged.write_bytes(image.read_bytes()[:200])
    gdb = Gdb(str(binary))
    try:
        start = len(gdb.records)
        with pytest.raises(GdbError) as error:
            gdb.console(f"img-restore {damaged}")
        records = _records_of(gdb, start)
        results = [r for r in records if r["type"] == "result"]
        assert [r["message"] for r in results] == ["error"], records
        msg = results[0]["payload"]["msg"]
        assert msg.startswith("img-restore: ") and "\n" not in msg, msg
        assert not any(r["type"] == "notify" and r["message"] in ("running", "stopped")
                       for r in records), records
        assert "img-restore" in str(error.value)
    finally:
        gdb.close()


def test_breakpoint_at_checkpoint_is_reported_and_stepped_over(threads_image,
                                                              tmp_path: Path) -> None:
    """The restored stop is one GDB made: a breakpoint at the checkpoint's pc shows as hit,
    and `continue` goes on from it instead of hitting it again."""
    _, image = threads_image
    done = subprocess.run(
        ["gdb", "--nx", "--batch", "-ex", "set confirm off", "-ex", f"source {INIT}",
         "-ex", "set breakpoint pending on", "-ex", "break checkpoint",
         "-ex", f"img-restore {image}", "-ex", "info program", "-ex", "continue"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    assert re.search(r"hit Breakpoint 1, checkpoint \(\)", text), text
    assert "It stopped at breakpoint 1." in text, text
    assert "exited normally" in text, text
    assert text.count("hit Breakpoint 1") == 1, text
    assert os.path.exists(tmp_path) and not list(tmp_path.glob("core*"))


def test_siginfo_of_the_checkpoint_stop(tmp_path: Path) -> None:
    """$_siginfo after the restore is the checkpoint's (a breakpoint: SIGTRAP, si_code
    SI_KERNEL), not the internal steps' or `starti`'s; the dump leaves it as it was too."""
    binary = compile_program("loop", tmp_path)
    image = tmp_path / "loop.img"
    done = subprocess.run(
        ["gdb", "--nx", "--batch", "-ex", "set confirm off", "-ex", f"source {INIT}",
         "-ex", "break checkpoint", "-ex", f"run > {tmp_path / 'out'}",
         "-ex", "p/x $_siginfo.si_code", "-ex", f"img-dump {image}",
         "-ex", "p/x $_siginfo.si_code", "-ex", "kill", "-ex", "delete",
         "-ex", f"img-restore {image} --accept-loss",
         "-ex", "p $_siginfo.si_signo", "-ex", "p/x $_siginfo.si_code",
         "-ex", "continue", str(binary)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    values = re.findall(r"^\$\d+ = (\S+)$", text, re.M)
    assert values == ["0x80", "0x80", "5", "0x80"], text
    assert "exited normally" in text, text
    info = subprocess.run(["gdb", "--nx", "--batch", "-ex", f"source {INIT}",
                           "-ex", f"img-info {image}"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL).stdout
    assert "stop_reason: thread" in info and "SIGTRAP (si_code 0x80, a breakpoint)" in info, info


def test_replacing_a_live_threaded_process_asks_first(threads_image, tmp_path: Path) -> None:
    """Over a live process img-restore asks as `run` does (input not from a terminal: GDB's
    own answer, said so); a process with several threads is replaced by a fresh one."""
    binary, image = threads_image
    done = subprocess.run(
        ["gdb", "--nx", "-ex", "set pagination off", "-ex", f"source {INIT}",
         "-ex", "break checkpoint", "-ex", f"run > {tmp_path / 'out1'}",
         "-ex", f"set args > {tmp_path / 'out2'}",
         "-ex", f"img-restore {image}", "-ex", "info threads", "-ex", "continue",
         "-ex", "quit", str(binary)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    assert "Replace it with the image? (y or n) [answered Y; input not from terminal]" in text
    assert "img-restore: starting" in text, text
    assert "exited normally" in text, text
    assert "joined=1" in (tmp_path / "out2").read_text(), text


def test_yes_and_batch_do_not_ask(threads_image, tmp_path: Path) -> None:
    binary, image = threads_image
    for extra in (["--batch"], []):
        done = subprocess.run(
            ["gdb", "--nx", *extra, "-ex", f"source {INIT}", "-ex", "starti",
             "-ex", f"img-restore {image} --yes" if not extra else f"img-restore {image}",
             "-ex", "kill", "-ex", "quit", str(binary)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL)
        text = done.stdout + done.stderr
        assert "Replace it" not in text and "checkpoint ()" in text, text


def test_img_prefix_completion_default_name_and_spaces(tmp_path: Path) -> None:
    """`help img` lists the family, the dashed names are aliases with a short first help
    line, options complete, img-dump with no file writes PROGRAM.PID.img, and a path with
    spaces needs no quotes."""
    binary = compile_program("loop", tmp_path)
    spaced = tmp_path / "with space" / "a b.img"
    spaced.parent.mkdir()
    done = subprocess.run(
        ["gdb", "--nx", "--batch", "-ex", f"source {INIT}", "-ex", "help img",
         "-ex", "complete img-restore --acc", "-ex", "complete img restore x --via f",
         "-ex", "complete img-dump --fo", "-ex", "complete img-checkpoint --pr",
         "-ex", "complete img diff a b --st", "-ex", "img checkpoints -h",
         "-ex", "img-bisect -h", "-ex", "break checkpoint",
         "-ex", f"run > {tmp_path / 'out'}", "-ex", "img-dump",
         "-ex", "python print('PID', gdb.selected_inferior().pid)",
         "-ex", f"img dump {spaced}", "-ex", "kill",
         "-ex", f"img-restore {spaced} --accept-loss", "-ex", "continue", str(binary)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    assert "img restore, img-restore -- Restore a process image into the inferior, stopped " \
           "at the checkpoint.\n" in text, text
    assert "img dump, img-dump -- " in text and "img info, img-info -- " in text, text
    for name in ("checkpoint", "checkpoints", "diff", "bisect"):  # the newer commands too
        assert f"img {name}, img-{name} -- " in text, text
    assert "img-checkpoint --progress\nimg-checkpoint --prune\n" in text, text
    assert "img diff a b --store\n" in text, text
    assert "Usage: img-checkpoints [--store DIR] [--json]" in text, text
    assert "Usage: img-bisect [--store DIR] [--accept-loss] A B EXPR" in text, text
    assert "img-restore --accept-loss\n" in text, text
    assert "img restore x --via fast\n" in text, text
    assert "img-dump --format\n" in text, text
    pid = re.search(r"^PID (\d+)$", text, re.M).group(1)
    assert (tmp_path / f"loop.{pid}.img").exists(), text
    assert spaced.exists() and "exited normally" in text, text


def test_warnings_go_to_stderr(tmp_path: Path) -> None:
    """The plugin's warnings are GDB's stderr (MI's log records), its figures stdout."""
    binary = compile_program("loop", tmp_path)
    image = tmp_path / "loop.img"
    dump_at_checkpoint(binary, image)
    done = subprocess.run(
        ["gdb", "--nx", "--batch", "-ex", f"source {INIT}", "-ex", "set args > /dev/null",
         "-ex", f"img-restore {image} --accept-loss", "-ex", "kill"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "img-restore: warning: " in done.stderr, done.stderr
    assert ": warning:" not in done.stdout and "img-restore: " in done.stdout, done.stdout
