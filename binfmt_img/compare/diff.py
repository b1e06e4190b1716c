"""img-diff: what changed between two sides (images, checkpoints, the live process):
registers per thread, VMAs, pages, and the changed bytes said the way a debugger user thinks
of them: global variables by name, heap ranges, stack frames by function."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from binfmt_img.compare.sides import Side
from binfmt_img.compare.variables import Values, Variables, plain_values
from binfmt_img.formats.model import (
    ALL_REGISTERS,
    MAP_ANONYMOUS,
    MAP_TYPE,
    PAGE_SIZE,
    PROT_EXEC,
    Thread,
    Vma,
    prot_text,
)
from binfmt_img.formats.symbols import Symbols

CHUNK = 64  # pages are compared in chunks of this many bytes, then byte by byte
MERGE_GAP = 16  # changed bytes this close together make one range
MAX_FRAMES = 256
MAX_STACK_SCAN = 1 << 20


@dataclass
class Span:
    """Bytes [start, end) that differ."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class Frame:
    function: str
    low: int
    high: int
    changed: int = 0  # bytes
    spans: list[Span] = field(default_factory=list)


@dataclass
class Diff:
    a: str
    b: str
    threads: list[dict[str, Any]] = field(default_factory=list)
    vmas: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"added": [], "removed": [], "changed": []})
    pages: list[tuple[int, int]] = field(default_factory=list)  # changed page ranges
    variables: list[dict[str, Any]] = field(default_factory=list)
    heap: list[dict[str, Any]] = field(default_factory=list)
    stacks: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)  # changes in no area above

    @property
    def changed_pages(self) -> int:
        return sum((end - start) // PAGE_SIZE for start, end in self.pages)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "threads": self.threads, "vmas": self.vmas,
                "pages": {"changed": self.changed_pages,
                          "ranges": [{"start": s, "end": e} for s, e in self.pages]},
                "variables": self.variables, "heap": self.heap, "stacks": self.stacks,
                "other": self.other}


def compare(a: Side, b: Side, values: Values | None = None) -> Diff:
    """Every difference between a and b; `values` (the debugger) types variables."""
    out = Diff(a.label, b.label)
    out.threads = _threads(a.threads, b.threads)
    out.vmas = _vmas(a.vmas, b.vmas)
    spans = list(_changed_spans(a, b, out))
    _attribute(a, b, spans, out, values)
    return out


# --- registers and VMAs ---------------------------------------------------------------------

def _threads(old: list[Thread], new: list[Thread]) -> list[dict[str, Any]]:
    """Threads matched by tid; when no tid matches (another process), by position."""
    by_tid = {t.tid: t for t in new}
    if not any(t.tid in by_tid for t in old):
        pairs = list(zip(old, new, strict=False))
        rest_old, rest_new = old[len(pairs):], new[len(pairs):]
    else:
        pairs = [(t, by_tid[t.tid]) for t in old if t.tid in by_tid]
        rest_old = [t for t in old if t.tid not in by_tid]
        tids = {t.tid for t in old}
        rest_new = [t for t in new if t.tid not in tids]
    out: list[dict[str, Any]] = []
    for before, after in pairs:
        changed = {name: [before.registers[name], after.registers[name]] for name in ALL_REGISTERS
                   if name in before.registers and name in after.registers
                   and before.registers[name] != after.registers[name]}
        entry: dict[str, Any] = {"tid": after.tid, "registers": changed}
        if before.xsave is not None and after.xsave is not None:
            entry["fpu_changed"] = before.xsave.data != after.xsave.data  # x87, SSE, AVX
        if before.tid != after.tid:
            entry["tid_a"] = before.tid
        out.append(entry)
    out += [{"tid": t.tid, "only_in": "a"} for t in rest_old]
    out += [{"tid": t.tid, "only_in": "b"} for t in rest_new]
    return out


def _vma_json(vma: Vma) -> dict[str, Any]:
    return {"start": vma.start, "end": vma.end, "prot": prot_text(vma.prot),
            "shared": vma.is_shared, "offset": vma.pgoff * PAGE_SIZE, "label": vma.label}


def _vma_key(vma: Vma) -> tuple[Any, ...]:
    # The sharing type and anonymity only: a live process's maps show no other flag.
    return (vma.end, vma.prot, vma.flags & (MAP_TYPE | MAP_ANONYMOUS),
            vma.pgoff if vma.path else 0, vma.label)


def _vmas(old: list[Vma], new: list[Vma]) -> dict[str, list[dict[str, Any]]]:
    before, after = {v.start: v for v in old}, {v.start: v for v in new}
    out: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": []}
    for start in sorted(before.keys() | after.keys()):
        a, b = before.get(start), after.get(start)
        if a is None and b is not None:
            out["added"].append(_vma_json(b))
        elif b is None and a is not None:
            out["removed"].append(_vma_json(a))
        elif a is not None and b is not None and _vma_key(a) != _vma_key(b):
            old_json, new_json = _vma_json(a), _vma_json(b)
            out["changed"].append({"start": start, "a": old_json, "b": new_json,
                                   "what": [k for k in old_json if old_json[k] != new_json[k]]})
    return out


