"""scripts/img-info as a user runs it, and the report functions behind it."""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic

from binfmt_img import __version__, report
from binfmt_img.formats import image_file
from binfmt_img.formats.model import PAGE_SIZE

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "img-info"


def img_info(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the script from elsewhere, so it has to find the package by itself."""
    return tool("img-info", *args, cwd=cwd)


def tool(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One of scripts/ run from elsewhere."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(SCRIPT.parent / name), *args],
                          capture_output=True, text=True, cwd=cwd or "/", env=env, timeout=60)


@pytest.fixture(scope="module", params=["v0", "v1"])
def image_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    fmt = request.param
    path = str(tmp_path_factory.mktemp(fmt) / f"demo-{fmt}.img")
    image_file.save(path, synthetic.make_image(fmt), fmt, synthetic.pages())
    return path


@pytest.fixture
def v1_path(tmp_path: Path) -> str:
    path = str(tmp_path / "demo.img")
    image_file.save(path, synthetic.make_image("v1"), "v1", synthetic.pages())
    return path


def test_human_output(image_path: str) -> None:
    done = img_info(image_path)
    assert done.returncode == 0 and done.stderr == ""
    out = done.stdout
    assert "start" in out and "end" in out and "pgoff" in out and "pages" in out  # VMA table
    assert "0x7ffffffde000  0x7ffffffff000  rw-" in out
    assert "r-x" in out and "rw-" in out and "private,anon,growsdown" in out
    assert "0x33  user64 cs" in out and "0x2b  user64 ds" in out
    assert "0x63  TLS#0" in out and "null" in out
    assert "=> 0x401020: push rbp" in out and "0x401021: mov rbp, rsp" in out
    assert "eflags" in out and "[ PF ZF IF ]" in out
    assert "start_stack  0x7fffffffe3a0" in out


def test_human_output_v1_details(v1_path: str) -> None:
    out = img_info(v1_path).stdout
    assert "exe: /usr/bin/demo" in out and "AT_SYSINFO_EHDR  0x7ffff7fc1000" in out
    assert "/dev/shm/demo" in out and "[vdso]" in out and "[heap]" in out
    assert "total: 7 VMAs, 11 pages stored, 45056 bytes" in out
    assert "SIGINT" in out and re.search(r"SIGPIPE +SIG_IGN", out) and "SIGSEGV" not in out
    assert "signal mask: 0x200 SIGUSR1" in out
    assert "xsave: 832 bytes, features 0x7 x87 SSE AVX" in out
    assert "threads: 2 (tids 4242, 4243)" in out


def test_json(image_path: str) -> None:
    done = img_info(image_path, "--json")
    assert done.returncode == 0
    info = json.loads(done.stdout)
    for key in ("format", "version", "registers", "mm", "exe_path", "auxv", "vmas", "pages",
                "threads"):
        assert key in info, key
    assert info["format"] in ("v0", "v1") and info["version"] in (0x100, 0x200)
    regs = info["registers"]
    for name in ("rip", "rsp", "rax", "eflags", "fs_base", "gs_base", "cs", "ss", "gs"):
        assert isinstance(regs[name], int), name
    assert regs["rip"] == synthetic.RIP and regs["cs"] == 0x33
    assert all(isinstance(value, int) for value in info["mm"].values())
    assert info["mm"]["start_stack"] == 0x7FFFFFFFE3A0
    stack = info["vmas"][-1]
    assert stack["start"] == synthetic.STACK_START and stack["end"] == synthetic.STACK_END
    assert stack["perms"] == "rw-" and stack["prot"] == 3 and stack["pages"] == 2
    for vma in info["vmas"]:
        assert all(isinstance(vma[k], int) for k in ("start", "end", "prot", "pgoff", "pages"))
        assert vma["path"] is None or isinstance(vma["path"], str)
    assert info["pages"] == sum(vma["pages"] for vma in info["vmas"])
    assert isinstance(info["threads"], int)


def test_json_v1_values(v1_path: str) -> None:
    info = json.loads(img_info(v1_path, "--json", "--verify").stdout)
    assert info["format"] == "v1" and info["pages"] == 11 and info["threads"] == 2
    assert info["exe_path"] == "/usr/bin/demo"
    assert {"type": 33, "name": "AT_SYSINFO_EHDR", "value": synthetic.VDSO} in info["auxv"]
    text = info["vmas"][0]
    assert (text["path"], text["name"], text["perms"]) == ("/usr/bin/demo", None, "r-x")
    assert info["vmas"][2]["name"] == "[heap]" and info["vmas"][2]["pages"] == 3
    assert info["verify"] == {"ok": True, "bad_runs": []}


def test_verify_ok(v1_path: str) -> None:
    done = img_info(v1_path, "--verify")
    assert done.returncode == 0 and "verify: OK, 6 page runs match their crc32" in done.stdout


def test_verify_bad(v1_path: str) -> None:
    image = image_file.load(v1_path)
    heap_run = next(run for run in image.runs if run.vaddr == synthetic.HEAP + 2 * PAGE_SIZE)
    with open(v1_path, "r+b") as f:
        f.seek(heap_run.offset + PAGE_SIZE + 100)
        f.write(b"\xff")
    done = img_info(v1_path, "--verify")
    assert done.returncode == 2
    assert "verify: 1 of 6 page runs are BAD" in done.stdout
    assert "0x602000-0x604000 (2 pages" in done.stdout
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    info = json.loads(img_info(v1_path, "--verify", "--json").stdout)
    assert info["verify"]["ok"] is False and info["verify"]["bad_runs"][0]["vaddr"] == 0x602000


def test_verify_v0(image_path: str) -> None:
    done = img_info(image_path, "--verify")
    assert done.returncode == 0
    assert ("nothing to check" in done.stdout) == image_path.endswith("v0.img")


def assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr


@pytest.mark.parametrize("fmt", ["v0", "v1"])
def test_truncated_image(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / "cut.img"
    path.write_bytes(synthetic.image_bytes(fmt)[:3000])
    assert_one_line_error(img_info(str(path)), str(path), "truncated", "at byte offset 0x")
    assert_one_line_error(img_info(str(path), "--json", "--verify"), "truncated")


@pytest.mark.parametrize("content", [b"", b"\x7fELF" + bytes(60), b"\x43\x8d\x5b\xa7"])
def test_not_an_image(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(content)
    assert_one_line_error(img_info(str(path)), str(path))


def elf_header(e_type: int) -> bytes:
    """A 64-bit little-endian x86-64 ELF header of the given type, no program headers."""
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    return ident + struct.pack("<HHIQQQIHHHHHH", e_type, 62, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)


@pytest.mark.parametrize(("content", "looks"), [
    (b"", "empty"),
    (b"hello\n", 'looks like text ("hello")'),
    (b"#!/bin/sh\necho hi\n", "a script"),
    (gzip.compress(b"an image, maybe"), "gzip data"),
    (bytes(range(7, 107)), "unknown data starting 07 08 09 0a (an image starts 43 8d 5b a7)"),
    (elf_header(2), "an ELF executable, not a core"),
    (elf_header(1), "an ELF object file, not a core"),
    (elf_header(3), "a shared library, not a core"),
])
def test_wrong_kind_of_file(content: bytes, looks: str, tmp_path: Path) -> None:
    """One line naming what the file is instead; never "truncated header" or a magic."""
    path = tmp_path / "wrong"
    path.write_bytes(content)
    assert_one_line_error(img_info(str(path)), f"{path}: not a binfmt-img image or an ELF core: "
                          f"{looks}\n")
    assert_one_line_error(tool("img2core", str(path)), f"{path}: not a binfmt-img image: {looks}")


def test_img2core_given_a_core(tmp_path: Path) -> None:
    path = tmp_path / "core"
    path.write_bytes(elf_header(4))
    assert_one_line_error(tool("img2core", str(path)),
                          "an ELF core, not a binfmt-img image (core2img converts it to one)")


def test_short_image_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "short.img"
    path.write_bytes(synthetic.image_bytes("v1")[:6])
    assert_one_line_error(img_info(str(path)), "truncated header: 6 bytes")


@pytest.mark.parametrize("name", ["img-info", "core2img", "img2core"])
def test_help_and_version(name: str) -> None:
    """-h shows the whole description (no sentence cut at a line end); --version the
    package's version."""
    done = tool(name, "-h")
    assert done.returncode == 0
    description = done.stdout.split("\n\n")[1]
    assert description.rstrip().endswith("."), description
    assert done.stdout.count("Exit status: 0") == 1
    assert tool(name, "--version").stdout == f"{name} {__version__}\n"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert_one_line_error(img_info(str(tmp_path / "nope.img")), "No such file")
    assert_one_line_error(img_info(str(tmp_path)), "is a directory")


def test_script_is_executable_python() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")


# --- the report functions directly ----------------------------------------------------------

@pytest.mark.parametrize(("selector", "name"), [
    (0, "null"), (0x23, "user32 cs"), (0x2B, "user64 ds"), (0x33, "user64 cs"),
    (0x63, "TLS#0"), (0x73, "TLS#2"), (0x7, "LDT#0"), (0x1F, "LDT#3"), (0x10, "GDT#2 rpl 0"),
])
def test_selector_names(selector: int, name: str) -> None:
    assert report.selector_name(selector) == name


def test_report_without_code_at_rip() -> None:
    image = image_file.parse(memoryview(synthetic.image_bytes("v0")))
    image.registers["rip"] = 0x7FFFF7FD0010  # the shared mapping: no page stored
    assert "code at rip 0x7ffff7fd0010: page not in the image" in report.report_text(image)


def test_report_disassembles_zero_pages_of_v1() -> None:
    """v1 leaves zero pages of anonymous memory out; they still read (and disassemble)."""
    image = image_file.parse(memoryview(synthetic.image_bytes("v1")))
    image.registers["rip"] = synthetic.HEAP + PAGE_SIZE
    assert "0x601000: add byte ptr [rax], al" in report.report_text(image)


def test_code_at_end_of_stored_pages() -> None:
    image = image_file.parse(memoryview(synthetic.image_bytes("v0")))
    last = synthetic.VDSO + PAGE_SIZE - 2  # the next page is not stored
    image.registers["rip"] = last
    lines = report.disassemble(image, last)
    assert lines is not None and len(lines) <= 2


def test_pages_per_vma() -> None:
    image = image_file.parse(memoryview(synthetic.image_bytes("v1")))
    assert report.pages_per_vma(image) == [2, 1, 3, 2, 1, 0, 2]
