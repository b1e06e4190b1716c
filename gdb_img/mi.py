"""One answer under GDB/MI: what a command's internal steps print is held back.

GDB 13 answers `^running` for any command that resumes the inferior (and then no `^done`),
and prints each resume and stop (`*running`, `*stopped`, the stop's console lines) to the MI
stream, whatever `to_string` or suppress-cli-notifications say. A restore resumes the
inferior a few times (`starti`, a thread's clone, the stop GDB makes at the checkpoint), so
under MI:

- the MI stream is sent into a memfd for the command's length (GDB's logging, turned on
  through the MI interpreter itself, which points the MI's raw output at the log file);
- once the last resume is over, a nested MI no-op clears GDB's "a `^running` was printed"
  flag, so that the command ends with its own `^done` (or `^error`);
- right after the command, from GDB's event loop (where the MI interpreter is the current
  one again), logging is turned off and the held records are written out, filtered: no
  `^running` / `*running`, no nested answers, no stop lines of the internal steps, and only
  the checkpoint's stop (the last `*stopped` after `final_stop()`, with its console lines).

Everything else (notifications of threads, libraries, breakpoints; the command's own lines
and warnings; what follows its answer) goes out as it came, in order.

OFF BY DEFAULT (IMG_MI_ONE_ANSWER=1 in GDB's environment turns it on): with GDB 13 the
logging redirection of the MI interpreter corrupts GDB's heap now and then a few commands
later ("free(): invalid next size (fast)", then "Recursive internal problem", exit 1), seen
in 2 to 6 of 10 sessions that restore twice (tests/test_gdb_mi.py, marked xfail).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import gdb

from binfmt_img.live import progress

_RESULT = re.compile(rb"^\d*\^")
_SETTINGS = ("logging file", "logging redirect")
_active: _Capture | None = None


def interpreter_name() -> str | None:
    """The name GDB's top-level MI interpreter was started with (mi, mi2, mi3...), or None
    when the top level is the CLI."""
    args = progress.command_line()
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag.lstrip("-") not in ("interpreter", "i"):
            continue
        if not _:
            value = args[i + 1] if i + 1 < len(args) else ""
        return value if value.startswith("mi") else None
    return None


class _Capture:
    def __init__(self, interpreter: str) -> None:
        self.interpreter = interpreter
        self.fd = os.memfd_create("img-mi-capture")
        self.mark: int | None = None
        self.saved = {name: gdb.parameter(name) for name in _SETTINGS}

    def start(self) -> None:
        gdb.flush()
        path = f"/proc/{os.getpid()}/fd/{self.fd}"
        gdb.execute(f"set logging file {path}", to_string=True)
        gdb.execute("set logging redirect on", to_string=True)
        self._mi("-gdb-set logging enabled on")

    def _mi(self, command: str) -> None:
        gdb.execute(f'interpreter-exec {self.interpreter} "{command}"', to_string=True)

    def final_stop(self) -> None:
        """What follows is the stop at the checkpoint: its `*stopped` and lines are kept."""
        gdb.flush()
        self.mark = os.fstat(self.fd).st_size

    def settle(self) -> None:
        """After the last resume: the command answers `^done` again (the nested command
        starts by clearing the flag the resumes set)."""
        self._mi("-data-evaluate-expression 0")

    def finish(self) -> None:
        """From the event loop, after the command's answer: logging off, records out."""
        try:
            gdb.execute("set logging enabled off", to_string=True)
        finally:
            for name, value in self.saved.items():
                if gdb.parameter(name) != value:
                    _set(name, value)
            data = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
            os.close(self.fd)
            out = filtered(data, self.mark)
            while out:
                out = out[os.write(1, out):]


def _set(name: str, value: object) -> None:
    text = ("on" if value else "off") if isinstance(value, bool) else (value or "")
    try:
        gdb.execute(f"set {name} {text}", to_string=True)
    except gdb.error:
        pass


def filtered(data: bytes, mark: int | None) -> bytes:
    """The held MI records as the front end should see them (see the module's text)."""
    lines = data.splitlines(keepends=True)
    offsets, at = [], 0
    for line in lines:
        offsets.append(at)
        at += len(line)
    results = [i for i, line in enumerate(lines)
               if _RESULT.match(line) and not line.lstrip(b"0123456789").startswith(b"^running")]
    answer = results[-1] if results else len(lines)
    final = [i for i in range(answer) if lines[i].startswith(b"*stopped")
             and mark is not None and offsets[i] >= mark]
    keep_stop = final[-1] if final else None
    out: list[bytes] = []
    window = False  # between a resume and its stop: the stop's own console lines
    pending: list[bytes] = []  # console lines that may turn out to be a stop's
    for i, line in enumerate(lines[:answer]):
        if line.startswith(b"*running"):
            window = True
            out += pending
            pending = []
        elif line.startswith(b"*stopped"):
            if i == keep_stop:
                out += pending + [line]
            pending, window = [], False
        elif _RESULT.match(line) or line.startswith(b"(gdb)"):
            continue  # nested answers, `^running` and the prompt GDB prints after it
        elif line.startswith(b"~"):
            pending.append(line)
        elif line.startswith(b"=cmd-param-changed"):
            continue  # the command's own settings, put back
        else:
            if not window:
                out += pending
                pending = []
            out.append(line)
    if not window:
        out += pending
    return b"".join(out + lines[answer:])


def _logging_in_use() -> bool:
    try:
        return bool(gdb.parameter("logging enabled"))
    except (gdb.error, RuntimeError):
        return True


@contextmanager
def one_answer() -> Iterator[_Capture | None]:
    """Around a command: under MI, its internal records held back and filtered; the
    capture (for final_stop) or None (CLI, logging already in use, or nested)."""
    global _active
    name = interpreter_name() if os.environ.get("IMG_MI_ONE_ANSWER") == "1" else None
    # Batch mode runs its -ex commands and exits without the event loop that writes the
    # held records out; GDB before 12 has no `logging enabled`.
    if (name is None or _active is not None or progress.started_with(("-batch", "--batch"))
            or _logging_in_use()):
        yield None
        return
    capture = _Capture(name)
    try:
        capture.start()
    except gdb.error:
        os.close(capture.fd)
        yield None
        return
    _active = capture
    try:
        yield capture
    finally:
        _active = None
        try:
            capture.settle()
        finally:
            gdb.post_event(capture.finish)


def final_stop() -> None:
    """Called before the stop at the checkpoint (no-op outside a capture)."""
    if _active is not None:
        _active.final_stop()


@contextmanager
def start_unseen() -> Iterator[None]:
    """Around the `starti` of a process started for a restore, on the CLI: GDB prints its
    stop ("Program stopped." and a frame line) through the top-level UI whatever `to_string`,
    logging or suppress-cli-notifications say. GDB's stdout goes to /dev/null from the new
    thread's creation (the child is forked by then and keeps the real stdout) to the end.
    Not under MI, where fd 1 carries the MI records (one_answer() holds those lines back
    when it is on)."""
    saved: list[int] = []

    def hide(_event: object) -> None:
        if not saved:
            gdb.flush()
            saved.append(os.dup(1))
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)

    if _active is not None or interpreter_name() is not None:  # fd 1 is the MI stream
        yield
        return
    gdb.events.new_thread.connect(hide)
    try:
        yield
    finally:
        gdb.events.new_thread.disconnect(hide)
        if saved:
            gdb.flush()
            os.dup2(saved[0], 1)
            os.close(saved[0])