# --- changed bytes --------------------------------------------------------------------------

def _changed_spans(a: Side, b: Side, out: Diff) -> Iterator[Span]:
    """The changed bytes of every page mapped on both sides (merged when close), recording
    the changed pages in out.pages."""
    pages = sorted(set(a.candidates()) | set(b.candidates()))
    for vaddr in pages:
        va, vb = a.vma_at(vaddr), b.vma_at(vaddr)
        if va is None or vb is None:
            continue  # an added or removed area: said with the VMAs
        key = a.page_key(vaddr)
        if key is not None and key == b.page_key(vaddr):
            continue  # the same stored page: not read
        old, new = a.page(vaddr), b.page(vaddr)
        a.forget(vaddr)
        b.forget(vaddr)
        if old is None or new is None or old == new:
            continue
        if out.pages and out.pages[-1][1] == vaddr:
            out.pages[-1] = (out.pages[-1][0], vaddr + PAGE_SIZE)
        else:
            out.pages.append((vaddr, vaddr + PAGE_SIZE))
        yield from _page_spans(vaddr, old, new)


def _page_spans(vaddr: int, old: bytes, new: bytes) -> Iterator[Span]:
    """Changed bytes of a page: per chunk of CHUNK bytes, from its first to its last changed
    byte (finer would cost a Python step per byte), chunks merged when close."""
    current: Span | None = None
    for at in range(0, PAGE_SIZE, CHUNK):
        if old[at:at + CHUNK] == new[at:at + CHUNK]:
            continue
        first, last = at, at + CHUNK - 1
        if old[first] == new[first]:  # (checked first: a chunk changed throughout is common)
            first = next(i for i in range(at, at + CHUNK) if old[i] != new[i])
        if old[last] == new[last]:
            last = next(i for i in range(last, first - 1, -1) if old[i] != new[i])
        if current is not None and vaddr + first - current.end <= MERGE_GAP:
            current.end = vaddr + last + 1
        else:
            if current is not None:
                yield current
            current = Span(vaddr + first, vaddr + last + 1)
    if current is not None:
        yield current


def _merged(spans: list[Span], gap: int = MERGE_GAP) -> list[Span]:
    out: list[Span] = []
    for span in spans:
        if out and span.start - out[-1].end <= gap:
            out[-1] = Span(out[-1].start, max(out[-1].end, span.end))
        else:
            out.append(Span(span.start, span.end))
    return out


# --- what the changed bytes are --------------------------------------------------------------

def _attribute(a: Side, b: Side, spans: list[Span], out: Diff, values: Values | None) -> None:
    """Each changed span to a stack frame, a variable, the heap or 'other'."""
    stacks = _stacks(a, b)
    rest = []
    for span in spans:
        if not _to_stack(stacks, span):
            rest.append(span)
    out.stacks = [_stack_json(s) for s in stacks
                  if s["below"].changed or any(f.changed for f in s["frames"])]
    rest = _variables(a, b, rest, out, values)
    by_area: dict[int, list[Span]] = {}
    for span in rest:
        vma = b.vma_at(span.start)
        assert vma is not None
        if vma.path is None:
            by_area.setdefault(vma.start, []).append(span)
        else:
            out.other.append({"start": span.start, "end": span.end, "label": vma.label})
    for start, area in sorted(by_area.items()):
        vma = b.vma_at(start)
        assert vma is not None
        for span in _merged(area, 64):
            out.heap.append({"start": span.start, "end": span.end, "bytes": span.size,
                             "area": vma.name or f"anonymous {vma.start:#x}"})


def _variables(a: Side, b: Side, spans: list[Span], out: Diff,
               values: Values | None) -> list[Span]:
    """Report the variables the spans touch; returns the spans no variable holds."""
    paths = set()
    for span in spans:
        vma = b.vma_at(span.start)
        owner = vma if vma is not None and vma.path else _file_before(b, vma)
        if owner is not None and owner.path:
            paths.add(owner.path)
    if not paths:
        return spans
    table = Variables(b.vmas, paths)
    seen = set()
    rest = []
    for span in spans:
        found = table.overlapping(span.start, span.end)
        if not found:
            rest.append(span)
        for variable in found:
            if variable in seen:
                continue
            seen.add(variable)
            old, new = a.read(variable.address, variable.size), b.read(variable.address,
                                                                       variable.size)
            if old is None or new is None or old == new:
                continue
            out.variables.append(_variable_json(variable, old, new, values))
    return rest


