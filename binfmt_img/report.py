"""What an image holds, as text or JSON; shared by `img-info` in GDB, LLDB and scripts/."""

from __future__ import annotations

import bisect
import os
import re
import signal
from typing import Any

from tabulate import tabulate

from binfmt_img import state
from binfmt_img.formats import identity, symbols, v0, v1
from binfmt_img.formats.model import (
    ALL_REGISTERS,
    FD_DEVICE,
    FD_DIRECTORY,
    FD_FILE,
    FD_OTHER,
    MAP_ANONYMOUS,
    MAP_GROWSDOWN,
    PAGE_SIZE,
    SEGMENT_REGISTERS,
    BadRun,
    Image,
    Signal,
    Thread,
    Vma,
    prot_text,
    signal_name,
)
from binfmt_img.safeio import open_regular

VERSIONS = {"v0": v0.VERSION, "v1": v1.VERSION}


# What a compressed v1 version's runs may hold (docs/FORMAT.md).
CODEC_NOTES = {0x201: ": pages compressed with zstd", 0x202: ": pages compressed with LZ4"}


def version(image: Image) -> int:
    """The version the image's file says (a compressed v1 image's is 0x201 or 0x202)."""
    source = image.source
    if image.format == "v1" and source is not None and len(source) >= 8:
        found = int.from_bytes(source[4:8], "little")
        if found in v1.VERSIONS:
            return found
    return VERSIONS[image.format]
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
CORE_KINDS = {"kernel": "written by the kernel", "gcore": "written by GDB's gcore"}
# si_code: what raised a signal. Positive codes are the kernel's, and depend on the signal.
SENT_BY = {0: "SI_USER: sent by kill", 0x80: "SI_KERNEL: sent by the kernel",
           -1: "SI_QUEUE: sent by sigqueue", -6: "SI_TKILL: sent by tkill"}
FAULT_CODES = {
    signal.SIGILL: ("ILL_ILLOPC: illegal opcode", "ILL_ILLOPN: illegal operand",
                    "ILL_ILLADR: illegal addressing mode", "ILL_ILLTRP: illegal trap",
                    "ILL_PRVOPC: privileged opcode", "ILL_PRVREG: privileged register",
                    "ILL_COPROC: coprocessor error", "ILL_BADSTK: internal stack error"),
    signal.SIGFPE: ("FPE_INTDIV: integer divide by zero", "FPE_INTOVF: integer overflow",
                    "FPE_FLTDIV: floating-point divide by zero",
                    "FPE_FLTOVF: floating-point overflow", "FPE_FLTUND: floating-point underflow",
                    "FPE_FLTRES: floating-point inexact result",
                    "FPE_FLTINV: invalid floating-point operation",
                    "FPE_FLTSUB: subscript out of range"),
    signal.SIGSEGV: ("SEGV_MAPERR: address not mapped", "SEGV_ACCERR: no permission",
                     "SEGV_BNDERR: failed bounds check", "SEGV_PKUERR: protection key"),
    signal.SIGBUS: ("BUS_ADRALN: misaligned address", "BUS_ADRERR: no such physical address",
                    "BUS_OBJERR: beyond the end of a mapped file",
                    "BUS_MCEERR_AR: memory error", "BUS_MCEERR_AO: memory error"),
    signal.SIGTRAP: ("TRAP_BRKPT: breakpoint", "TRAP_TRACE: single step",
                     "TRAP_BRANCH: branch trap", "TRAP_HWBKPT: hardware watchpoint"),
}
FAULTS = (signal.SIGILL, signal.SIGFPE, signal.SIGSEGV, signal.SIGBUS)


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


def bad_runs(image: Image) -> list[BadRun] | None:
    """The page runs whose crc32 does not match, or whose frames do not decode (v1); None
    when the format has no checksums."""
    return v1.verify_pages(image) if image.format == "v1" else None


def read_code(image: Image, addr: int, size: int) -> tuple[bytes, str | None] | None:
    """Up to `size` bytes at `addr` (fewer where the stored bytes or the mapping end), and the
    file they were read from when the image does not store the page: the mapped file on
    disk, if it is the one the image mapped (a core leaves out unchanged file pages)."""
    code = image.read(addr, size)
    if code is None:
        code = image.read(addr, PAGE_SIZE - addr % PAGE_SIZE)
    if code is not None:
        return code, None
    vma = next((v for v in image.vmas if v.start <= addr < v.end), None)
    if vma is None or vma.path is None or not symbols.unchanged(vma.path, vma):
        return None
    try:
        fd = open_regular(vma.path)
    except OSError:
        return None
    try:
        data = os.pread(fd, min(size, vma.end - addr), vma.pgoff * PAGE_SIZE + addr - vma.start)
    finally:
        os.close(fd)
    return (data, vma.path) if data else None


