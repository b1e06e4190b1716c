"""The progress line both front ends show: percentage, rate and the time left."""

from __future__ import annotations

from binfmt_img.live.progress import ProgressLine, eta


def test_eta_format() -> None:
    assert eta(0, 100, 5.0) == "?"
    assert eta(50, 100, 7.0) == "0:07"
    assert eta(10, 100, 10.0) == "1:30"
    assert eta(1, 1000, 10.0) == "2:46:30"
    assert eta(100, 100, 3.0) == "0:00"


def test_line_shows_eta_and_covers_a_longer_one() -> None:
    now = [0.0]
    written: list[str] = []
    line = ProgressLine("img-restore", written.append, clock=lambda: now[0])
    line(10, 100)  # before a second: nothing
    assert written == []
    now[0] = 2.0
    line(25, 100)
    assert written[-1] == "\rimg-restore:  25% (25 of 100 pages, 0 MB/s, ETA 0:06)", written
    now[0] = 4.0
    line(100, 100)
    assert written[-1].startswith("\rimg-restore: 100% (100 of 100 pages, 0 MB/s, ETA 0:00)")
    assert len(written[-1]) >= len(written[-2])
    line.finish()
    assert written[-1] == "\n"
