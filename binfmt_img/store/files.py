"""Packed files (img-checkpoint --pack) in a checkpoint store: each file's bytes stored once
as a blob of the store, whatever number of checkpoints carry it; a checkpoint's metadata
holds a reference (docs/FORMAT.md "packed file section", `blob`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from binfmt_img.formats.identity import PackedFile
from binfmt_img.formats.model import Image

if TYPE_CHECKING:
    from binfmt_img.store import Store


def by_reference(store: Store, image: Image) -> Image:
    """The image to write as a checkpoint's metadata: its packed files put in the store's
    blobs (a blob already there is not written again) and referred to by hash."""
    if not image.packed:
        return image
    refs = []
    for carried in image.packed:
        blob = carried.blob if carried.blob and store.has_blob(carried.blob) \
            else store.put_blob(carried.data(image))
        refs.append(dataclasses.replace(carried, blob=blob, by_reference=True))
    return dataclasses.replace(image, packed=refs)


def attach(store: Store, image: Image) -> None:
    """A loaded checkpoint's packed files read their bytes from the store's blobs."""
    for carried in image.packed:
        if carried.blob:
            carried.fetch = _fetcher(store, carried)


def _fetcher(store: Store, carried: PackedFile):
    return lambda: store.get_blob(carried.blob)
