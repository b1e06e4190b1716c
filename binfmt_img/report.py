"""What an image holds, as text or JSON; shared by `img-info` in GDB, LLDB and scripts/."""

from __future__ import annotations

import bisect
import signal
from typing import Any

from tabulate import tabulate

from . import state, v0, v1
from .model import (
    ALL_REGISTERS,
    FD_DEVICE,
    FD_DIRECTORY,
    FD_FILE,
    FD_OTHER,
    MAP_ANONYMOUS,
    MAP_GROWSDOWN,
    PAGE_SIZE,
    SEGMENT_REGISTERS,
    Image,
    PageRun,
    Thread,
    Vma,
    prot_text,
)

VERSIONS = {"v0": v0.VERSION, "v1": v1.VERSION}
DISASSEMBLE_COUNT = 8
AUXV_NAMES = {
    0: "AT_NULL", 3: "AT_PHDR", 4: "AT_PHENT", 5: "AT_PHNUM", 6: "AT_PAGESZ", 7: "AT_BASE",
    8: "AT_FLAGS", 9: "AT_ENTRY", 11: "AT_UID", 12: "AT_EUID", 13: "AT_GID", 14: "AT_EGID",
    15: "AT_PLATFORM", 16: "AT_HWCAP", 17: "AT_CLKTCK", 23: "AT_SECURE",
    24: "AT_BASE_PLATFORM", 25: "AT_RANDOM", 26: "AT_HWCAP2", 31: "AT_EXECFN",
    27: "AT_RSEQ_FEATURE_SIZE", 28: "AT_RSEQ_ALIGN", 33: "AT_SYSINFO_EHDR",
    51: "AT_MINSIGSTKSZ",
}
EFLAGS_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
               (10, "DF"), (11, "OF"))
XSAVE_FEATURES = ((0, "x87"), (1, "SSE"), (2, "AVX"), (3, "BNDREGS"), (4, "BNDCSR"),
                  (5, "opmask"), (6, "ZMM_Hi256"), (7, "Hi16_ZMM"), (9, "PKRU"),
                  (17, "XTILECFG"), (18, "XTILEDATA"))
GDT_ENTRY_TLS_MIN, GDT_ENTRY_TLS_ENTRIES = 12, 3
SS_ONSTACK, SS_DISABLE = 1, 2
FD_KINDS = {FD_FILE: "file", FD_DIRECTORY: "directory", FD_DEVICE: "device", FD_OTHER: "other"}


def selector_name(selector: int) -> str:
    """A segment selector as the seed's codes name it: "user64 cs", "TLS#0", "LDT#3"..."""
    fixed = {0: "null", 0x23: "user32 cs", 0x2B: "user64 ds", 0x33: "user64 cs"}
    if selector in fixed:
        return fixed[selector]
    index, rpl = selector >> 3, selector & 3
    if selector & 4:
        return f"LDT#{index}"
    tls = index - GDT_ENTRY_TLS_MIN
    if 0 <= tls < GDT_ENTRY_TLS_ENTRIES and rpl == 3:
        return f"TLS#{tls}"
    return f"GDT#{index} rpl {rpl}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        rtmin = int(signal.SIGRTMIN)
        return f"SIGRTMIN+{number - rtmin}" if number > rtmin else f"SIG{number}"


def bit_names(value: int, bits: tuple[tuple[int, str], ...]) -> str:
    return " ".join(name for bit, name in bits if value >> bit & 1)


def vma_flags(image: Image, vma: Vma) -> list[str]:
    """The mapping's kind as restore will create it (v0: fd 0 is anonymous, and the VMA
    holding start_stack grows down, as the seed's handler decides)."""
    flags = []
    flags.append("shared" if vma.is_shared else "private")  # MAP_SHARED_VALIDATE is shared
    if vma.flags & MAP_ANONYMOUS or (image.format == "v0" and vma.fd == 0):
        flags.append("anon")
    holds_stack = vma.start <= image.mm.get("start_stack", 0) <= vma.end
    if vma.flags & MAP_GROWSDOWN or (image.format == "v0" and holds_stack):
        flags.append("growsdown")
    return flags


def pages_per_vma(image: Image) -> list[int]:
    """How many stored pages fall in each VMA (runs are sorted and disjoint after parse)."""
    runs = sorted(image.runs, key=lambda run: run.vaddr)
    ends = [run.end for run in runs]
    counts = []
    for vma in image.vmas:
        count = 0
        i = bisect.bisect_right(ends, vma.start)  # the first run ending after vma.start
        while i < len(runs) and runs[i].vaddr < vma.end:
            count += (min(runs[i].end, vma.end) - max(runs[i].vaddr, vma.start)) // PAGE_SIZE
            i += 1
        counts.append(count)
    return counts


def bad_runs(image: Image) -> list[PageRun] | None:
    """The page runs whose crc32 does not match (v1); None when the format has no checksums."""
    return v1.verify_pages(image) if image.format == "v1" else None


