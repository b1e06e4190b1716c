"""One answer under GDB/MI: what a command's internal steps print is held back.

GDB 13 answers `^running` for any command that resumes the inferior (and then no `^done`),
and prints each resume and stop (`*running`, `*stopped`, the stop's console lines) to the MI
stream, whatever `to_string` or suppress-cli-notifications say. A restore resumes the
inferior a few times (`starti`, a thread's clone, the stop GDB makes at the checkpoint), so
under MI:

- GDB's file descriptor 1 (the MI stream) points at a memfd for the command's length: every
  record GDB prints lands there, GDB itself none the wiser (an earlier version used GDB's
  `set logging redirect`, and GDB 13 corrupted its heap now and then under it);
- around the fork of a process started for the restore, fd 1 is the real one again, so the
  new process keeps the real stdout (capture resumes at the new thread's creation);
- after the last resume, a nested MI no-op clears GDB's "a `^running` was printed" flag, so
  that the command ends with its own `^done` (or `^error`);
- before the command returns, fd 1 is put back and the held records are written out,
  filtered: no `^running` / `*running`, no nested answers, no stop lines of the internal
  steps, and only the checkpoint's stop (the last `*stopped` after `final_stop()`, with its
  console lines). GDB then prints the command's answer itself.

Everything else (notifications of threads, libraries, breakpoints; the command's own lines
and warnings) goes out as it came, in order.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import gdb

from binfmt_img.live import progress

_RESULT = re.compile(rb"^\d*\^")
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
        # Only a name GDB knows (mi, mi1..mi4): it goes into an interpreter-exec command.
        return value if re.fullmatch(r"mi\d?", value) else None
    return None


_LIBC = ctypes.CDLL(None)


def _flush() -> None:
    """GDB's streams and C stdio: nothing of GDB's buffered output may cross a switch of
    fd 1."""
    gdb.flush()
    _LIBC.fflush(None)


class _Capture:
    def __init__(self, interpreter: str) -> None:
        self.interpreter = interpreter
        self.fd = os.memfd_create("img-mi-capture")
        self.real: int | None = None  # the real fd 1 while capturing
        self.done = 0  # bytes of the memfd already filtered and written out
        self.mark: int | None = None

    def start(self) -> None:
        if self.real is None:
            _flush()
            self.real = os.dup(1)
            os.dup2(self.fd, 1)

    def pause(self) -> None:
        """The real fd 1 again (a process forked now inherits it); what was held so far is
        written out (no resume is open at these points)."""
        if self.real is not None:
            _flush()
            os.dup2(self.real, 1)
            os.close(self.real)
            self.real = None
            self._write(filtered(self._held(), None))

    def final_stop(self) -> None:
        """What follows is the stop at the checkpoint: its `*stopped` and lines are kept."""
        _flush()
        self.mark = os.fstat(self.fd).st_size - self.done

    def settle(self) -> None:
        """After the last resume: the command answers `^done` again (the nested command
        starts by clearing the flag the resumes set)."""
        gdb.execute(f'interpreter-exec {self.interpreter} "-data-evaluate-expression 0"',
                    to_string=True)

    def finish(self) -> None:
        try:
            self.pause()
        finally:
            os.close(self.fd)

    def _held(self) -> bytes:
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, size - self.done, self.done)
        self.done = size
        return data

    def _write(self, out: bytes) -> None:
        while out:
            out = out[os.write(1, out):]

    def write_rest(self) -> None:
        _flush()
        data = self._held()
        os.dup2(self.real, 1)
        os.close(self.real)
        self.real = None
        self._write(filtered(data, self.mark))


def filtered(data: bytes, mark: int | None) -> bytes:
    """The held MI records as the front end should see them (see the module's text); every
    answer in them is a nested or internal one."""
    lines = data.splitlines(keepends=True)
    offsets, at = [], 0
    for line in lines:
        offsets.append(at)
        at += len(line)
    final = [i for i, line in enumerate(lines) if line.startswith(b"*stopped")
             and mark is not None and offsets[i] >= mark]
    keep_stop = final[-1] if final else None
    out: list[bytes] = []
    window = False  # between a resume and its stop: the stop's own console lines
    pending: list[bytes] = []  # console lines that may turn out to be a stop's
    for i, line in enumerate(lines):
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
    return b"".join(out)


@contextmanager
def one_answer() -> Iterator[_Capture | None]:
    """Around a command: under MI, its internal records held back and filtered; the
    capture (for final_stop) or None (CLI, or nested in another img command)."""
    global _active
    name = interpreter_name()
    if name is None or _active is not None or os.environ.get("IMG_MI_ONE_ANSWER") == "0":
        yield None
        return
    capture = _Capture(name)
    capture.start()
    _active = capture
    try:
        yield capture
    finally:
        _active = None
        try:
            if capture.real is not None:
                capture.settle()
                capture.write_rest()
        finally:
            capture.finish()


def final_stop() -> None:
    """Called before the stop at the checkpoint (no-op outside a capture)."""
    if _active is not None:
        _active.final_stop()


@contextmanager
def start_unseen() -> Iterator[None]:
    """Around the `starti` of a process started for a restore. On the CLI: GDB prints its
    stop ("Program stopped." and a frame line) through the top-level UI whatever `to_string`,
    logging or suppress-cli-notifications say, so GDB's stdout goes to /dev/null from the new
    thread's creation (the child is forked by then and keeps the real stdout) to the end.
    Under MI: the capture pauses for the fork and resumes at the new thread's creation, so
    that the starti's records are held back and filtered with the rest."""
    saved: list[int] = []
    capture = _active

    def hide(_event: object) -> None:
        if capture is not None:
            capture.start()
        elif not saved:
            gdb.flush()
            saved.append(os.dup(1))
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)

    if capture is None and interpreter_name() is not None:  # fd 1 is the MI stream
        yield
        return
    if capture is not None:
        capture.pause()
    gdb.events.new_thread.connect(hide)
    try:
        yield
    finally:
        gdb.events.new_thread.disconnect(hide)
        if capture is not None:
            capture.start()  # a start that failed before the fork
        if saved:
            gdb.flush()
            os.dup2(saved[0], 1)
            os.close(saved[0])
