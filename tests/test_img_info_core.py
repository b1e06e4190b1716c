"""img-info on ELF cores: which kind of core, the signal, the code at rip read from the mapped
file when the core lacks its page, call targets and addresses named from the files' symbols;
and tables throughout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import synthetic
from cprogs import compile_program
from gdbmi import Gdb
from test_img_info import img_info
from test_postmortem import crash_core

from binfmt_img import report
from binfmt_img.formats import image_file, symbols
from binfmt_img.formats.model import (
    FD_DEVICE,
    FD_FILE,
    MAP_PRIVATE,
    PROT_EXEC,
    PROT_READ,
    FileIdentity,
    Image,
    OpenFile,
    Vma,
)

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


@pytest.fixture(scope="module")
def kernel_core(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return crash_core(tmp_path_factory.mktemp("core"))


def test_kernel_core(kernel_core: tuple[Path, Path]) -> None:
    binary, core = kernel_core
    done = img_info(str(core))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    out = done.stdout
    assert out.startswith("ELF core written by the kernel, ")
    assert "image format" not in out
    assert re.search(r"^signal: SIGSEGV \(SEGV_MAPERR: address not mapped\), fault address 0x0, "
                     r"in thread 1 \(tid \d+\) at rip 0x[0-9a-f]+$", out, re.MULTILINE), out
    # The core leaves the unchanged code page out: it is read from the executable.
    assert f"(read from {binary}: the image does not store this page):" in out
    assert "page not in the image" not in out
    assert re.search(r"^=> 0x[0-9a-f]+ <main\+\d+>: mov dword ptr \[rax\], 0x2a$", out,
                     re.MULTILINE), out
    assert re.search(r"call 0x[0-9a-f]+ <printf@plt>$", out, re.MULTILINE), out
    assert re.search(r"# 0x[0-9a-f]+ <target>$", out, re.MULTILINE), out  # rip-relative data
    info = json.loads(img_info(str(core), "--json").stdout)
    assert info["core"] == "kernel"
    assert info["signal"]["name"] == "SIGSEGV" and info["signal"]["address"] == 0
    assert info["signal"]["code_name"].startswith("SEGV_MAPERR")


@needs_gdb
def test_gcore(tmp_path: Path) -> None:
    binary = compile_program("debugme", tmp_path)
    core = tmp_path / "gcore"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        assert gdb.until_stopped("run > /dev/null").get("reason") == "breakpoint-hit"
        gdb.console(f"gcore {core}")
        gdb.console("kill")
    finally:
        gdb.close()
    out = img_info(str(core)).stdout
    assert out.startswith("ELF core written by GDB's gcore, ")
    assert re.search(r"^signal: SIGTRAP \(SI_KERNEL: sent by the kernel\), in thread 1", out,
                     re.MULTILINE), out  # the breakpoint's int3; no fault address
    assert re.search(r"^=> 0x[0-9a-f]+ <checkpoint\+\d+>: ", out, re.MULTILINE), out


def mapped_whole(binary: Path, base: int) -> Image:
    """An image that maps the whole file at `base`, as the loader maps a PIE."""
    size = -(-binary.stat().st_size // 4096) * 4096
    return Image(vmas=[Vma(base, base + size, PROT_READ | PROT_EXEC, MAP_PRIVATE,
                           path=str(binary))])


def test_symbol_names_match_binutils(tmp_path: Path) -> None:
    binary = compile_program("crash", tmp_path)
    base = 0x555555554000
    names = symbols.Symbols(mapped_whole(binary, base))
    listing = subprocess.run(["objdump", "-d", str(binary)], capture_output=True, text=True,
                             check=True).stdout
    stubs = re.findall(r"^([0-9a-f]+) <(\w+@plt)>:", listing, re.MULTILINE)
    assert {name for _, name in stubs} >= {"puts@plt", "printf@plt"}
    for address, name in stubs:
        assert names.name(base + int(address, 16)) == name
    main = int(re.search(r"^([0-9a-f]+) <main>:", listing, re.MULTILINE).group(1), 16)
    assert names.name(base + main) == "main" and names.name(base + main + 12) == "main+12"
    assert names.name(0x1000) is None  # no file there


def test_code_from_a_changed_file_is_not_shown(tmp_path: Path) -> None:
    binary = compile_program("crash", tmp_path)
    image = mapped_whole(binary, 0x555555554000)
    image.registers["rip"] = 0x555555555000
    assert "read from" in report.report_text(image)
    image.vmas[0].file = FileIdentity(size=1, mtime_ns=1, inode=1, device=1)  # not this file
    text = report.report_text(image)
    assert (f"code at rip 0x555555555000: page not in the image; {binary} is gone or changed"
            in text)


def test_tables() -> None:
    """Registers, threads, signal handlers, auxv and mm as aligned columns."""
    image = image_file.parse(memoryview(synthetic.image_bytes("v1")))
    image.files = [OpenFile(0, FD_DEVICE, "/dev/null", 0o100002), OpenFile(3, FD_FILE, "/tmp/log",
                                                                      0o102001, 4096)]
    text = report.report_text(image)
    assert re.search(r"^  fd +kind +flags +pos +path$", text, re.MULTILINE)
    assert re.search(r"^  3 +file +0o102001 +4096 +/tmp/log$", text, re.MULTILINE), text
    assert re.search(r"^  tid +rip +rsp +fs_base +sigmask +clear_child_tid$", text, re.MULTILINE)
    assert re.search(r"^  4243 +0x401021 +0x7f0000003f00 ", text, re.MULTILINE)
    assert re.search(r"^  signal +handler +flags +restorer +mask$", text, re.MULTILINE)
    rows = [line for line in text.splitlines() if re.match(r"  (rax|rip|cs|orig_rax) ", line)]
    assert len(rows) == 4 and len({len(row.split("  user64")[0]) for row in rows}) == 1, rows