def disassemble(image: Image, rip: int, count: int = DISASSEMBLE_COUNT) -> list[str] | None:
    """Instructions at `rip` if its page is in the image; stops where the stored bytes end."""
    # Imported here: capstone loads every architecture, and only this needs it.
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    code = image.read(rip, 15 * count)
    if code is None:
        code = image.read(rip, PAGE_SIZE - rip % PAGE_SIZE)
    if code is None:
        return None
    lines = []
    for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, rip, count):
        lines.append(f"{insn.address:#x}: {insn.mnemonic} {insn.op_str}".rstrip())
    return lines


# --- JSON ---------------------------------------------------------------------------------

def _vma_json(image: Image, vma: Vma, pages: int) -> dict[str, Any]:
    return {"start": vma.start, "end": vma.end, "prot": vma.prot, "perms": prot_text(vma.prot),
            "flags": vma_flags(image, vma), "map_flags": vma.flags, "pgoff": vma.pgoff,
            "path": vma.path, "name": vma.name, "pages": pages}


def _thread_json(thread: Thread) -> dict[str, Any]:
    xsave = thread.xsave
    return {"tid": thread.tid, "sigmask": thread.sigmask,
            "clear_child_tid": thread.clear_child_tid,
            "altstack": {"sp": thread.altstack.sp, "size": thread.altstack.size,
                         "flags": thread.altstack.flags},
            "xsave": {"size": len(xsave.data), "features": xsave.features} if xsave else None}


def report_json(image: Image, bad: list[PageRun] | None = None) -> dict[str, Any]:
    """Everything as plain JSON values; `bad` (from bad_runs) adds a "verify" member."""
    regs = image.registers
    result: dict[str, Any] = {
        "format": image.format,
        "version": VERSIONS[image.format],
        "registers": {name: regs[name] for name in ALL_REGISTERS if name in regs},
        "segments": {name: selector_name(regs[name]) for name in SEGMENT_REGISTERS
                     if name in regs},
        "mm": dict(image.mm),
        "exe_path": image.exe_path,
        "auxv": [{"type": t, "name": AUXV_NAMES.get(t), "value": v} for t, v in image.auxv],
        "vmas": [_vma_json(image, vma, n) for vma, n in zip(image.vmas, pages_per_vma(image))],
        "pages": image.page_count,
        "bytes": image.page_count * PAGE_SIZE,
        "threads": len(image.threads),
        "thread_list": [_thread_json(thread) for thread in image.threads],
        "sigactions": [{"signal": i + 1, "name": signal_name(i + 1), "handler": s.handler,
                        "flags": s.flags, "restorer": s.restorer, "mask": s.mask}
                       for i, s in enumerate(image.sigactions) if s.handler != 0],
    }
    if image.format == "v0":
        result["exe_fd"] = image.exe_fd
    if image.files is not None:
        result.update(pid=image.pid, cwd=image.cwd, files=[
            {"fd": f.fd, "kind": FD_KINDS.get(f.kind), "path": f.path, "flags": f.flags,
             "pos": f.pos} for f in image.files])
    if image.states or image.unknown_states:
        result["states"] = {name: _plain(value) for name, value in image.states.items()}
        result["unknown_states"] = image.unknown_states
    if bad is not None:
        result["verify"] = {"ok": not bad, "bad_runs": [
            {"vaddr": run.vaddr, "pages": run.count, "offset": run.offset} for run in bad]}
    return result


# --- text ---------------------------------------------------------------------------------

def _registers_text(image: Image) -> list[str]:
    regs = image.registers
    main = image.main
    lines = [f"registers (thread 1 of {len(image.threads)}, tid {main.tid}):"]
    for name in ALL_REGISTERS:
        if name not in regs:
            continue
        value = regs[name]
        note = ""
        if name in SEGMENT_REGISTERS:
            note = selector_name(value)
        elif name == "eflags":
            note = f"[ {bit_names(value, EFLAGS_BITS)} ]"
        lines.append(f"  {name:<9} {value:#18x}  {note}".rstrip())
    lines.append("  tls       " + "  ".join(f"{value:#018x}" for value in main.tls))
    return lines


def _mm_text(image: Image) -> list[str]:
    lines = ["mm:"] + [f"  {name:<12} {value:#x}" for name, value in image.mm.items()]
    if image.format == "v0":
        lines.append(f"  {'exe_fd':<12} {image.exe_fd}")
    lines.append(f"exe: {image.exe_path or '(not recorded)'}")
    if image.auxv:
        lines.append("auxv:")
        lines += [f"  {AUXV_NAMES.get(t, str(t)):<16} {v:#x}" for t, v in image.auxv]
    return lines


