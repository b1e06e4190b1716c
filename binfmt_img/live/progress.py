"""A one-line progress report for restores and dumps that take more than a second."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


class ProgressLine:
    """Call with (pages done, pages in all); writes '\\r<label>: 45% (…, ETA 0:07)' once a
    second has passed, at most ten times a second, and ends the line in finish()."""

    def __init__(self, label: str, write: Callable[[str], None], enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.write, self.enabled, self.clock = label, write, enabled, clock
        self.started = clock()
        self.last = 0.0
        self.shown = False
        self.width = 0  # the longest line so far: a shorter one is padded to cover it

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if not self.enabled or now - self.started < 1.0 or now - self.last < 0.1:
            return
        self.last = now
        self.shown = True
        percent = 100 * done // max(total, 1)
        elapsed = now - self.started
        rate = done * 4096 / elapsed / 1e6
        line = (f"{self.label}: {percent:3d}% ({done} of {total} pages, {rate:.0f} MB/s, "
                f"ETA {eta(done, total, elapsed)})")
        self.width = max(self.width, len(line))
        self.write("\r" + line.ljust(self.width))

    def finish(self) -> None:
        if self.shown:
            self.write("\n")


def eta(done: int, total: int, elapsed: float) -> str:
    """The time left at the rate so far, as M:SS (H:MM:SS past an hour); '?' before any
    progress."""
    if done <= 0 or elapsed <= 0:
        return "?"
    left = round(max(total - done, 0) * elapsed / done)
    hours, rest = divmod(left, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60}:{rest % 60:02d}"


def command_line() -> list[str]:
    """The debugger's own command line (the plugin runs inside its process)."""
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().decode(errors="replace").split("\0")


def started_with(flags: tuple[str, ...]) -> bool:
    return any(arg in flags for arg in command_line())


def on_stderr(label: str, asked: bool, quiet: bool) -> ProgressLine:
    """A progress line on stderr, which stays the terminal while a front end mutes stdout;
    shown when asked for, or when not `quiet` and stderr is a terminal."""
    return ProgressLine(label, lambda text: os.write(2, text.encode()) and None,
                        enabled=asked or not (quiet or not os.isatty(2)))
