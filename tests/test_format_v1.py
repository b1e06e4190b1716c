"""Our layout: every field round trips, zero pages are elided, unknown sections are skipped,
and the bytes are laid out exactly as docs/FORMAT.md says."""

from __future__ import annotations

import struct
import zlib

import pytest
import synthetic

from binfmt_img.formats import image_file, v1
from binfmt_img.formats.model import ALL_REGISTERS, PAGE_SIZE, Image, Vma


def parse(data: bytes) -> Image:
    return image_file.parse(memoryview(data))


def assert_same(got: Image, want: Image, pages: synthetic.Pages) -> None:
    """Compare two models field by field; pages by content, wherever they are stored."""
    assert got.format == want.format
    assert len(got.threads) == len(want.threads)
    for mine, theirs in zip(got.threads, want.threads):
        assert mine == theirs  # tid, registers, tls, xsave, sigmask, altstack, robust list...
    assert got.mm == want.mm
    assert got.exe_path == want.exe_path and got.exe_fd == want.exe_fd
    assert got.auxv == want.auxv
    assert got.vmas == want.vmas  # incl. path, name, pgoff and file identity
    assert got.sigactions == want.sigactions
    for vaddr, data in pages:
        assert got.read(vaddr, len(data)) == data, hex(vaddr)


def test_every_field_round_trips() -> None:
    want = synthetic.make_image("v1")
    got = parse(synthetic.encode(want, "v1"))
    assert_same(got, want, synthetic.pages())
    assert got.main.xsave is not None and len(got.main.xsave.data) == 832
    assert got.vmas[0].file is not None and got.vmas[0].file.inode == 131


def test_bytes_round_trip(tmp_path) -> None:
    data = synthetic.image_bytes("v1")
    path = str(tmp_path / "again.img")
    image_file.save(path, parse(data), "v1")
    with open(path, "rb") as f:
        assert f.read() == data
    image_file.save(path, image_file.load(path), "v1")  # from a mapped file, not bytes
    with open(path, "rb") as f:
        assert f.read() == data


def test_v0_converts_to_v1_and_back(tmp_path) -> None:
    old = parse(synthetic.image_bytes("v0"))
    path = str(tmp_path / "new.img")
    image_file.save(path, old, "v1")
    new = image_file.load(path)
    assert new.registers == old.registers and new.vmas == old.vmas and new.mm == old.mm
    for vaddr, data in synthetic.pages():
        assert new.read(vaddr, len(data)) == data