def _vmas_text(image: Image) -> list[str]:
    counts = pages_per_vma(image)
    rows = [[f"{vma.start:#x}", f"{vma.end:#x}", prot_text(vma.prot),
             ",".join(vma_flags(image, vma)), f"{vma.pgoff:#x}", vma.label, pages]
            for vma, pages in zip(image.vmas, counts)]
    table = tabulate(rows, headers=["start", "end", "prot", "flags", "pgoff", "path", "pages"],
                     disable_numparse=True)
    total = image.page_count
    return ["VMAs:", table,
            f"total: {len(image.vmas)} VMAs, {total} pages stored, {total * PAGE_SIZE} bytes"]


def _signals_text(image: Image) -> list[str]:
    if image.format == "v0":
        return ["signal handlers, mask, alt stack: not recorded in v0"]
    main = image.main
    lines = ["signal handlers (not SIG_DFL):"]
    for i, action in enumerate(image.sigactions):
        if action.handler == 0:
            continue
        handler = "SIG_IGN" if action.handler == 1 else f"{action.handler:#x}"
        lines.append(f"  {signal_name(i + 1):<10} {handler}  flags {action.flags:#x}  "
                     f"restorer {action.restorer:#x}  mask {action.mask:#x}")
    if len(lines) == 1:
        lines.append("  (none)")
    blocked = [signal_name(n) for n in range(1, 65) if main.sigmask >> (n - 1) & 1]
    lines.append(f"signal mask: {main.sigmask:#x} {' '.join(blocked)}".rstrip())
    alt = main.altstack
    state = "disabled" if alt.flags & SS_DISABLE else "on stack" if alt.flags & SS_ONSTACK else ""
    lines.append(f"alt stack: sp {alt.sp:#x} size {alt.size:#x} flags {alt.flags:#x} {state}"
                 .rstrip())
    return lines


def _threads_text(image: Image) -> list[str]:
    xsave = image.main.xsave
    if xsave is None:
        lines = ["xsave: not recorded in v0" if image.format == "v0" else "xsave: none"]
    else:
        features = bit_names(xsave.features, XSAVE_FEATURES)
        lines = [f"xsave: {len(xsave.data)} bytes, features {xsave.features:#x} {features}"]
    tids = ", ".join(str(thread.tid) for thread in image.threads)
    lines.append(f"threads: {len(image.threads)} (tids {tids})")
    if len(image.threads) > 1:
        for thread in image.threads:
            regs = thread.registers
            lines.append(f"  tid {thread.tid}: rip {regs.get('rip', 0):#x} rsp "
                         f"{regs.get('rsp', 0):#x} fs_base {regs.get('fs_base', 0):#x} "
                         f"sigmask {thread.sigmask:#x} tid at {thread.clear_child_tid:#x}")
    return lines


def _files_text(image: Image) -> list[str]:
    if image.files is None:
        return ["open files: not recorded"]
    lines = [f"pid {image.pid}, working directory {image.cwd or '(unknown)'}",
             f"open files: {len(image.files)}"]
    for f in image.files:
        lines.append(f"  fd {f.fd:<4} {FD_KINDS.get(f.kind, '?'):<9} flags {f.flags:#o} "
                     f"pos {f.pos} {f.path}")
    return lines


def _plain(value: Any) -> Any:
    """A parsed construct record as JSON values (Containers are dicts and lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def _states_text(image: Image) -> list[str]:
    lines = []
    for kind in state.KINDS:
        if kind.name in image.states:
            value = image.states[kind.name]
            text = kind.describe(value) if kind.describe else "recorded"
            lines.append(f"{kind.name}: {text}")
    for section in image.unknown_states:
        lines.append(f"unknown state section {section:#x} (a newer binfmt-img's)")
    return lines


def _code_text(image: Image) -> list[str]:
    rip = image.registers.get("rip", 0)
    lines = disassemble(image, rip)
    if lines is None:
        return [f"code at rip {rip:#x}: page not in the image"]
    return [f"code at rip {rip:#x}:"] + [("=> " if i == 0 else "   ") + line
                                          for i, line in enumerate(lines)]


def _verify_text(bad: list[PageRun] | None, runs: int) -> list[str]:
    if bad is None:
        return ["verify: v0 stores no checksums; nothing to check"]
    if not bad:
        return [f"verify: OK, {runs} page runs match their crc32"]
    return [f"verify: {len(bad)} of {runs} page runs are BAD:"] + [
        f"  {run.vaddr:#x}-{run.end:#x} ({run.count} pages at file offset {run.offset:#x})"
        for run in bad]


def report_text(image: Image, verify: bool = False, bad: list[PageRun] | None = None) -> str:
    """The human report; with `verify`, page checksums too (pass `bad` if already computed)."""
    head = (f"image format {image.format} (version {VERSIONS[image.format]:#x}), "
            f"{len(image.vmas)} VMAs, {image.page_count} pages, "
            f"{plural(len(image.threads), 'thread')}")
    lines = [head]
    for part in (_registers_text, _mm_text, _vmas_text, _signals_text, _threads_text,
                 _files_text, _states_text, _code_text):
        lines += part(image)
    if verify:
        lines += _verify_text(bad if bad is not None else bad_runs(image), len(image.runs))
    return "\n".join(lines)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