def disassemble(image: Image, rip: int, count: int = DISASSEMBLE_COUNT,
                names: symbols.Symbols | None = None) -> list[str] | None:
    """Instructions at `rip` if its bytes are in the image (or its mapped file); stops where
    those bytes end. With `names`, addresses and call or jump targets get <symbol+offset>."""
    found = read_code(image, rip, 15 * count)
    return None if found is None else _instructions(found[0], rip, count, names)


def _instructions(code: bytes, rip: int, count: int,
                  names: symbols.Symbols | None) -> list[str]:
    # Imported here: capstone loads every architecture, and only this needs it.
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    def named(addr: int) -> str:
        name = names.name(addr) if names is not None else None
        return f" <{name}>" if name else ""

    lines = []
    for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, rip, count):
        operands = insn.op_str
        relative = re.search(r"\[rip ([+-]) (0x[0-9a-f]+)\]", operands)
        if re.fullmatch(r"0x[0-9a-f]+", operands) and insn.mnemonic.startswith(("call", "j")):
            operands += named(int(operands, 16))
        elif relative:  # rip-relative data, as GDB shows it: "# 0x4010 <counter>"
            target = insn.address + insn.size + int(relative.group(1) + relative.group(2), 16)
            if named(target):
                operands += f"  # {target:#x}{named(target)}"
        lines.append(f"{insn.address:#x}{named(insn.address)}: {insn.mnemonic} {operands}"
                     .rstrip())
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


def report_json(image: Image, bad: list[BadRun] | None = None) -> dict[str, Any]:
    """Everything as plain JSON values; `bad` (from bad_runs) adds a "verify" member."""
    state.decode(image)
    regs = image.registers
    result: dict[str, Any] = {
        "format": image.format,
        "version": version(image),
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
    if image.contents or image.packed:
        result["mapped_files"] = identity.describe_json(image)
    if image.format == "v0":
        result["exe_fd"] = image.exe_fd
    if image.core_kind is not None:
        result["core"] = image.core_kind
    if image.signal is not None:
        sig = image.signal
        result["signal"] = {"number": sig.number, "name": signal_name(sig.number),
                            "code": sig.code, "code_name": signal_code(sig),
                            "address": sig.address if is_fault(sig) else None,
                            "tid": image.main.tid}
    if image.files is not None:
        result.update(pid=image.pid, cwd=image.cwd, files=[
            {"fd": f.fd, "kind": FD_KINDS.get(f.kind), "path": f.path, "flags": f.flags,
             "pos": f.pos} for f in image.files])
    if image.states or image.unknown_states:
        result["states"] = {name: _plain(value) for name, value in image.states.items()}
        result["unknown_states"] = image.unknown_states
    if bad is not None:
        result["verify"] = {"ok": not bad, "bad_runs": [
            {"vaddr": run.vaddr, "pages": run.count, "offset": run.offset,
             "problem": run.problem} for run in bad]}
    return result


# --- text ---------------------------------------------------------------------------------

def _table(rows: list[list[Any]], headers: tuple[str, ...] = (),
           colalign: tuple[str, ...] | None = None) -> list[str]:
    """A table as indented lines (tabulate's plain format, text kept as text)."""
    text = tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True,
                    colalign=colalign)
    return ["  " + line.rstrip() for line in text.splitlines()]


def _registers_text(image: Image) -> list[str]:
    regs = image.registers
    main = image.main
    rows = []
    for name in ALL_REGISTERS:
        if name not in regs:
            continue
        value = regs[name]
        note = ""
        if name in SEGMENT_REGISTERS:
            note = selector_name(value)
        elif name == "eflags":
            note = f"[ {bit_names(value, EFLAGS_BITS)} ]"
        rows.append([name, f"{value:#x}", note])
    lines = [f"registers (thread 1 of {len(image.threads)}, tid {main.tid}):"]
    lines += _table(rows, colalign=("left", "right", "left"))
    lines.append("  tls  " + "  ".join(f"{value:#018x}" for value in main.tls))
    return lines


