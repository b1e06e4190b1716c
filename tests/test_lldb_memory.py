"""LLDB's memory for expressions across img-restore in place (lldb_img/allocations.py): LLDB
keeps pages it mapped in the process for expressions and reuses them; a restore in place must
not leave LLDB pointing at pages the restore removed, or at the program's own memory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cprogs import compile_program
from lldb_helpers import lldb_batch, lldb_missing

_MISSING = lldb_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

NEEDS_MEMORY = 'expression (int)strlen("abc")'  # the literal goes into LLDB's memory


def _results(text: str) -> list[str]:
    """The values LLDB printed for expressions, in order: `(int) $3 = 3` gives "3"."""
    return re.findall(r"^\([^)]*\) \$\d+ = (.*)$", text, re.MULTILINE)


def test_two_restores_in_place_then_a_clash(tmp_path: Path) -> None:
    binary = compile_program("lldb_memory", tmp_path)
    out = tmp_path / "out.txt"
    images = [tmp_path / f"c{n}.img" for n in (1, 2, 3)]
    later = tmp_path / "c3-again.img"
    store = tmp_path / "store"
    session = lldb_batch(
        f"settings set target.output-path {out}", "breakpoint set -n stage", "run",
        "finish", f"img-dump {images[0]}", "continue",
        "finish", f"img-dump {images[1]}", "continue",
        "finish", f"img-dump {images[2]}",
        NEEDS_MEMORY,  # LLDB maps its pages now, where `region` was at stage 1
        # In place twice, with expressions that need memory after each.
        f"img-restore --yes {images[1]}", NEEDS_MEMORY, "expression at_stage",
        f"img-restore --yes {images[2]}", NEEDS_MEMORY, "expression at_stage",
        # Dumped now, the image leaves LLDB's pages out: restored in place again.
        f"img-dump {later}", f"img-restore --yes {later}", NEEDS_MEMORY,
        # So does a checkpoint of the store.
        f"img-checkpoint --store {store}", f"img-restore --yes --store {store} 1", NEEDS_MEMORY,
        # Stage 1's image maps `region` where LLDB's pages are: a fresh process.
        f"img-restore --yes {images[0]}", NEEDS_MEMORY, "expression at_stage",
        "expression region", "breakpoint disable", "continue",
        program=binary, timeout=120)
    text = session.stdout + session.stderr
    assert "error:" not in text, text
    assert _results(text)[:1] == ["3"], text
    restores = text.split("img-restore --yes")[1:]
    assert len(restores) == 5, text
    for restore in restores[:4]:  # in place, LLDB's pages mapped again
        assert "started" not in restore and "fresh process" not in restore, restore
        assert "LLDB's memory for expressions" in restore, restore
    assert re.search(r"the image maps \d+ pages? \(0x[0-9a-f-]+.*\) where LLDB keeps memory "
                     r"for its expressions in this process", restores[4]), restores[4]
    assert "started" in restores[4], restores[4]
    assert _results(text)[1:9] == ["3", "2", "3", "3", "3", "3", "3", "1"], text
    assert '"mapped at stage 1"' in _results(text)[9], text
    assert "exited with status = 0" in text, text
    assert out.read_text() == "ended at stage 3\n"
