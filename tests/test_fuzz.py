"""Damaged images: parse either succeeds or raises ImageError, never anything else; and whatever
parses can be reported on."""

from __future__ import annotations

import synthetic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binfmt_img import report
from binfmt_img.errors import ImageError
from binfmt_img.formats import image_file, v1
from binfmt_img.formats.model import PAGE_SIZE, Image

V0 = synthetic.image_bytes("v0")
V1 = synthetic.image_bytes("v1")
V0_META = 8 + 208 + 112 + 40 * 8 + 64  # header, registers, mm, VMAs and the first page address
V1_META = synthetic.sections(V1)[5][2]  # where page data starts

V1_META_END = max(e[2] + e[3] for e in synthetic.sections(V1)[:5])  # then zero padding


def fast(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def parse_or_refuse(data: bytes) -> Image | None:
    """Parse; only ImageError may come out. A parsed image must also be reportable."""
    try:
        image = image_file.parse(memoryview(data))
    except ImageError as error:
        assert str(error)
        return None
    report.report_json(image, report.bad_runs(image))
    report.report_text(image, verify=True)
    return image


def offsets(data: bytes, metadata_end: int) -> st.SearchStrategy[int]:
    """Any byte, with the metadata (where parsing decides things) weighted up."""
    return st.one_of(st.integers(0, metadata_end - 1), st.integers(0, len(data) - 1))


def flipped(data: bytes, at: int, mask: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= mask
    return bytes(damaged)


def overwritten(data: bytes, patches: list[tuple[int, bytes]]) -> bytes:
    damaged = bytearray(data)
    for at, new in patches:
        damaged[at:at + len(new)] = new
    return bytes(damaged[:len(data)])


@fast(300)
@given(st.data())
def test_truncation(data: st.DataObject) -> None:
    image = data.draw(st.sampled_from([V0, V1]))
    size = data.draw(st.integers(0, len(image) - 1))
    assert parse_or_refuse(image[:size]) is None  # every proper prefix is damaged


@fast(900)
@given(at=offsets(V0, V0_META), mask=st.integers(1, 255))
def test_v0_byte_flip(at: int, mask: int) -> None:
    parse_or_refuse(flipped(V0, at, mask))


@fast(900)
@given(at=offsets(V1, V1_META), mask=st.integers(1, 255))
def test_v1_byte_flip(at: int, mask: int) -> None:
    image = parse_or_refuse(flipped(V1, at, mask))
    if image is not None:  # only page data (or padding) goes unnoticed by parse...
        assert at >= V1_META_END
        bad = v1.verify_pages(image)  # ...and --verify catches the page data
        assert len(bad) == any(run.offset <= at < run.offset + run.count * PAGE_SIZE
                               for run in image.runs)


def patches(data: bytes, metadata_end: int) -> st.SearchStrategy[list[tuple[int, bytes]]]:
    return st.lists(st.tuples(offsets(data, metadata_end), st.binary(min_size=1, max_size=16)),
                    min_size=1, max_size=6)


@fast(300)
@given(st.data())
def test_multi_byte_overwrites(data: st.DataObject) -> None:
    image, end = data.draw(st.sampled_from([(V0, V0_META), (V1, V1_META)]))
    parse_or_refuse(overwritten(image, data.draw(patches(image, end))))


@fast(900)
@given(st.data())
def test_v1_damage_behind_correct_checksums(data: st.DataObject) -> None:
    """Checksums stop most v1 damage at the door; recompute them to reach the section parsers."""
    table = synthetic.sections(V1)
    kind = data.draw(st.sampled_from([e[0] for e in table if e[0] != v1.SECTION_PAGE_DATA]))
    size = next(e[3] for e in table if e[0] == kind)
    edits = data.draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)),
                               min_size=1, max_size=3))
    cut = data.draw(st.one_of(st.none(), st.integers(0, size)))

    def damage(payload: bytes) -> bytes:
        for at, mask in edits:
            payload = flipped(payload, at, mask)
        return payload if cut is None else payload[:cut]
    parse_or_refuse(synthetic.patch_section(V1, kind, damage))


@fast(200)
@given(page=st.integers(0, synthetic.sections(V1)[5][3] // PAGE_SIZE - 1),
       at=st.integers(0, PAGE_SIZE - 1), mask=st.integers(1, 255))
def test_v1_page_flip_found_by_verify(page: int, at: int, mask: int) -> None:
    where = V1_META + page * PAGE_SIZE + at
    image = parse_or_refuse(flipped(V1, where, mask))
    assert image is not None
    bad = v1.verify_pages(image)
    assert len(bad) == 1 and bad[0].offset <= where < bad[0].offset + bad[0].count * PAGE_SIZE
