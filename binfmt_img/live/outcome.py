"""The one line a restore that did not finish ends with: what happened, and what state the
inferior is in, for both front ends."""

from __future__ import annotations


def failure_line(error: BaseException, changed: bool, started: bool) -> str:
    """`changed`: the restore had begun to change the inferior; `started`: img-restore
    started that process for the restore (the caller kills it either way)."""
    interrupted = isinstance(error, KeyboardInterrupt) or str(error) == "Quit"
    what = "interrupted" if interrupted else str(error)
    if not changed:
        return what + ("" if started else "; the inferior was not changed")
    if started:
        return f"{what}; the process started for the restore was half-restored and is killed"
    return f"{what}; the inferior is half-restored and no longer usable: kill it"
