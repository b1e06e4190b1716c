"""Hundreds of mutated v0, v1 and core inputs through the real img-restore in GDB (issue 11):
each is refused in one line without a traceback, or restores; none hangs; no file outside
the test's directory changes; after every refusal the running inferior's registers and
stack are as they were."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cprogs import ROOT, compile_program
from gdbmi import Gdb
from mutations import byte_mutations, files_named, model_mutations

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
SEED = 20261129


def _inputs(tmp_path: Path) -> tuple[Path, list[Path]]:
    binary = compile_program("heap", tmp_path)
    v1, v0, core = tmp_path / "good.img", tmp_path / "good-v0.img", tmp_path / "good.core"
    gdb = Gdb(str(binary))
    try:
        gdb.console("break checkpoint")
        gdb.until_stopped("run > /dev/null")
        gdb.console(f"img-dump {v1}")
        gdb.console(f"img-dump {v0} --format v0")
        gdb.console(f"gcore {core}")
        gdb.console("kill")
    finally:
        gdb.close()
    out = tmp_path / "mutated"
    out.mkdir()
    files_named(out)
    images = model_mutations(v1, out, 240, SEED)
    images += byte_mutations(v0, out, "v0", 50, SEED + 1)
    images += byte_mutations(core, out, "core", 40, SEED + 2)
    return binary, images


def _digest(paths: list[str]) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def test_mutated_images_are_refused_cleanly(tmp_path: Path) -> None:
    binary, images = _inputs(tmp_path)
    assert len(images) >= 300
    watched = [str(binary), str(tmp_path / "mutated" / "victim")] + [
        os.path.realpath(p) for p in ("/lib/x86_64-linux-gnu/libc.so.6",
                                      "/lib64/ld-linux-x86-64.so.2")]
    before = _digest(watched)
    listing, results = tmp_path / "list", tmp_path / "results"
    listing.write_text("\n".join(map(str, images)))
    env = {**os.environ, "MUTATION_LIST": str(listing), "MUTATION_RESULTS": str(results),
           "MUTATION_PROGRAM": str(binary), "TERM": "dumb"}
    argv = ["gdb", "-nx", "-q", "-batch", "-ex", f"source {ROOT / 'gdb_img' / 'init.py'}",
            "-ex", f"source {ROOT / 'tests' / 'mutation_driver.py'}", str(binary)]
    try:
        subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pass
    lines = results.read_text().splitlines() if results.exists() else []
    assert lines and lines[-1] == "DONE", f"hung or died at: {lines[-1:] or 'the start'}"
    outcomes: dict[str, tuple[str, str]] = {}
    for line in lines[:-1]:
        path, outcome, message = line.split("\t", 2)
        outcomes[path] = (outcome, message)
    assert len(outcomes) == len(images)
    bad = {p: o for p, o in outcomes.items() if o[0] not in ("refused", "restored")}
    assert not bad, "\n".join(f"{p}: {o}" for p, o in list(bad.items())[:10])
    for path, (outcome, message) in outcomes.items():
        if outcome == "refused":
            assert "\n" not in message.strip() and "Traceback" not in message, (path, message)
            assert message.startswith("img-restore: "), (path, message)
    assert _digest(watched) == before
    refused = sum(o == "refused" for o, _ in outcomes.values())
    print(f"{len(outcomes)} mutated inputs: {refused} refused, "
          f"{len(outcomes) - refused} restored")
