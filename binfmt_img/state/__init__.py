"""Kinds of process state beyond memory and registers, one module each.

Every module in this package defines `KIND`, a `Kind` that holds, side by side, the kind's
record (a construct Struct: its bytes in a v1 section of type 0x100 + id), how the dump
reads it from the stopped inferior, what the restore checks before the first change, and how
the restore puts it back. Adding a kind is adding one module here: the dump, the restore and
img-info find it by walking this package. The file format below knows only the sections'
framing (binfmt_img.formats.v1 keeps them raw in `Image.raw_states`); `decode` and `put`
here turn them into values and back, so formats never imports this layer.

The dump calls `dump(plan)` with the scratch area open and the main thread selected
(`plan.pid`, `plan.threads`, `plan.report.warnings`); it returns the value to record, or None
for nothing. A hook that needs system calls made by the process itself is a generator (see
umask.py): it queues them through `plan.reads(thread)` (without a thread: the process's, made
by the first thread), `yield`s, and reads their results after the yield (`.value(ref)`,
`.read(ref, size)`); a call made with `.call` that failed is raised at the yield. Every
thread's calls of all the hooks run in one resume (binfmt_img/live/rounds.py); a hook whose
calls depend on earlier results yields again, once per round, not once per thread.

The restore calls `check(plan, value)` while nothing has changed yet (append to
`plan.report.warnings`, or to `plan.losses` for state that cannot come back: the restore is
then refused unless the user accepts the loss), and `restore(plan, value)` in its phase:
"process" (memory and signal handlers are in place, before the other threads exist), or "late"
(every thread exists, just before the registers; timers go there so their remaining time starts
as late as possible; `order` sorts the kinds of a phase). `restore_thread(plan, value, thread)`
runs for every thread of the image with that thread selected (main thread first).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from construct import ConstructError

from binfmt_img.errors import ImageError
from binfmt_img.formats import fastbuild
from binfmt_img.formats.v1 import SECTION_STATE_BASE

if TYPE_CHECKING:
    from binfmt_img.formats.model import Image, Thread
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

SECTION_BASE = SECTION_STATE_BASE  # v1 section type of kind id 0; ids are never reused
PHASES = ("process", "late")
# Signals are queued after everything else: one the process does not block is delivered by
# the next step, which must be the restore's last.
ORDER_MAKE, ORDER_LIMIT, ORDER_ARM, ORDER_QUEUE = 10, 80, 90, 99


def _nothing(_plan: Any, _value: Any) -> None:
    return None


@dataclass(frozen=True)
class Kind:
    id: int
    name: str  # a word for messages and img-info: "umask", "itimers"
    record: Any  # construct Struct of the recorded value
    dump: Callable[[DumpPlan], Any]
    restore: Callable[[RestorePlan, Any], None] = _nothing
    check: Callable[[RestorePlan, Any], None] = _nothing
    restore_thread: Callable[[RestorePlan, Any, Thread], None] | None = None
    phase: str = "process"
    describe: Callable[[Any], str] | None = None  # one line for img-info
    # Within a phase, lower runs first: descriptors made first, limits lowered once what
    # they limit is in place, timers armed late, pending signals queued last (ORDER_*).
    order: int = 50

    @property
    def section(self) -> int:
        return SECTION_BASE + self.id


def _discover() -> tuple[Kind, ...]:
    kinds: dict[int, Kind] = {}
    for module in pkgutil.iter_modules(__path__):
        kind = getattr(importlib.import_module(f"{__name__}.{module.name}"), "KIND", None)
        if kind is None:
            continue
        assert kind.id not in kinds, f"state kind id {kind.id} used twice"
        assert kind.phase in PHASES, kind
        kinds[kind.id] = kind
    return tuple(kinds[i] for i in sorted(kinds))


KINDS: tuple[Kind, ...] = _discover()
BY_SECTION = {kind.section: kind for kind in KINDS}
BY_NAME = {kind.name: kind for kind in KINDS}


def decode(image: Image) -> Image:
    """Fill `image.states` from its raw sections (again: the values are the sections'), and
    `image.unknown_states` with the types of kinds this version does not know. A record that
    does not parse is an ImageError at its section's offset, before any change. Decoding
    the same sections into the same values again is skipped (a record of one entry per VMA
    takes a while to parse)."""
    done = image.__dict__.get("_decoded")
    if done is not None and _unchanged(image, *done):
        return image
    image.states, image.unknown_states = {}, []
    for section, offset, payload in image.raw_states:
        kind = BY_SECTION.get(section)
        if kind is None:
            image.unknown_states.append(section)
            continue
        if kind.name in image.states:
            raise ImageError(f"second {kind.name} section", offset)
        try:
            image.states[kind.name] = fastbuild.parse(kind.record, payload)
        except (ConstructError, UnicodeDecodeError) as error:
            reason = str(error).splitlines()[0][:120]
            raise ImageError(f"malformed {kind.name} state section: {reason}", offset) from None
    image.__dict__["_decoded"] = (list(image.raw_states), dict(image.states))
    return image


def _unchanged(image: Image, raws: list, values: dict[str, Any]) -> bool:
    """The image still holds the very sections and values decode() made."""
    return (len(raws) == len(image.raw_states)
            and all(a is b for a, b in zip(raws, image.raw_states))
            and image.states.keys() == values.keys()
            and all(image.states[name] is value for name, value in values.items()))


def put(image: Image, kind: Kind, value: Any) -> None:
    """Record `value` for `kind`: as a value, and as the section a v1 file will carry."""
    image.raw_states = [raw for raw in image.raw_states if raw[0] != kind.section]
    image.raw_states.append((kind.section, 0, fastbuild.build(kind.record, value)))
    image.states[kind.name] = value