def _mm_text(image: Image) -> list[str]:
    rows = [[name, f"{value:#x}"] for name, value in image.mm.items()]
    if image.format == "v0":
        rows.append(["exe_fd", str(image.exe_fd)])
    lines = ["mm:"] + _table(rows)
    lines.append(f"exe: {image.exe_path or '(not recorded)'}")
    if image.auxv:
        lines.append("auxv:")
        lines += _table([[AUXV_NAMES.get(t, str(t)), f"{v:#x}"] for t, v in image.auxv])
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
    rows = [[signal_name(i + 1), "SIG_IGN" if action.handler == 1 else f"{action.handler:#x}",
             f"{action.flags:#x}", f"{action.restorer:#x}", f"{action.mask:#x}"]
            for i, action in enumerate(image.sigactions) if action.handler != 0]
    lines = ["signal handlers (not SIG_DFL):"]
    lines += _table(rows, ("signal", "handler", "flags", "restorer", "mask")) if rows else [
        "  (none)"]
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
        rows = [[str(thread.tid), f"{thread.registers.get('rip', 0):#x}",
                 f"{thread.registers.get('rsp', 0):#x}",
                 f"{thread.registers.get('fs_base', 0):#x}", f"{thread.sigmask:#x}",
                 f"{thread.clear_child_tid:#x}"] for thread in image.threads]
        lines += _table(rows, ("tid", "rip", "rsp", "fs_base", "sigmask", "clear_child_tid"))
    return lines


def _files_text(image: Image) -> list[str]:
    if image.files is None:
        return ["open files: not recorded"]
    lines = [f"pid {image.pid}, working directory {image.cwd or '(unknown)'}",
             f"open files: {len(image.files)}"]
    rows = [[str(f.fd), FD_KINDS.get(f.kind, "?"), f"{f.flags:#o}", str(f.pos), f.path]
            for f in image.files]
    return lines + (_table(rows, ("fd", "kind", "flags", "pos", "path")) if rows else [])


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
    found = read_code(image, rip, 15 * DISASSEMBLE_COUNT)
    if found is None:
        vma = next((v for v in image.vmas if v.start <= rip < v.end), None)
        where = (f"; {vma.path} is gone or changed" if vma is not None and vma.path
                 else "" if vma is not None else "; no VMA holds it")
        return [f"code at rip {rip:#x}: page not in the image{where}"]
    code, path = found
    names = symbols.Symbols(image)
    lines = _instructions(code, rip, DISASSEMBLE_COUNT, names)
    source = f" (read from {path}: the image does not store this page)" if path else ""
    return [f"code at rip {rip:#x}{source}:"] + [("=> " if i == 0 else "   ") + line
                                                  for i, line in enumerate(lines)]


def signal_code(sig: Signal) -> str:
    """What raised a signal, from its si_code: "SEGV_MAPERR: address not mapped"."""
    if sig.code > 0:
        names = FAULT_CODES.get(sig.number, ())
        if sig.code <= len(names):
            return names[sig.code - 1]
    return SENT_BY.get(sig.code, f"si_code {sig.code}")


def is_fault(sig: Signal) -> bool:
    """Raised by an instruction: si_addr holds the faulting address."""
    return sig.number in FAULTS and sig.code > 0


def _stop_text(image: Image) -> list[str]:
    sig = image.signal
    if sig is None:
        return []
    where = f", fault address {sig.address:#x}" if is_fault(sig) else ""
    return [f"signal: {signal_name(sig.number)} ({signal_code(sig)}){where}, in thread 1 "
            f"(tid {image.main.tid}) at rip {image.registers.get('rip', 0):#x}"]


def _verify_text(bad: list[BadRun] | None, runs: int, compressed: bool) -> list[str]:
    if bad is None:
        return ["verify: v0 stores no checksums; nothing to check"]
    if not bad:
        decoded = ", compressed ones decode to their pages" if compressed else ""
        return [f"verify: OK, {runs} page runs match their crc32{decoded}"]
    return [f"verify: {len(bad)} of {runs} page runs are BAD:"] + [
        f"  {run.vaddr:#x}-{run.end:#x} ({run.count} pages at file offset {run.offset:#x}):"
        f" {run.problem}" for run in bad]


def report_text(image: Image, verify: bool = False, bad: list[BadRun] | None = None) -> str:
    """The human report; with `verify`, page checksums too (pass `bad` if already computed)."""
    state.decode(image)
    if image.core_kind is not None:
        what = f"ELF core {CORE_KINDS.get(image.core_kind, image.core_kind)}"
    else:
        found = version(image)
        what = f"image format {image.format} (version {found:#x}{CODEC_NOTES.get(found, '')})"
    head = (f"{what}, {len(image.vmas)} VMAs, {image.page_count} pages, "
            f"{plural(len(image.threads), 'thread')}")
    lines = [head]
    for part in (_stop_text, _registers_text, _mm_text, _vmas_text, _signals_text, _threads_text,
                 _files_text, identity.describe, _states_text, _code_text):
        lines += part(image)
    if verify:
        lines += _verify_text(bad if bad is not None else bad_runs(image), len(image.runs),
                              version(image) in CODEC_NOTES)
    return "\n".join(lines)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
