"""img-diff and img-bisect (binfmt_img/compare): the core on synthetic images, then the
commands in real GDB and LLDB on C programs that change globals, heap and stack between
checkpoints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic
from cprogs import ROOT, compile_program
from gdbmi import Gdb, GdbError
from lldb_helpers import lldb_batch, lldb_missing

from binfmt_img.compare.bisect import bisect, split_arguments
from binfmt_img.compare.diff import compare
from binfmt_img.compare.sides import ImageSide
from binfmt_img.compare.text import render
from binfmt_img.compare.variables import Variables, plain_value, plain_values
from binfmt_img.formats import image_file
from binfmt_img.formats.model import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Image,
    Vma,
)

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
_NO_LLDB = lldb_missing()
needs_lldb = pytest.mark.skipif(_NO_LLDB is not None, reason=_NO_LLDB or "")


# --- the core, on synthetic images ----------------------------------------------------------

def _image(edit_pages: dict[int, bytes] | None = None, edit: object = None) -> Image:
    """The synthetic image, with bytes replaced at some addresses and the model edited."""
    image = synthetic.make_image("v1")
    chunks = []
    for vaddr, data in synthetic.pages():
        body = bytearray(data)
        for addr, change in (edit_pages or {}).items():
            if vaddr <= addr < vaddr + len(data):
                body[addr - vaddr:addr - vaddr + len(change)] = change
        chunks.append((vaddr, bytes(body)))
    if callable(edit):
        edit(image)
    return image_file.parse(memoryview(synthetic.encode(image, "v1", chunks)))


def _grow(image: Image) -> None:
    image.threads[0].registers["rip"] += 0x10
    image.threads[0].registers["rax"] = 42
    heap = next(v for v in image.vmas if v.name == "[heap]")
    heap.prot = PROT_READ  # changed
    image.vmas = [v for v in image.vmas if v.path != "/dev/shm/demo"]  # removed
    image.vmas.append(Vma(0x7F0000100000, 0x7F0000101000, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS))  # added
    image.vmas.sort(key=lambda v: v.start)


def test_diff_registers_vmas_pages_heap_and_stack() -> None:
    stack_page = synthetic.STACK_END - PAGE_SIZE
    a = ImageSide(_image(), "a")
    rsp = synthetic.registers()["rsp"]
    b = ImageSide(_image({synthetic.HEAP + 0x2000: b"CHANGED!", stack_page + 8: b"xy",
                          rsp + 16: b"xyz"}, _grow), "b")
    diff = compare(a, b)
    main = next(t for t in diff.threads if t["tid"] == 4242)
    assert main["registers"] == {"rax": [0x1000, 42], "rip": [synthetic.RIP,
                                                               synthetic.RIP + 0x10]}
    worker = next(t for t in diff.threads if t["tid"] == 4243)
    assert worker["registers"] == {}
    assert [v["start"] for v in diff.vmas["added"]] == [0x7F0000100000]
    assert [v["label"] for v in diff.vmas["removed"]] == ["/dev/shm/demo"]
    assert [(c["start"], c["what"]) for c in diff.vmas["changed"]] == [(synthetic.HEAP,
                                                                          ["prot"])]
    assert diff.pages == [(synthetic.HEAP + 0x2000, synthetic.HEAP + 0x3000),
                          (stack_page, stack_page + PAGE_SIZE)]
    assert diff.heap == [{"start": synthetic.HEAP + 0x2000, "end": synthetic.HEAP + 0x2008,
                          "bytes": 8, "area": "[heap]"}]
    stacks = {s["tid"]: s for s in diff.stacks}
    assert list(stacks) == [4242]  # the stack holding the main thread's rsp
    frames = {f["function"]: f["bytes"] for f in stacks[4242]["frames"]}
    # No return address on this stack: all of it above rsp is the frame of the code at rip.
    assert frames == {"(below the stack pointer)": 2, f"{synthetic.RIP + 0x10:#x}": 3}  # b's rip
    text = render(diff)
    for line in ("rax 0x1000 -> 0x2a", "+ 0x7f0000100000-0x7f0000101000 rw-p",
                 "- 0x7ffff7fd0000-0x7ffff7fd1000 r--s /dev/shm/demo", "~ 0x600000-0x604000",
                 "pages: 2 changed (8 KiB) in 2 ranges", "[heap] 0x602000-0x602008: 8 bytes"):
        assert line in text, text
    shape = json.loads(json.dumps(diff.to_json()))
    assert set(shape) == {"a", "b", "threads", "vmas", "pages", "variables", "heap", "stacks",
                          "other"}
    assert shape["pages"]["changed"] == 2


def test_diff_of_an_image_with_itself_is_empty() -> None:
    diff = compare(ImageSide(_image(), "a"), ImageSide(_image(), "b"))
    assert not diff.pages and not diff.heap and not diff.stacks and not diff.variables
    assert render(diff).splitlines()[1:] == ["registers: the same", "VMAs: the same",
                                             "pages: none changed"]


def test_zero_pages_left_out_compare_as_zero() -> None:
    """v1 leaves zero pages of anonymous memory out: a stored page turned to zeros is a
    change (the area is the worker thread's stack, below its rsp)."""
    a = ImageSide(_image(), "a")
    b = ImageSide(_image({synthetic.ANON: bytes(PAGE_SIZE)}), "b")
    diff = compare(a, b)
    assert diff.pages == [(synthetic.ANON, synthetic.ANON + PAGE_SIZE)]
    assert [s["tid"] for s in diff.stacks] == [4243]
    assert diff.stacks[0]["frames"][0]["function"] == "(below the stack pointer)"


def test_variables_from_an_elf_symbol_table_at_the_load_bias(tmp_path: Path) -> None:
    from elftools.elf.elffile import ELFFile

    binary = compile_program("compare_globals", tmp_path)
    with open(binary, "rb") as f:
        loads = [s.header for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
    base = 0x555555554000
    vmas = [Vma(base + (h.p_vaddr & ~0xFFF), base + ((h.p_vaddr + h.p_memsz + 0xFFF) & ~0xFFF),
                PROT_READ, MAP_PRIVATE, (h.p_offset & ~0xFFF) // PAGE_SIZE, str(binary))
            for h in loads]
    table = Variables(vmas, {str(binary)})
    names = {v.name: v for v in table.items}
    assert {"counter", "origin", "table", "hidden", "block"} <= set(names)
    counter = names["counter"]
    assert counter.size == 4 and counter.address > base
    assert [v.name for v in table.overlapping(counter.address + 2, counter.address + 3)] == [
        "counter"]


def test_store_checkpoints_compare_by_page_id(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two checkpoints of one store: only the pages whose ids differ are read."""
    from binfmt_img.compare.resolve import open_side
    from binfmt_img.store import Store

    store = Store(str(tmp_path / "store"))
    store.add(_image(), "before")
    store.add(_image({synthetic.HEAP + 0x2000: b"CHANGED!"}), "after")
    read: list[int] = []
    original = ImageSide._page

    def counting(self: ImageSide, vaddr: int) -> bytes | None:
        read.append(vaddr)
        return original(self, vaddr)
    monkeypatch.setattr(ImageSide, "_page", counting)
    a = open_side("before", None, str(tmp_path / "store"))
    b = open_side("2", None, str(tmp_path / "store"))
    assert (a.label, b.label) == ("checkpoint 1 (before)", "checkpoint 2 (after)")
    diff = compare(a, b)
    assert diff.pages == [(synthetic.HEAP + 0x2000, synthetic.HEAP + 0x3000)]
    assert set(read) == {synthetic.HEAP + 0x2000}


def test_plain_values() -> None:
    assert plain_value((5).to_bytes(4, "little")) == "5"
    assert plain_value((-1).to_bytes(8, "little", signed=True)) == "-1"
    assert plain_value((0x7FFFF7DD2000).to_bytes(8, "little")) == "0x7ffff7dd2000"
    assert plain_value(b"\x01\x02\x03") == "01 02 03"
    old = bytes(100)
    new = old[:70] + b"\x05" + old[71:]
    assert plain_values(old, new) == ("+0x40: " + "00 " * 15 + "00 ... (1 of 100 bytes changed)",
                                      "+0x40: " + "00 " * 6 + "05 " + "00 " * 8
                                      + "00 ... (1 of 100 bytes changed)")


@pytest.mark.parametrize(("truth", "first", "probed"), [
    ([False] * 5 + [True] * 3, 5, [0, 7, 3, 5, 4]),
    ([False, True], 1, [0, 1]),
    ([False] * 7 + [True], 7, [0, 7, 3, 5, 6]),
])
def test_bisect_restores_few_and_ends_at_the_first_true(truth: list[bool], first: int,
                                                        probed: list[int]) -> None:
    restored: list[int] = []
    outcome = bisect(list(range(len(truth))), restored.append,
                     lambda: (truth[restored[-1]], str(int(truth[restored[-1]]))))
    assert outcome.first == first and outcome.note is None
    assert [s.entry for s in outcome.steps] == probed
    assert restored[-1] == first and outcome.restored == first
    assert outcome.restores == len(restored)


def test_bisect_says_when_the_ends_break_the_assumption() -> None:
    restored: list[int] = []
    always = bisect([1, 2, 3], restored.append, lambda: (True, "1"))
    assert always.first == 1 and "already true at A" in (always.note or "")
    assert restored == [1]
    restored.clear()
    never = bisect([1, 2, 3], restored.append, lambda: (False, "0"))
    assert never.first is None and "false at B too" in (never.note or "")
    assert restored == [1, 3] and never.restored == 3


def test_bisect_arguments_keep_the_expression_as_typed() -> None:
    assert split_arguments("1 8 head->next->prev != head") == (
        {}, ["1", "8"], "head->next->prev != head")
    assert split_arguments("--store '/tmp/a b' --accept-loss first last  c == 'x' && n") == (
        {"store": "/tmp/a b", "accept_loss": True}, ["first", "last"], "c == 'x' && n")
    with pytest.raises(ValueError, match="unknown option --bogus"):
        split_arguments("--bogus 1 2 x")


def test_img_diff_script_on_two_images(tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    image_file.save(str(a), _image())
    image_file.save(str(b), _image({synthetic.HEAP + 0x2000: b"CHANGED!"}, _grow))
    script = str(ROOT / "scripts" / "img-diff")
    text = subprocess.run([sys.executable, script, str(a), str(b)], capture_output=True,
                          text=True, check=True).stdout
    assert "[heap] 0x602000-0x602008: 8 bytes" in text, text
    shape = json.loads(subprocess.run([sys.executable, script, str(a), str(b), "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    assert shape["pages"]["changed"] == 1
    missing = subprocess.run([sys.executable, script, str(a), "live"], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "needs a debugger" in missing.stderr


# --- GDB ------------------------------------------------------------------------------------

GLOBALS = ("counter (int) at", ": 1 -> 5", "origin (struct point) at",
           "{x = 3, y = 4} -> {x = 3, y = 9}", "table (long [4]) at",
           "{10, 20, 30, 40} -> {10, 20, 33, 40}", "hidden (int) at", ": 7 -> 8")


def _globals_session(gdb: Gdb, tmp_path: Path) -> tuple[Path, Path]:
    """Dumps at the two checkpoints of compare_globals; stopped at the second."""
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    gdb.console("break checkpoint")
    gdb.until_stopped(f"run > {tmp_path / 'out'}")
    gdb.console(f"img-dump {a}")
    gdb.until_stopped("continue")
    gdb.console(f"img-dump {b}")
    return a, b


def _changed_pages(text: str) -> None:
    """At least the data, heap and stack pages (3; the C library's own state may add one)."""
    found = re.search(r"^pages: (\d+) changed \(\d+ KiB\) in \d+ ranges?: ", text, re.MULTILINE)
    assert found is not None and int(found.group(1)) >= 3, text


def _check_globals_diff(text: str) -> None:
    _changed_pages(text)
    for piece in (*GLOBALS, "registers:\n  thread ", "rdi 0x1 -> 0x2", "VMAs: the same",
                  "[heap] ", ": 16 bytes",
                  "stacks:\n  thread", "#1 work "):
        assert piece in text, text


@needs_gdb
def test_img_diff_gdb_images_json_and_live(tmp_path: Path) -> None:
    binary = compile_program("compare_globals", tmp_path)
    gdb = Gdb(str(binary))
    try:
        a, b = _globals_session(gdb, tmp_path)
        _check_globals_diff(gdb.console(f"img-diff {a} {b}"))
        live = gdb.console(f"img-diff {a} live")
        _check_globals_diff(live)
        assert "b = live" in live
        shape = json.loads(gdb.console(f"img-diff {a} {b} --json"))
        assert set(shape) == {"a", "b", "threads", "vmas", "pages", "variables", "heap",
                              "stacks", "other"}
        counter = next(v for v in shape["variables"] if v["name"] == "counter")
        assert (counter["type"], counter["old"], counter["new"]) == ("int", "1", "5")
        assert counter["file"] == str(binary) and counter["size"] == 4
        assert shape["pages"]["changed"] >= 3
        assert shape["threads"][0]["registers"]["rdi"] == [1, 2]
        same = gdb.console(f"img-diff {b} live")
        assert "pages: none changed" in same and "variables:" not in same, same
        with pytest.raises(GdbError, match="no checkpoint store|no checkpoint"):
            gdb.console(f"img-diff {a} 7 --store {tmp_path / 'none'}")
    finally:
        gdb.close()


def _checkpoint_eight(gdb: Gdb, tmp_path: Path, store: Path) -> None:
    """compare_list with a checkpoint saved at each of its 8 checkpoint() calls (from a
    breakpoint command list too: test_gdb_mi.test_checkpoints_from_a_breakpoint_command_list)."""
    gdb.console("break checkpoint")
    stop = gdb.until_stopped(f"run > {tmp_path / 'out'}")
    for round_no in range(1, 9):
        assert stop.get("reason") == "breakpoint-hit", stop
        gdb.console(f"img-checkpoint --store {store} round{round_no}")
        stop = gdb.until_stopped("continue")
    assert stop.get("reason") == "exited-normally", stop


@needs_gdb
def test_img_bisect_gdb_finds_the_first_corrupt_checkpoint(tmp_path: Path) -> None:
    binary = compile_program("compare_list", tmp_path)
    store = tmp_path / "store"
    gdb = Gdb(str(binary))
    try:
        _checkpoint_eight(gdb, tmp_path, store)
        listed = gdb.console(f"img-checkpoints --store {store}")
        assert "\n8 " in listed, listed
        text = gdb.console(f"img-bisect --store {store} 1 8 head.prev->next != &head",
                           timeout=120)
        steps = [line for line in text.splitlines() if "head.prev->next != &head =" in line]
        assert [line.split(":")[1].strip() for line in steps] == [
            "checkpoint 1 (round1)", "checkpoint 8 (round8)", "checkpoint 4 (round4)",
            "checkpoint 6 (round6)", "checkpoint 5 (round5)"], text
        assert steps[0].endswith("(false)") and steps[1].endswith("(true)"), text
        assert "first true at checkpoint 6 (round6), after 6 restores" in text, text
        assert gdb.console("print round_no").strip().endswith("= 6")
        assert gdb.console("print head.prev->next == head.prev").strip().endswith("= 1")
        stop = gdb.until_stopped("continue")  # resumes from the 6th: round 7 follows
        assert stop.get("reason") == "breakpoint-hit", stop
        assert gdb.console("print round_no").strip().endswith("= 7")
        diff = gdb.console(f"img-diff --store {store} 5 6")
        assert "round_no (int) at" in diff and ": 5 -> 6" in diff, diff
        none = gdb.console(f"img-bisect --store {store} 1 3 round_no > 100", timeout=120)
        assert "false at B too" in none and "left at checkpoint 3 (round3)" in none, none
    finally:
        gdb.close()


# --- LLDB -----------------------------------------------------------------------------------

LLDB_GLOBALS = ("counter (int) at", ": 1 -> 5", "origin (point) at",
                "{x = 3, y = 4} -> {x = 3, y = 9}", "table (long[4]) at",
                "{10, 20, 30, 40} -> {10, 20, 33, 40}", "hidden (int) at", ": 7 -> 8")


@needs_lldb
def test_img_diff_lldb_images_json_and_live(tmp_path: Path) -> None:
    binary = compile_program("compare_globals", tmp_path)
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    done = lldb_batch(f"settings set target.output-path {tmp_path / 'out'}",
                      "breakpoint set -n checkpoint", "run", f"img-dump {a}", "continue",
                      f"img-dump {b}", f"img-diff {a} {b}", "script print('== live')",
                      f"img-diff {a} live", "script print('== json')",
                      f"img-diff {a} {b} --json", "script print('== end')", "kill",
                      program=binary)
    out = done.stdout
    assert "error:" not in done.stderr, out + done.stderr
    files, rest = out.split("== live", 1)
    live, rest = rest.split("== json", 1)
    for text in (files, live):
        _changed_pages(text)
        for piece in (*LLDB_GLOBALS, "rdi 0x1 -> 0x2",
                      ": 16 bytes", "#1 work "):
            assert piece in text, out
    assert "b = live" in live
    line = next(x for x in rest.split("== end")[0].splitlines() if x.startswith("{"))
    shape = json.loads(line)
    counter = next(v for v in shape["variables"] if v["name"] == "counter")
    assert (counter["type"], counter["old"], counter["new"]) == ("int", "1", "5")
    assert shape["pages"]["changed"] >= 3


@needs_lldb
def test_img_bisect_lldb_finds_the_first_corrupt_checkpoint(tmp_path: Path) -> None:
    binary = compile_program("compare_list", tmp_path)
    store = tmp_path / "store"
    rounds = []
    for round_no in range(1, 9):
        rounds += [f"img-checkpoint --store {store} round{round_no}", "continue"]
    done = lldb_batch(f"settings set target.output-path {tmp_path / 'out'}",
                      "breakpoint set -n checkpoint", "run", *rounds,
                      f"img-bisect --store {store} 1 8 head.prev->next != &head",
                      "expression round_no", "expression head.prev->next == head.prev",
                      "continue", "expression round_no", "kill",
                      program=binary, timeout=180)
    out = done.stdout
    assert "error:" not in done.stderr, out + done.stderr
    steps = [line for line in out.splitlines() if "head.prev->next != &head =" in line]
    assert [line.split(":")[1].strip() for line in steps] == [
        "checkpoint 1 (round1)", "checkpoint 8 (round8)", "checkpoint 4 (round4)",
        "checkpoint 6 (round6)", "checkpoint 5 (round5)"], out
    assert "first true at checkpoint 6 (round6), after 6 restores" in out, out
    after = out.split("after 6 restores", 1)[1]
    values = re.findall(r"^\((int|bool)\) \$\d+ = (\S+)$", after, re.MULTILINE)
    assert values == [("int", "6"), ("bool", "true"), ("int", "7")], out  # 7: continued