def test_zero_pages_elided_and_runs_merged() -> None:
    image = parse(synthetic.image_bytes("v1"))
    heap, anon, stack = synthetic.HEAP, synthetic.ANON, synthetic.STACK_END - 2 * PAGE_SIZE
    assert [(run.vaddr, run.count) for run in image.runs] == [
        (synthetic.TEXT, 3),  # text + data: two VMAs of one file, three chunks, one run
        (heap, 1), (heap + 2 * PAGE_SIZE, 2),  # the zero page between is left out
        (anon, 1 + 1),  # two chunks, one run
        (synthetic.VDSO, 1), (stack, 2)]
    stored = sum(len(data) for _, data in synthetic.pages()) // PAGE_SIZE
    assert image.page_count == stored - 1
    assert image.read(heap + PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
    for run in image.runs:
        assert run.offset % PAGE_SIZE == 0
        assert run.checksum == zlib.crc32(image.source[run.offset:run.offset + run.count * 4096])
    assert v1.verify_pages(image) == []


def test_zero_pages_of_file_mappings_are_kept() -> None:
    """A missing page of a file mapping reads as the file's bytes, so a zeroed one is stored."""
    chunks = [(synthetic.DATA, bytes(PAGE_SIZE)), (synthetic.HEAP, bytes(PAGE_SIZE))]
    image = parse(synthetic.encode(synthetic.make_image("v1"), "v1", chunks))
    assert [(run.vaddr, run.count) for run in image.runs] == [(synthetic.DATA, 1)]
    assert image.read(synthetic.DATA, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_unknown_section_type_is_skipped() -> None:
    data = synthetic.image_bytes("v1")
    added = synthetic.add_section(data, 0x7777, b"from a later version" * 10)
    assert [e[0] for e in synthetic.sections(added)][-1] == 0x7777
    assert_same(parse(added), synthetic.make_image("v1"), synthetic.pages())


def test_renamed_section_is_skipped() -> None:
    data = synthetic.image_bytes("v1")
    table = synthetic.sections(data)
    for entry in table:
        if entry[0] == v1.SECTION_SIGNALS:
            entry[0] = 0x10000
    image = parse(synthetic.with_table(data, table))
    assert image.sigactions == [] and image.exe_path == synthetic.EXE


@pytest.mark.parametrize("kind", [v1.SECTION_MM, v1.SECTION_THREAD, v1.SECTION_SIGNALS])
def test_fields_appended_to_a_section_are_ignored(kind: int) -> None:
    data = synthetic.patch_section(synthetic.image_bytes("v1"), kind,
                                   lambda payload: payload + b"a later version's fields")
    assert_same(parse(data), synthetic.make_image("v1"), synthetic.pages())


def test_fewer_or_more_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers take the registers they know, in order; a writer may store more or fewer."""
    want = synthetic.make_image("v1")
    monkeypatch.setattr(v1, "ALL_REGISTERS", ALL_REGISTERS[:17])
    fewer = synthetic.encode(want, "v1")
    monkeypatch.setattr(v1, "ALL_REGISTERS", ALL_REGISTERS + ("fs_selector_future",))
    more = synthetic.encode(want, "v1")
    monkeypatch.undo()
    assert parse(fewer).registers == {k: want.registers[k] for k in ALL_REGISTERS[:17]}
    assert parse(more).registers == want.registers


# --- the byte layout, packed with struct exactly as docs/FORMAT.md describes it ------------

def text(value: str | None) -> bytes:
    raw = (value or "").encode()
    return struct.pack("<I", len(raw)) + raw


def test_header_and_section_table() -> None:
    data = synthetic.image_bytes("v1")
    magic, version, count, table_crc = struct.unpack_from("<IIII", data)
    assert (magic, version, count) == (0xA75B8D43, 0x200, 7)
    table = data[16:16 + count * 24]
    assert zlib.crc32(table) == table_crc
    entries = synthetic.sections(data)
    assert [e[0] for e in entries] == [1, 2, 3, 3, 4, 6, 5]
    at = 16 + count * 24
    for _, crc, offset, length in entries[:5]:  # metadata back to back after the table
        assert offset == at and zlib.crc32(data[offset:offset + length]) == crc
        at += length
    _, crc, pages_at, pages_len = entries[5]
    assert crc == 0 and pages_at == -(-at // PAGE_SIZE) * PAGE_SIZE
    assert data[at:pages_at] == bytes(pages_at - at) and pages_len == 11 * PAGE_SIZE
    assert entries[6][2] == pages_at + pages_len and entries[6][2] + entries[6][3] == len(data)


def test_mm_section_layout() -> None:
    image = synthetic.make_image("v1")
    data = synthetic.encode(image, "v1")
    expected = struct.pack("<13Q", *image.mm.values()) + text(image.exe_path)
    expected += struct.pack("<I", len(image.auxv))
    expected += b"".join(struct.pack("<QQ", t, v) for t, v in image.auxv)
    assert synthetic.section(data, v1.SECTION_MM)[1] == expected


def vma_bytes(vma: Vma) -> bytes:
    ident = vma.file
    fields = (ident.size, ident.mtime_ns, ident.inode, ident.device) if ident else (0,) * 4
    return (struct.pack("<QQQIIB4Q", vma.start, vma.end, vma.pgoff, vma.prot, vma.flags,
                        ident is not None, *fields) + text(vma.path) + text(vma.name))


def test_vma_section_layout() -> None:
    image = synthetic.make_image("v1")
    data = synthetic.encode(image, "v1")
    expected = struct.pack("<I", len(image.vmas)) + b"".join(map(vma_bytes, image.vmas))
    assert synthetic.section(data, v1.SECTION_VMAS)[1] == expected
    assert len(vma_bytes(Vma(0, 4096, 0, 0))) == 73


def test_thread_section_layout() -> None:
    image = synthetic.make_image("v1")
    data = synthetic.encode(image, "v1")
    threads = [e for e in synthetic.sections(data) if e[0] == v1.SECTION_THREAD]
    for thread, (_, _, offset, length) in zip(image.threads, threads):
        regs, alt, xsave = thread.registers, thread.altstack, thread.xsave
        assert xsave is not None
        expected = struct.pack("<II", thread.tid, len(ALL_REGISTERS))
        expected += struct.pack(f"<{len(ALL_REGISTERS)}Q", *(regs[n] for n in ALL_REGISTERS))
        expected += struct.pack("<3QQQiQQQQQ", *thread.tls, thread.sigmask, alt.sp, alt.flags,
                                alt.size, thread.clear_child_tid, thread.robust_list,
                                thread.robust_list_len, xsave.features)
        expected += struct.pack("<I", len(xsave.data)) + xsave.data
        assert data[offset:offset + length] == expected
        assert len(expected) == 224 + 88 + len(xsave.data)


def test_signal_and_run_sections_layout() -> None:
    image = synthetic.make_image("v1")
    data = synthetic.encode(image, "v1")
    expected = struct.pack("<I", 64) + b"".join(
        struct.pack("<4Q", s.handler, s.flags, s.restorer, s.mask) for s in image.sigactions)
    assert synthetic.section(data, v1.SECTION_SIGNALS)[1] == expected
    runs = synthetic.section(data, v1.SECTION_PAGE_RUNS)[1]
    (count,) = struct.unpack_from("<I", runs)
    assert len(runs) == 4 + 32 * count
    for vaddr, pages, offset, crc, reserved in struct.iter_unpack("<QQQII", runs[4:]):
        body = data[offset:offset + pages * PAGE_SIZE]
        assert crc == zlib.crc32(body) and reserved == 0 and offset % PAGE_SIZE == 0
        assert parse(data).read(vaddr, len(body)) == body


def test_empty_image() -> None:
    image = Image(format="v1", threads=synthetic.threads("v1"))
    got = parse(synthetic.encode(image, "v1", []))
    assert got.runs == [] and got.vmas == [] and got.threads == image.threads


def test_process_section_round_trips_and_is_optional() -> None:
    """pid, working directory and fd table (type 8): kept as written; an image without the
    section has files None, so that a restore leaves the inferior's descriptors alone."""
    from binfmt_img.formats.model import FD_DIRECTORY, FD_FILE, FD_OTHER, FileIdentity, OpenFile

    assert parse(synthetic.image_bytes("v1")).files is None
    want = synthetic.make_image("v1")
    want.pid, want.cwd = 4242, "/home/user/work"
    want.files = [
        OpenFile(3, FD_FILE, "/tmp/data.txt", 0o100000, 3008, FileIdentity(6393, 17, 99, 2)),
        OpenFile(5, FD_OTHER, "pipe:[1234]", 0o1),
        OpenFile(7, FD_DIRECTORY, "/tmp", 0o2304000, 0, FileIdentity(4096, 18, 2, 2))]
    data = synthetic.encode(want, "v1")
    got = parse(data)
    assert (got.pid, got.cwd, got.files) == (want.pid, want.cwd, want.files)
    _, payload = synthetic.section(data, v1.SECTION_PROCESS)
    assert struct.unpack_from("<I", payload, 0) == (4242,)
    want.files.append(OpenFile(5, FD_OTHER, "socket:[1]"))
    with pytest.raises(image_file.ImageError, match="fd 5 is negative or repeated"):
        parse(synthetic.encode(want, "v1"))