def _file_before(side: Side, vma: Vma | None) -> Vma | None:
    """The file mapping just below an anonymous area: its .bss, past the file's end."""
    if vma is None:
        return None
    return next((v for v in side.vmas if v.end == vma.start and v.path), None)


def _variable_json(variable: Any, old: bytes, new: bytes, values: Values | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": variable.name, "address": variable.address,
                             "size": variable.size, "file": variable.path, "type": None}
    typed_old = typed_new = None
    if values is not None:
        typed_old = values.format_value(variable.name, variable.path, old)
        typed_new = values.format_value(variable.name, variable.path, new)
    if typed_old is not None and typed_new is not None:
        entry.update(type=typed_new[1], old=typed_old[0], new=typed_new[0])
    else:
        entry["old"], entry["new"] = plain_values(old, new)
    return entry


# --- stacks ---------------------------------------------------------------------------------

def _stacks(a: Side, b: Side) -> list[dict[str, Any]]:
    """Each thread's stack area (from the side the thread is on, b first); its frames are
    found when a change falls in it."""
    out = []
    threads = [(t, b) for t in b.threads] + [(t, a) for t in a.threads
                                            if t.tid not in {u.tid for u in b.threads}]
    for thread, side in threads:
        rsp, rip = thread.registers.get("rsp"), thread.registers.get("rip")
        if rsp is None or rip is None:
            continue
        vma = side.vma_at(rsp)
        if vma is None:
            continue
        out.append({"tid": thread.tid, "start": vma.start, "end": vma.end, "rsp": rsp,
                    "frames": [], "find": (side, rip, rsp, vma),
                    "below": Frame("(below the stack pointer)", vma.start, rsp)})
    return out


def _frames_of(tid: int, side: Side, rip: int, rsp: int, vma: Vma) -> list[Frame]:
    """By the debugger's unwinder where the side is live and the debugger offers it."""
    unwound = getattr(side, "unwound", None)
    found = unwound(tid) if unwound is not None else None
    if not found:
        return _frames(side, rip, rsp, vma)
    frames = [Frame(name, sp, sp) for sp, name in found if vma.start <= sp < vma.end]
    for frame, outer in zip(frames, frames[1:], strict=False):
        frame.high = max(frame.low, outer.low)
    if frames:
        frames[-1].high = vma.end
    return frames or _frames(side, rip, rsp, vma)


def _frames(side: Side, rip: int, rsp: int, vma: Vma) -> list[Frame]:
    """Frames found by return addresses: a stack word pointing just after a call
    instruction in executable memory. Frame 0 is the function at rip."""
    symbols = Symbols(side)  # type: ignore[arg-type] # it reads .vmas only
    code = [v for v in side.vmas if v.prot & PROT_EXEC]
    frames = [Frame(_function(symbols, rip), rsp, rsp)]
    top = min(vma.end, rsp + MAX_STACK_SCAN)
    slot = rsp
    while slot + 8 <= top and len(frames) < MAX_FRAMES:
        value = side.word(slot)
        if value is not None and any(v.start <= value < v.end for v in code) \
                and _after_call(side, value):
            frames[-1].high = slot + 8
            frames.append(Frame(_function(symbols, value), slot + 8, slot + 8))
        slot += 8
    frames[-1].high = vma.end
    return frames


def _after_call(side: Side, addr: int) -> bool:
    """The bytes before addr end a call: e8 rel32, or ff /2 with 0, 1, 2, 4 or 5 bytes of
    operand after the modrm byte."""
    before = side.read(addr - 7, 7)
    if before is None:
        return False
    if before[2] == 0xE8:
        return True
    return any(before[5 - n] == 0xFF and before[6 - n] & 0x38 == 0x10 for n in (0, 1, 2, 4, 5))


def _function(symbols: Symbols, addr: int) -> str:
    name = symbols.name(addr)
    return name.split("+")[0] if name else f"{addr:#x}"


def _to_stack(stacks: list[dict[str, Any]], span: Span) -> bool:
    for stack in stacks:
        if not stack["start"] <= span.start < stack["end"]:
            continue
        if stack["find"] is not None:
            stack["frames"], stack["find"] = _frames_of(stack["tid"], *stack["find"]), None
        frames = [stack["below"], *stack["frames"]]
        for frame in frames:
            low, high = max(span.start, frame.low), min(span.end, frame.high)
            if low < high:
                frame.changed += high - low
                frame.spans.append(Span(low, high))
        return True
    return False


def _stack_json(stack: dict[str, Any]) -> dict[str, Any]:
    frames = [stack["below"], *stack["frames"]]
    return {"tid": stack["tid"], "start": stack["start"], "end": stack["end"],
            "frames": [{"function": f.function, "level": i - 1 if i else None,
                        "low": f.low, "high": f.high, "bytes": f.changed,
                        "ranges": [{"start": s.start, "end": s.end} for s in f.spans]}
                       for i, f in enumerate(frames) if f.changed]}
