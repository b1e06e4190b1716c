"""The descriptors section (state kind 40) and its fd kinds' records: written, read back,
described; an unknown fd kind is a loss, a damaged record an ImageError."""

from __future__ import annotations

import json

import pytest
from synthetic import encode, make_image

from binfmt_img import fdkinds, state
from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file
from binfmt_img.report import report_json, report_text
from binfmt_img.state import descriptors

VALUES = {
    "pipe": {"inode": 7, "size": 65536, "path": "", "data": b"buffered"},
    "eventfd": {"count": 3, "semaphore": True},
    "timerfd": {"clock": 1, "settime_flags": 0, "ticks": 2, "value_sec": 0,
                "value_nsec": 5000, "interval_sec": 1, "interval_nsec": 0},
    "epoll": {"watches": [{"fd": 4, "events": 0x19, "data": 0x1111}]},
    "signalfd": {"mask": 0x200},
    "memfd": {"inode": 9, "device": 1, "name": "m", "seals": 3, "size": 2, "data": b"hi"},
    "unix": {"inode": 11, "peer": 11, "type": 1, "queued": [b"a", b"bc"]},
    "inotify": {"watches": [{"wd": 1, "mask": 0x100, "path": "/tmp"}]},
    "terminal": {"path": "/dev/pts/0", "rdev": 0x8800, "ctime_ns": 1},
    "lost": {"what": "socket:[5], a TCP socket"},
}


def _entry(fd: int, kind: str, value: dict) -> dict:
    record = next(k for k in fdkinds.FDKINDS if k.name == kind)
    return {"fd": fd, "kind": record.id, "flags": 0o2004002, "pos": 0,
            "data": record.record.build(value)}


def _round_trip(entries: list[dict]):  # noqa: ANN202
    image = make_image("v1")
    state.put(image, state.BY_NAME["descriptors"], {"entries": entries})
    return state.decode(image_file.parse(memoryview(encode(image, "v1"))))


def test_every_fd_kind_written_and_read_back() -> None:
    entries = [_entry(3 + i, kind, value) for i, (kind, value) in enumerate(VALUES.items())]
    image = _round_trip(entries)
    got = descriptors.entries(image.states["descriptors"])
    assert [fdkinds.BY_ID[e.kind].name for e in got] == list(VALUES)
    for entry, value in zip(got, VALUES.values()):
        assert {k: entry.value[k] for k in value} == value
    text = report_text(image)
    assert "fd 3 pipe (pipe, 8 bytes)" in text and "fd 12 lost (socket:[5]" in text, text
    json.dumps(report_json(image), default=str)


def test_unknown_fd_kind_is_lost_and_damage_refused() -> None:
    image = _round_trip([{"fd": 3, "kind": 999, "flags": 0, "pos": 0, "data": b"x"}])
    (entry,) = descriptors.entries(image.states["descriptors"])
    assert entry.kind == 0 and "fd kind 999, unknown" in entry.value.what
    image = _round_trip([{"fd": 3, "kind": 2, "flags": 0, "pos": 0, "data": b"\x01"}])
    with pytest.raises(ImageError, match="fd 3 \\(eventfd\\)"):
        descriptors.entries(image.states["descriptors"])
