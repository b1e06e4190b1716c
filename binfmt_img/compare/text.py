"""img-diff's text: one section per kind of change, quiet about what did not change."""

from __future__ import annotations

from typing import Any

from binfmt_img.compare.diff import Diff
from binfmt_img.formats.model import PAGE_SIZE

MAX_LINES = 20  # ranges listed per section before "... and N more"
MAX_VALUE = 200  # characters of a value shown in the text


def _range(item: dict[str, Any]) -> str:
    return f"{item['start']:#x}-{item['end']:#x}"


def _more(lines: list[str], total: int) -> list[str]:
    if total > len(lines):
        lines.append(f"  ... and {total - len(lines)} more")
    return lines


def _threads(diff: Diff) -> list[str]:
    lines = []
    for entry in diff.threads:
        if "only_in" in entry:
            where = diff.a if entry["only_in"] == "a" else diff.b
            lines.append(f"  thread {entry['tid']}: only in {where}")
            continue
        if not entry["registers"] and not entry.get("fpu_changed"):
            continue
        tid = (f"{entry['tid_a']} -> {entry['tid']}" if "tid_a" in entry else str(entry["tid"]))
        changes = ", ".join([f"{name} {old:#x} -> {new:#x}"
                             for name, (old, new) in entry["registers"].items()]
                            + (["FPU/vector state"] if entry.get("fpu_changed") else []))
        lines.append(f"  thread {tid}: {changes}")
    return ["registers:", *lines] if lines else ["registers: the same"]


def _vma(item: dict[str, Any]) -> str:
    return f"{_range(item)} {item['prot']}{'s' if item['shared'] else 'p'} {item['label']}".rstrip()


def _vmas(diff: Diff) -> list[str]:
    lines = [f"  + {_vma(v)}" for v in diff.vmas["added"]]
    lines += [f"  - {_vma(v)}" for v in diff.vmas["removed"]]
    for change in diff.vmas["changed"]:
        what = ", ".join(f"{k} {_show(change['a'][k])} -> {_show(change['b'][k])}"
                         for k in change["what"])
        lines.append(f"  ~ {_vma(change['b'])}: {what}")
    return ["VMAs:", *lines] if lines else ["VMAs: the same"]


def _show(value: Any) -> str:
    return f"{value:#x}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _pages(diff: Diff) -> list[str]:
    count = diff.changed_pages
    if not count:
        return ["pages: none changed"]
    ranges = [f"{s:#x}-{e:#x}" for s, e in diff.pages[:MAX_LINES]]
    tail = f" ... and {len(diff.pages) - MAX_LINES} more" if len(diff.pages) > MAX_LINES else ""
    return [f"pages: {count} changed ({count * PAGE_SIZE // 1024} KiB) in {len(diff.pages)} "
            f"range{'s' if len(diff.pages) != 1 else ''}: {', '.join(ranges)}{tail}"]


def _cut(value: str) -> str:
    """A long value cut in the text (--json has it whole)."""
    return value if len(value) <= MAX_VALUE else value[:MAX_VALUE] + "..."


def _variables(diff: Diff) -> list[str]:
    if not diff.variables:
        return []
    lines = []
    for v in diff.variables[:MAX_LINES]:
        kind = f" ({v['type']})" if v["type"] else ""
        lines.append(f"  {v['name']}{kind} at {v['address']:#x}: {_cut(v['old'])} -> "
                     f"{_cut(v['new'])}")
    return ["variables:", *_more(lines, len(diff.variables))]


def _heap(diff: Diff) -> list[str]:
    if not diff.heap:
        return []
    lines = [f"  {h['area']} {_range(h)}: {h['bytes']} bytes" for h in diff.heap[:MAX_LINES]]
    return ["heap and anonymous memory:", *_more(lines, len(diff.heap))]


def _stacks(diff: Diff) -> list[str]:
    lines = []
    for stack in diff.stacks:
        frames = ", ".join(
            (f"#{f['level']} {f['function']}" if f["level"] is not None else f["function"])
            + f" {f['bytes']} bytes" for f in stack["frames"])
        lines.append(f"  thread {stack['tid']} ({_range(stack)}): {frames}")
    return ["stacks:", *lines] if lines else []


def _other(diff: Diff) -> list[str]:
    if not diff.other:
        return []
    lines = [f"  {o['label']} {_range(o)}" for o in diff.other[:MAX_LINES]]
    return ["other file-backed memory:", *_more(lines, len(diff.other))]


def render(diff: Diff) -> str:
    lines = [f"img-diff: a = {diff.a}, b = {diff.b}"]
    for part in (_threads, _vmas, _pages, _variables, _heap, _stacks, _other):
        lines += part(diff)
    return "\n".join(lines)
