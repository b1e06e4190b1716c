"""The one exception every reader, validator and restore step raises for bad input."""

from __future__ import annotations


class ImageError(Exception):
    """An image (or a core file) that cannot be used; the message names what and where."""

    def __init__(self, what: str, offset: int | None = None) -> None:
        self.what = what
        self.offset = offset
        where = f" (at byte offset {offset:#x})" if offset is not None else ""
        super().__init__(f"{what}{where}")


class RestoreError(Exception):
    """A restore or dump step that failed in the inferior: names the step, address and errno."""
