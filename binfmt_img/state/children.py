"""The process's children: not in the image (one process is), but recorded so that nobody
is misled. The dump names them in a warning; the restore refuses, naming them, unless the
user accepts the loss (then `waitpid` finds no child, as it would for a process whose
children were reaped elsewhere). A child is any process whose parent is one of the threads
(/proc/PID/task/TID/children, or a scan of /proc where the kernel lacks that file)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from construct import GreedyBytes, Int8ul, Int32ul, Prefixed, PrefixedArray, Struct

from binfmt_img.errors import RestoreError
from binfmt_img.live.procfs import stat_fields
from binfmt_img.state import Kind
from binfmt_img.state._proc import printable

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

STATES = {"Z": "a zombie", "T": "stopped", "t": "traced"}
Child = Struct("pid" / Int32ul, "state" / Int8ul, "comm" / Prefixed(Int8ul, GreedyBytes))
Record = Struct("children" / PrefixedArray(Int32ul, Child))


def _child_pids(pid: int) -> list[int]:
    task = f"/proc/{pid}/task"
    listed = [f"{task}/{tid}/children" for tid in os.listdir(task)]
    if all(os.path.exists(path) for path in listed):
        pids: set[int] = set()
        for path in listed:
            with open(path) as f:
                pids.update(int(p) for p in f.read().split())
        return sorted(pids)
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(stat_fields(int(name))[4]) == pid:  # field 4: ppid
                    found.append(int(name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return sorted(found)


def _child(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    comm = text[text.index(b"(") + 1:text.rindex(b")")]
    state = text[text.rindex(b")") + 2:][:1]
    return {"pid": pid, "state": state[0] if state else ord("?"), "comm": comm[:64]}


def _label(child) -> str:
    state = STATES.get(chr(child.state) if child.state < 128 else "?")
    return f"{child.pid} ({printable(child.comm)}{', ' + state if state else ''})"


def dump(plan: DumpPlan) -> dict | None:
    children = [c for c in (_child(pid) for pid in _child_pids(plan.pid)) if c is not None]
    if not children:
        return None
    value = Record.parse(Record.build({"children": children}))
    plan.report.warnings.append("children are not in the image: " + ", ".join(
        f"pid {_label(c)}" for c in value.children))
    return value


def check(plan: RestorePlan, value) -> None:
    if len(value.children) > 1 << 22:
        raise RestoreError("the image's list of children is not valid")
    for child in value.children:
        plan.losses.append(f"child process {_label(child)}")


def describe(value) -> str:
    return ", ".join(f"pid {_label(c)}" for c in value.children)


KIND = Kind(id=34, name="children", record=Record, dump=dump, check=check, describe=describe)
