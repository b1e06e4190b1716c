"""The LLDB front end as a user meets it (issue 13): __thread variables after a restore, the
restored stop, the output's streams and counts, parsed commands with their options, the
confirmation before replacing a live process, the checkpoint's pid."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from cprogs import compile_program
from lldb_helpers import LLDB, ROOT, lldb_batch, lldb_missing, read
from selfcheck import LLDB_SIGNALS, lldb_round_trip

_MISSING = lldb_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def _dump(tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    """(binary, image, img-dump's output) of a run stopped at checkpoint()."""
    binary = compile_program(name, tmp_path)
    image = tmp_path / f"{name}.img"
    done = lldb_batch(f"settings set target.output-path {tmp_path / 'part1'}", LLDB_SIGNALS,
                      "breakpoint set -n checkpoint", "run", f"img-dump {image}", "kill",
                      program=binary)
    assert image.exists(), done.stdout + done.stderr
    return binary, image, done.stdout + done.stderr


# ---- 1. __thread variables ------------------------------------------------------------------

def test_thread_local_variables_after_restore(tmp_path: Path) -> None:
    """Live LLDB prints them; after a restore its dynamic loader knows the link map again."""
    _, image, _ = _dump(tmp_path, "tls")
    done = lldb_batch(f"settings set target.output-path {tmp_path / 'part2'}",
                      f"img-restore {image}", "frame select 1", "expression counter",
                      "frame variable label scale", "continue")
    said = done.stdout + done.stderr
    assert "no TLS data" not in said, said
    assert re.search(r"\(long\) \$0 = 43\b", done.stdout), said
    assert 'label = "tls-label"' in done.stdout and "scale = 12" in done.stdout, said
    assert "exited with status = 0" in done.stdout, said
    assert "i=3 counter=46" in read(tmp_path / "part2")


def test_thread_local_variables_of_each_thread(tmp_path: Path) -> None:
    """Another thread's __thread variables read as in the live session at the checkpoint."""
    binary = compile_program("threads_compute", tmp_path, "-pthread")
    image = tmp_path / "threads.img"
    show = ("thread select 2", "target variable state", "thread select 1",
            "target variable state")
    live = lldb_batch(f"settings set target.output-path {tmp_path / 'part1'}",
                      "breakpoint set -n checkpoint", "run", *show, f"img-dump {image}",
                      "kill", program=binary)
    restored = lldb_batch(f"settings set target.output-path {tmp_path / 'part2'}",
                          f"img-restore {image}", *show, "continue")

    def values(text: str) -> list[str]:
        return re.findall(r"\(unsigned long\) state = (\d+)", text)

    assert len(values(live.stdout)) == 2, live.stdout + live.stderr
    assert values(restored.stdout) == values(live.stdout), restored.stdout + restored.stderr
    assert "exited with status = 0" in restored.stdout, restored.stdout + restored.stderr


# ---- 2. the restored stop -------------------------------------------------------------------

def test_restored_stop_is_a_stop_at_the_checkpoint(tmp_path: Path) -> None:
    _, image, _ = _dump(tmp_path, "tls")
    done = lldb_batch(f"img-restore {image}", "thread list")
    said = done.stdout + done.stderr
    assert "instruction step into" not in said, said
    assert "img-restore: stopped at the checkpoint" in done.stdout, said
    # LLDB's stop after the link-map hook, which the restore runs through for __thread
    # variables: no breakpoint of the restore's own takes a number.
    assert re.search(r"tls`checkpoint .*stop reason = shared-library-event", done.stdout), said


def test_restored_stop_is_the_users_breakpoint(tmp_path: Path) -> None:
    """With the user's breakpoint at the checkpoint, the stop is a hit of it, as live."""
    binary, image, _ = _dump(tmp_path, "tls")
    done = lldb_batch(f"target create {binary}", "breakpoint set -n checkpoint",
                      f"img-restore {image}", "thread list", "breakpoint list")
    said = done.stdout + done.stderr
    assert "stop reason = breakpoint 1.1" in done.stdout, said
    assert "hit count = 1" in done.stdout, said


# ---- 3. output ------------------------------------------------------------------------------

def test_output_streams_order_and_counts(tmp_path: Path) -> None:
    """Warnings through the result's warning stream (stderr in batch mode); the start line
    before the progress line; the restore's counts said against the dump's."""
    binary = compile_program("bigmem", tmp_path)
    image = tmp_path / "bigmem.img"
    dumped = lldb_batch("settings set target.run-args 4",
                        f"settings set target.output-path {tmp_path / 'part1'}",
                        "breakpoint set -n checkpoint", "run", f"img-dump {image}", "kill",
                        program=binary).stdout
    counts = re.search(r"img-dump: (\d+) VMAs, (\d+) pages \((\d+) bytes\) in a file of "
                       r"(\d+) bytes", dumped)
    assert counts, dumped
    assert int(counts[3]) == int(counts[2]) * 4096
    assert LLDB is not None
    argv = [LLDB, "--no-lldbinit", "--batch", "-o",
            f"command script import {ROOT / 'lldb_img'}",
            "-o", f"settings set target.output-path {tmp_path / 'other'}",
            "-o", f"img-restore {image} --progress --via debugger"]
    both = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120, stdin=subprocess.DEVNULL).stdout
    progress = re.search(r"img-restore: +\d+% \(", both)
    assert progress and "img-restore: started" in both, both
    assert both.index("img-restore: started") < progress.start(), both
    separate = lldb_batch(f"settings set target.output-path {tmp_path / 'other'}",
                          f"img-restore {image}")
    assert "warning: stdout: kept as the debugger was told" in separate.stderr, separate.stderr
    assert "warning" not in separate.stdout, separate.stdout
    restored = re.search(r"of the image's (\d+) VMAs mapped, \d+ of its (\d+) pages",
                         separate.stdout)
    assert restored and restored.groups() == counts.groups()[:2], separate.stdout + dumped


