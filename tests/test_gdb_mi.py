"""GDB/MI (pygdbmi): img-restore, img-dump and img-info answer like any command that does not
run the program: `^done` (or `^error,msg=` with one line), no `*running`, at most one
`*stopped` (the checkpoint's), no console line from the restore's internal steps; typed at the
MI prompt and through `-interpreter-exec console` alike."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cprogs import compile_program
from gdbmi import INIT, Gdb, _quoted
from test_gdb_restore import dump_at_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
@pytest.fixture(scope="module")
def threads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("mi")
    binary = compile_program("threads_cond", tmp, "-pthread")
    image = tmp / "threads_cond.img"
    dump_at_checkpoint(binary, image)
    return binary, image


def _run(gdb: Gdb, command: str, direct: bool) -> list[dict]:
    """One command, typed at the MI prompt (`direct`) or through -interpreter-exec; its
    records up to its answer."""
    text = command if direct else f'-interpreter-exec console "{_quoted(command)}"'
    gdb.token += 1
    token = gdb.token
    start = len(gdb.records)
    gdb.mi.write(f"{token}{text}", read_response=False)
    gdb._collect(lambda rs: any(r["type"] == "result" and r.get("token") == token
                                for r in rs), 120)
    return gdb.records[start:]


def _shape(records: list[dict], command: str, stops: int, own: tuple[str, ...] = ()) -> dict:
    """The one answer; `stops` *stopped records; console lines only the command's own
    (starting `command: ` or matching `own`) and the checkpoint's stop line."""
    results = [r for r in records if r["type"] == "result"]
    assert len(results) == 1, records
    assert not [r for r in records if r["type"] == "notify" and r["message"] == "running"], \
        records
    stopped = [r for r in records if r["type"] == "notify" and r["message"] == "stopped"]
    assert len(stopped) == stops, records
    if stopped:
        assert stopped[0]["payload"]["frame"]["func"] == "checkpoint", stopped
    text = "".join(r["payload"] for r in records if r["type"] == "console")
    for line in filter(None, text.splitlines()):  # GDB's breakpoint stop starts with \n
        assert (line.startswith(f"{command}: ") or re.match(r"checkpoint \(\) at |\d+\t", line)
                or any(re.match(o, line) for o in own)), (line, text)
    return results[0]


@pytest.mark.parametrize("direct", [True, False], ids=["typed", "interpreter-exec"])
def test_threaded_restore_dump_info_answer_done(threads, tmp_path: Path, direct: bool) -> None:
    binary, image = threads
    out = tmp_path / "out"
    gdb = Gdb(str(binary))
    try:
        gdb.console(f"set args > {out}")
        # A fresh process (started by the restore itself), then over the live one.
        for command in (f"img-restore {image}", f"img-restore {image} --yes"):
            answer = _shape(_run(gdb, command, direct), "img-restore", 1)
            assert answer["message"] == "done", answer
        threads_now = gdb.mi.write("-thread-info", timeout_sec=10)
        info = next(r for r in threads_now if r["type"] == "result")["payload"]
        assert len(info["threads"]) == 4, info
        second = tmp_path / "second.img"
        answer = _shape(_run(gdb, f"img-dump {second}", direct), "img-dump", 0)
        assert answer["message"] == "done" and second.exists(), answer
        answer = _shape(_run(gdb, f"img-info {second}", direct), "img-info", 0,
                        own=(r".*",))  # the description is the command's own output
        assert answer["message"] == "done", answer
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
        assert out.read_text().count("joined=1") == 3, out.read_text()
    finally:
        gdb.close()


@pytest.mark.parametrize("direct", [True, False], ids=["typed", "interpreter-exec"])
def test_damaged_image_answers_one_error(threads, tmp_path: Path, direct: bool) -> None:
    binary, image = threads
    damaged = tmp_path / "damaged.img"
    damaged.write_bytes(image.read_bytes()[:200])
    gdb = Gdb(str(binary))
    try:
        for command in ("img-restore", "img-info"):
            records = _run(gdb, f"{command} {damaged}", direct)
            answer = _shape(records, command, 0)
            assert answer["message"] == "error", answer
            msg = answer["payload"]["msg"]
            assert msg.startswith(f"{command}: ") and "\n" not in msg, msg
    finally:
        gdb.close()


def test_breakpoint_at_checkpoint_under_mi(tmp_path: Path) -> None:
    """The one *stopped is the breakpoint's, as at the live stop; `continue` goes on from
    it (not hit again), and $_siginfo is the checkpoint's."""
    binary = compile_program("loop", tmp_path)
    image = tmp_path / "loop.img"
    dump_at_checkpoint(binary, image)
    gdb = Gdb(str(binary))
    try:
        gdb.console(f"set args > {tmp_path / 'out'}")
        gdb.console("break checkpoint")
        records = _run(gdb, f"img-restore {image}", direct=True)
        answer = _shape(records, "img-restore", 1, own=(r"Breakpoint 1, checkpoint",))
        assert answer["message"] == "done", answer
        stop = next(r for r in records if r["type"] == "notify" and r["message"] == "stopped")
        assert stop["payload"].get("reason") == "breakpoint-hit", stop
        value = gdb.mi.write("-data-evaluate-expression $_siginfo.si_signo", timeout_sec=10)
        assert any(r["type"] == "result" and r["payload"] == {"value": "5"} for r in value)
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
        assert "iteration 5" in (tmp_path / "out").read_text()
    finally:
        gdb.close()


