"""img-bisect: the first checkpoint between A and B where an expression is true, found with
as few restores as a binary search needs. The debugger restores a checkpoint and evaluates
the user's expression (hooks); this module only chooses which checkpoint comes next."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from binfmt_img.errors import ImageError

Entry = TypeVar("Entry")


@dataclass
class Step(Generic[Entry]):
    entry: Entry
    value: str  # the expression's value as the debugger printed it
    true: bool


@dataclass
class Outcome(Generic[Entry]):
    steps: list[Step[Entry]] = field(default_factory=list)
    first: Entry | None = None  # the first checkpoint where the expression is true
    note: str | None = None  # an assumption that failed: true at A, false at B
    restored: Entry | None = None  # where the process is left

    @property
    def restores(self) -> int:
        return len(self.steps) + (self.restored is not None
                                  and (not self.steps or self.steps[-1].entry is not self.restored))


def bisect(entries: Sequence[Entry], restore: Callable[[Entry], None],
           evaluate: Callable[[], tuple[bool, str]],
           on_step: Callable[[Step[Entry]], None] | None = None) -> Outcome[Entry]:
    """Search entries (A first, B last, in checkpoint order) for the first where evaluate()
    is true, restoring each one looked at; the process is left at that one (or at B when the
    expression is false there too)."""
    out: Outcome[Entry] = Outcome()

    def probe(index: int) -> bool:
        restore(entries[index])
        out.restored = entries[index]
        true, value = evaluate()
        step = Step(entries[index], value, true)
        out.steps.append(step)
        if on_step is not None:
            on_step(step)
        return true

    if not entries:
        out.note = "no checkpoints between A and B"
        return out
    if probe(0):
        out.first = entries[0]
        out.note = "the expression is already true at A: A is the first"
        return out
    if len(entries) == 1:
        out.note = "A and B are the same checkpoint, and the expression is false there"
        return out
    last = len(entries) - 1
    if not probe(last):
        out.note = "the expression is false at B too: no checkpoint from A to B makes it true"
        return out
    low, high = 0, last  # false at low, true at high
    while high - low > 1:
        middle = (low + high) // 2
        if probe(middle):
            high = middle
        else:
            low = middle
    out.first = entries[high]
    if out.restored is not entries[high]:
        restore(entries[high])
        out.restored = entries[high]
    return out


def asks_help(text: str) -> bool:
    """-h or --help among img-bisect's options (before A: EXPR may hold anything)."""
    value = False  # the word is --store's directory
    for word in text.split():
        if not value and word in ("-h", "--help"):
            return True
        if not value and not word.startswith("-"):
            return False  # A: the options are over
        value = word == "--store"
    return False


def split_arguments(text: str) -> tuple[dict[str, str | bool], list[str], str]:
    """img-bisect's words: `[--store DIR] [--accept-loss] A B EXPR...`: the options, A and B
    (shell-like words), and the expression as the user typed it (quotes and all)."""
    import shlex

    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    options: dict[str, str | bool] = {}
    words: list[str] = []
    while len(words) < 2:
        word = lexer.get_token()
        if word is None:
            break
        if word == "--store" and not words:
            store = lexer.get_token()
            if store is None:
                raise ValueError("--store needs a directory")
            options["store"] = store
        elif word.startswith("--store=") and not words:
            options["store"] = word.removeprefix("--store=")
        elif word == "--accept-loss" and not words:
            options["accept_loss"] = True
        elif word.startswith("--") and not words:
            raise ValueError(f"unknown option {word}")
        else:
            words.append(word)
    rest = lexer.instream.read().strip()  # type: ignore[union-attr]
    return options, words, rest


# ---- what img-bisect says, the same in both debuggers ----

def checkpoints_between(store: Any, first: str, last: str) -> list[Any]:
    """The store's checkpoints from `first` to `last` (numbers or names), in order."""
    a, b = store.resolve(first), store.resolve(last)
    if a.number > b.number:
        raise ImageError(f"checkpoint {a.number} comes after {b.number}: give the earlier first")
    return [e for e in store.entries() if a.number <= e.number <= b.number]


def entry_name(entry: Any) -> str:
    name = getattr(entry, "name", None)
    return f"checkpoint {entry.number}" + (f" ({name})" if name else "")


def header_line(entries: Sequence[Any]) -> str:
    return (f"img-bisect: {len(entries)} checkpoints from {entries[0].number} "
            f"to {entries[-1].number}")


def step_line(expression: str, step: Step[Any]) -> str:
    return (f"img-bisect: {entry_name(step.entry)}: {expression} = {step.value} "
            f"({'true' if step.true else 'false'})")


def outcome_lines(outcome: Outcome[Any]) -> list[str]:
    lines = [f"img-bisect: {outcome.note}"] if outcome.note else []
    if outcome.first is not None:
        lines.append(f"img-bisect: first true at {entry_name(outcome.first)}, after "
                     f"{outcome.restores} restores; the process is restored there")
    elif outcome.restored is not None:
        lines.append(f"img-bisect: the process is left at {entry_name(outcome.restored)}")
    return lines
