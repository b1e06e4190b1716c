"""What A and B name: an image file, a checkpoint of the store (number or name), or `live`."""

from __future__ import annotations

import os
from typing import Any

from binfmt_img.compare.sides import ImageSide, LiveSide, Side
from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file
from binfmt_img.live.target import Target

LIVE = "live"


def open_store(store: str | None, cwd: str | None = None) -> Any:
    """The checkpoint store: --store DIR, else $BINFMT_IMG_STORE, else ./img-checkpoints."""
    from binfmt_img.store import Store

    path = Store.default_path(cwd or os.getcwd(), store)
    if not os.path.isdir(path):
        raise ImageError(f"{path}: no checkpoint store there")
    return Store(path, create=False)


def open_side(ref: str, target: Target | None, store: str | None,
              cwd: str | None = None) -> Side:
    """A side for `ref`: `live` needs a debugger's target; a path that exists is an image
    file (or an ELF core); anything else a checkpoint of the store."""
    if ref == LIVE:
        if target is None:
            raise ImageError("`live` needs a debugger: run img-diff in GDB or LLDB")
        return LiveSide(target)
    path = os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(ref)))
    if os.path.exists(path):
        return ImageSide(image_file.load_any(path), os.path.basename(path))
    entry_store = open_store(store, cwd)
    entry = entry_store.resolve(ref)
    label = f"checkpoint {entry.number}" + (f" ({entry.name})" if entry.name else "")
    return ImageSide(entry_store.load(entry.number), label)
