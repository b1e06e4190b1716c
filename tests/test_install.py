"""The project installed like any tool: `pip install` of a copy of the checkout into a fresh
virtualenv of the system's python (the one GDB embeds), then its console scripts and the
documented ~/.gdbinit and ~/.lldbinit lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic
from cprogs import ROOT

from binfmt_img import __version__
from binfmt_img.formats import image_file

SYSTEM_PYTHON = "/usr/bin/python3"
SKIP = {".venv", ".git", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}

pytestmark = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no /usr/bin/python3")


def _ignore(_directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the project installed (not editable) from a copy of the checkout."""
    work = tmp_path_factory.mktemp("install")
    source, venv = work / "src", work / "venv"
    shutil.copytree(ROOT, source, ignore=_ignore, symlinks=True)
    # Without pip of its own (faster): this python's pip installs into it.
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, timeout=60)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                           "install", "-q", "--no-build-isolation", str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return venv


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def run(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return subprocess.run(args, capture_output=True, text=True, cwd="/", env=env, timeout=60)


@pytest.mark.parametrize("tool", ["img-info", "core2img", "img2core"])
def test_console_scripts_version(venv: Path, tool: str) -> None:
    done = run(str(venv / "bin" / tool), "--version")
    assert done.returncode == 0 and done.stdout == f"{tool} {__version__}\n"


def test_installed_img_info(venv: Path, tmp_path: Path) -> None:
    image = tmp_path / "demo.img"
    image_file.save(str(image), synthetic.make_image("v1"), "v1", synthetic.pages())
    done = run(str(venv / "bin" / "img-info"), str(image))
    assert done.returncode == 0 and done.stderr == ""
    assert "image format v1" in done.stdout and "=> 0x401020: push rbp" in done.stdout
    # The package came from site-packages, not from the checkout.
    where = run(str(venv / "bin" / "python"), "-c", "import binfmt_img; print(binfmt_img.__file__)")
    assert where.stdout.startswith(str(site_packages(venv)))


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
@pytest.mark.parametrize("on_path", [False, True])
def test_gdbinit_line(venv: Path, on_path: bool) -> None:
    """README's ~/.gdbinit lines: source the installed file, or import it when the package
    is on GDB's python path."""
    site = site_packages(venv)
    line = "python import binfmt_img.gdb" if on_path else f"source {site}/binfmt_img/gdb.py"
    done = run("gdb", "-nx", "-batch", "-ex", line, "-ex", "help img-restore",
               "-ex", "help img-info", path=site if on_path else None)
    assert done.stderr == "", done.stderr
    assert "Restore a process image into the inferior" in done.stdout
    assert "Describe a process image" in done.stdout


@pytest.mark.skipif(shutil.which("lldb-19") is None, reason="lldb-19 is not installed")
def test_lldbinit_line(venv: Path) -> None:
    line = f"command script import {site_packages(venv)}/lldb_img"  # README's ~/.lldbinit line
    done = run("lldb-19", "--no-lldbinit", "-b", "-o", line, "-o", "help img-restore")
    assert "error" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "Restore a process image into the inferior" in done.stdout
