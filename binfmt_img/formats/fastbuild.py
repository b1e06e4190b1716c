"""Compiled construct records for the sections that grow with the process (one record per
VMA): construct's compiler makes Python source for a Struct, about 3-4 times faster than the
interpreted build and parse. The plain Struct stays the reference: a record the compiler
cannot take, or data the compiled parser stumbles on, goes through it (so a damaged image
gets the usual error message)."""

from __future__ import annotations

from typing import Any

from construct import Construct

_COMPILED: dict[int, tuple[Construct, Construct | None]] = {}
# Compiling a record costs a few milliseconds: worth it only for large sections.
LARGE_BYTES, LARGE_ITEMS = 1 << 16, 1000


def _large(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) >= LARGE_ITEMS
    if isinstance(value, dict):
        return any(isinstance(v, (list, tuple)) and len(v) >= LARGE_ITEMS
                   for v in value.values())
    return False


def _compiled(record: Construct) -> Construct | None:
    hit = _COMPILED.get(id(record))
    if hit is None or hit[0] is not record:
        try:
            fast: Construct | None = record.compile()
        except Exception:  # noqa: BLE001 - construct raises several kinds: use the plain one
            fast = None
        hit = _COMPILED[id(record)] = (record, fast)
    return hit[1]


def build(record: Construct, value: Any) -> bytes:
    fast = _compiled(record) if _large(value) else None
    if fast is not None:
        try:
            return fast.build(value)
        except Exception:  # noqa: BLE001 - the plain build says what is wrong
            pass
    return record.build(value)


def parse(record: Construct, data: bytes) -> Any:
    fast = _compiled(record) if len(data) >= LARGE_BYTES else None
    if fast is not None:
        try:
            return fast.parse(data)
        except Exception:  # noqa: BLE001 - the plain parse says what is wrong
            pass
    return record.parse(data)