def test_cli_fresh_restore_prints_no_program_stopped(tmp_path: Path) -> None:
    """On the CLI too, the restore's internal `starti` prints nothing ("Program stopped."
    and its frame line), and GDB's own output goes on afterwards."""
    binary = compile_program("loop", tmp_path)
    image = tmp_path / "loop.img"
    dump_at_checkpoint(binary, image)
    done = subprocess.run(
        ["gdb", "--nx", "--batch", "-ex", "set confirm off", "-ex", f"source {INIT}",
         "-ex", f"img-restore {image} --accept-loss", "-ex", "info program",
         "-ex", "continue"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    assert "Program stopped." not in text and "_start" not in text, text
    assert re.search(r"^checkpoint \(\) at ", done.stdout, re.M), text
    assert "It stopped after being stepped." in done.stdout, text
    assert "exited normally" in done.stdout, text


def test_dump_keeps_a_started_process_one_gdb_started(tmp_path: Path) -> None:
    """img-dump makes its steps behind GDB's back: GDB keeps the process as one it started
    (no detach and attach), so `quit` kills it and says nothing of a detach."""
    binary = compile_program("loop", tmp_path)
    done = subprocess.run(
        ["gdb", "--nx", "--batch", "-ex", "set confirm off", "-ex", f"source {INIT}",
         "-ex", "break checkpoint", "-ex", f"run > {tmp_path / 'out'}",
         "-ex", f"img-dump {tmp_path / 'loop.img'}", "-ex", "info program",
         "-ex", "python print('PID', gdb.selected_inferior().pid)", "-ex", "quit",
         str(binary)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    assert "It stopped at breakpoint 1." in text, text
    assert "detached" not in text.lower() and "internal-error" not in text, text
    pid = int(re.search(r"^PID (\d+)$", text, re.M).group(1))
    assert _gone(pid), pid


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("direct", [True, False], ids=["typed", "interpreter-exec"])
def test_checkpoint_and_diff_answer_done(threads, tmp_path: Path, direct: bool) -> None:
    """img-checkpoint (which dumps the process), img-checkpoints and img-diff answer `^done`
    with no `*running` and no `*stopped`; an error is one `^error` line."""
    binary, image = threads
    store = tmp_path / "store"
    gdb = Gdb(str(binary))
    try:
        gdb.console(f"set args > {tmp_path / 'out'}")
        gdb.console("break checkpoint")
        gdb.until_stopped("run")
        for command in (f"img-checkpoint one --store {store}", f"img checkpoint --store {store}"):
            answer = _shape(_run(gdb, command, direct), "img-checkpoint", 0)
            assert answer["message"] == "done", answer
        for command, name in ((f"img-checkpoints --store {store}", "img-checkpoints"),
                              (f"img-diff {image} one --store {store}", "img-diff"),
                              (f"img diff 1 live --store {store}", "img-diff")):
            answer = _shape(_run(gdb, command, direct), name, 0, own=(r".*",))
            assert answer["message"] == "done", answer
        answer = _shape(_run(gdb, f"img-diff 1 7 --store {store}", direct), "img-diff", 0)
        assert answer["message"] == "error", answer
        assert answer["payload"]["msg"].startswith("img-diff: "), answer
        gdb.console("delete")
        stop = gdb.until_stopped("continue")
        assert stop.get("reason") == "exited-normally", stop
    finally:
        gdb.close()
    assert (tmp_path / "out").read_text().count("joined=1") == 3


def test_checkpoints_from_a_breakpoint_command_list(tmp_path: Path) -> None:
    """`img-checkpoint` then `continue` in a breakpoint's commands: img-checkpoint does not
    resume the inferior through GDB, so the `continue` runs, at every hit."""
    binary = compile_program("compare_list", tmp_path)
    store = tmp_path / "store"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        gdb.mi.write(f'-break-commands 1 "img-checkpoint --store {store}" "continue"',
                     timeout_sec=10)
        gdb.console(f"set args > {tmp_path / 'out'}")
        gdb.console("run", settle=False)
        start = gdb.result_index + 1
        gdb._collect(lambda _rs: any(r["type"] == "notify" and r["message"] == "stopped"
                                     and r["payload"].get("reason") == "exited-normally"
                                     for r in gdb.records[start:]), 120)
        listed = gdb.console(f"img-checkpoints --store {store} --json")
    finally:
        gdb.close()
    entries = json.loads(listed[listed.index("["):])
    assert [e["number"] for e in entries] == list(range(1, 9)), entries
    assert (tmp_path / "out").read_text() == "round 9\n"