# ---- 4. parsed commands ---------------------------------------------------------------------

def _complete(text: str) -> str:
    return ("script m = lldb.SBStringList(); lldb.debugger.GetCommandInterpreter()."
            f"HandleCompletion({text!r}, {len(text)}, 0, -1, m); "
            "print('completions:', [m.GetStringAtIndex(i) for i in range(m.GetSize())])")


def test_parsed_commands_help_options_completion(tmp_path: Path) -> None:
    (tmp_path / "some.img").write_bytes(b"")
    done = lldb_batch("help img-restore", "img-dump -h", _complete("img-restore --acc"),
                      _complete("img-info --ve"), _complete(f"img-restore {tmp_path}/so"))
    text = done.stdout
    assert "Expects 'raw' input" not in text, text
    for option in ("--via", "--progress", "--accept-loss", "--yes", "Values: auto | fast"):
        assert option in text.split("img-dump -h")[0], text
    assert "--format" in text.split("img-dump -h")[1], text
    completions = [line for line in text.splitlines() if line.startswith("completions:")]
    assert len(completions) == 3, text
    assert "'--accept-loss'" in completions[0] and "'--verify'" in completions[1], text
    assert "some.img" in completions[2], text
    help_line = lldb_batch("help").stdout
    assert re.search(r"img-restore +-- Restore a process image into the inferior\.", help_line)


def test_newer_commands_are_parsed_too(tmp_path: Path) -> None:
    """img-checkpoint, img-checkpoints and img-diff are parsed commands like img-restore;
    img-bisect (raw: EXPR is free text) still shows its usage and options, for -h too; all
    are in `help`; errors are one line."""
    done = lldb_batch("help", "help img-checkpoint", "img-checkpoints -h", "img-diff -h",
                      "script print('== bisect')", "img-bisect --store x -h",
                      _complete("img-checkpoint --pr"), _complete("img-diff a b --js"))
    text = done.stdout
    listed, rest = text.split("(lldb) help img-checkpoint", 1)
    for name, said in (("checkpoint", "Save the stopped process"),
                       ("checkpoints", "List the checkpoints"), ("diff", "Compare two"),
                       ("bisect", "Find the first checkpoint")):
        assert re.search(rf"img-{name} +-- {said}", listed), listed
    checkpoint, rest = rest.split("img-checkpoints -h", 1)
    assert "Expects 'raw' input" not in checkpoint + rest.split("== bisect")[0], text
    for option in ("--store", "--delete", "--prune", "--export", "--import", "--progress"):
        assert option in checkpoint, checkpoint
    assert "--json" in rest.split("img-diff -h")[0] and "--json" in rest.split("img-diff -h")[1]
    bisect = rest.split("== bisect", 1)[1]
    assert "Usage: img-bisect [--store DIR] [--accept-loss] A B EXPR" in bisect, bisect
    assert "--accept-loss: Passed to each img-restore." in bisect, bisect
    completions = [line for line in text.splitlines() if line.startswith("completions:")]
    assert "'--progress'" in completions[0] and "'--prune'" in completions[0], completions
    assert "'--json'" in completions[1], completions
    for command, message in (("img-diff a", "img-diff: the following arguments are required: b"),
                             ("img-checkpoints x", "'img-checkpoints' doesn't take any arguments"),
                             ("img-checkpoint --prune 1 --delete 2",
                              "img-checkpoint: argument --prune: not allowed with argument "
                              "--delete"),
                             ("img-bisect 1", "img-bisect: usage: img-bisect")):
        errors = [line for line in lldb_batch(command).stderr.splitlines()
                  if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (command, errors)


def test_parsed_commands_errors_are_one_line(tmp_path: Path) -> None:
    for command, message in (("img-restore", "the following arguments are required: file"),
                             ("img-restore x.img --via teleport", "invalid choice: 'teleport'"),
                             ("img-info a b", "unrecognized arguments: b")):
        done = lldb_batch(command)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], done.stderr


def test_file_names_with_spaces(tmp_path: Path) -> None:
    _, image, _ = _dump(tmp_path, "tls")
    spaced = tmp_path / "an image.img"
    image.rename(spaced)
    done = lldb_batch(f'img-info "{spaced}"')
    assert "image format v1" in done.stdout, done.stdout + done.stderr


def test_raw_fallback_for_older_lldbs(tmp_path: Path) -> None:
    """The argparse commands an LLDB without parsed commands gets still work and say their
    options in their help."""
    _, image, _ = _dump(tmp_path, "tls")
    raw = "command script add -o -C disk-file -c lldb_img.commands.ImgRestore raw-restore"
    done = lldb_batch(raw, "help raw-restore", f"raw-restore {image} -v debugger -a",
                      "frame select 1", "expression counter")
    assert "--via (-v) auto|fast|debugger" in done.stdout, done.stdout + done.stderr
    assert "via debugger" in done.stdout and "$0 = 43" in done.stdout, done.stdout


# ---- 5. replacing a live process -----------------------------------------------------------

def test_batch_replaces_a_multithreaded_live_process(tmp_path: Path) -> None:
    """Batch mode answers the confirmation; a live process of several threads (of another
    program) is killed and a fresh one started for the image."""
    _, image, _ = _dump(tmp_path, "tls")
    other = compile_program("threads_cond", tmp_path, "-pthread")
    out = tmp_path / "part2"
    done = lldb_batch(f"settings set target.output-path {out}", LLDB_SIGNALS,
                      "breakpoint set -n checkpoint", "run", f"img-restore {image}",
                      "continue", program=other)
    said = done.stdout + done.stderr
    assert "img-restore: started" in done.stdout, said
    assert "exited with status = 0" in done.stdout, said
    assert "i=5 counter=55" in read(out), read(out)


def _interactive(tmp_path: Path, image: Path, program: Path, answer: str, *options: str) -> str:
    """LLDB on a terminal (a pty): run to checkpoint(), img-restore, answer the question."""
    import pty
    import select

    assert LLDB is not None
    script = tmp_path / "commands.lldb"
    script.write_text(f"command script import {ROOT / 'lldb_img'}\n"
                      f"settings set target.output-path {tmp_path / 'live.out'}\n"
                      "breakpoint set -n checkpoint\nrun\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child: lldb on the pty
        os.execv(LLDB, [LLDB, "--no-lldbinit", "-s", str(script), str(program)])
    seen = b""

    def until(text: bytes, seconds: float = 60) -> None:
        nonlocal seen
        while text not in seen:
            ready, _, _ = select.select([fd], [], [], seconds)
            if not ready:
                raise AssertionError(seen.decode(errors="replace"))
            try:
                seen += os.read(fd, 4096)
            except OSError:
                raise AssertionError(seen.decode(errors="replace")) from None

    try:
        until(b"stop reason = breakpoint")
        os.write(fd, f"img-restore {image} {' '.join(options)}\n".encode())
        if not options:
            until(b"[Y/n]")
            os.write(fd, f"{answer}\n".encode())
        until(b"left as it was" if answer == "n" else b"stopped at the checkpoint")
        os.write(fd, b"process kill\n")
        until(b"killed")
        os.write(fd, b"quit\n")
        until(b"quit")
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
    return seen.decode(errors="replace")


def test_interactive_confirmation(tmp_path: Path) -> None:
    """On a terminal LLDB asks, as `process launch` does; "n" leaves the process alone,
    --yes asks nothing."""
    _, image, _ = _dump(tmp_path, "tls")
    other = compile_program("loop", tmp_path)
    said = _interactive(tmp_path, image, other, "n")
    assert "There is a running process, replace it with the image?: [Y/n]" in said, said
    assert "not confirmed: the running process is left as it was" in said, said
    said = _interactive(tmp_path, image, other, "", "--yes")
    assert "[Y/n]" not in said and "img-restore: stopped at the checkpoint" in said, said


# ---- 6. the pid -----------------------------------------------------------------------------

@pytest.mark.skipif(not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK),
                    reason="choosing the next pid needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE")
def test_restored_process_keeps_its_pid_lldb(tmp_path: Path) -> None:
    lldb_round_trip(tmp_path, "state_pid")
