"""Checks an image as a whole before anything uses it; each class of damage has its own message."""

from __future__ import annotations

import bisect
import struct

from binfmt_img.errors import ImageError
from binfmt_img.formats.model import (
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    MAP_TYPE,
    PAGE_SIZE,
    USER_ADDRESS_LIMIT,
    USER_TOP,
    VMA_FLAGS,
    VSYSCALL_START,
    Image,
    Thread,
    Vma,
)
from binfmt_img.safeio import has_control_characters, printable

# Limits on counts an image gives, far above any real process's, so that a hostile image
# cannot make the restore run for hours: the message names the limit.
MAX_THREADS = 4096
MAX_AUXV = 64  # pairs; the kernel keeps fewer than 30
# The kernel's saved_auxv: AT_VECTOR_SIZE longs, 2 * (3 for x86 + 22 + 1), pairs with AT_NULL.
KERNEL_AUXV = 26
MAX_FILE_OFFSET = 1 << 44  # ext4's largest file with 4 KiB blocks; mmap refuses beyond
ROBUST_LIST_HEAD = 24  # sizeof(struct robust_list_head)
SS_DISABLE, MINSIGSTKSZ = 2, 2048
MAX_XSAVE = 16384  # bytes; every XSAVE component up to AMX tiles fits in 11 KiB
MAX_FD = 1 << 20  # the kernel's NR_OPEN
XSAVE_HEADER = 512  # the XSAVE header: XSTATE_BV, XCOMP_BV, then 48 reserved bytes
EFLAGS_LIMIT = 1 << 32  # the kernel masks the reserved bits below; above, GDB refuses
CANONICAL_LOW, CANONICAL_HIGH = 1 << 47, 0xFFFF800000000000


def _is_vsyscall(vma: Vma) -> bool:
    return vma.start == VSYSCALL_START and vma.end == VSYSCALL_START + PAGE_SIZE


def validate(image: Image, offsets: dict[str, list[int]]) -> None:
    """Raise ImageError for the first problem found, naming the record's byte offset."""
    if not image.threads:
        raise ImageError("image holds no thread")
    if len(image.threads) > MAX_THREADS:
        raise ImageError(f"image holds {len(image.threads)} threads, more than the "
                         f"{MAX_THREADS} this tool restores")
    for thread in image.threads:
        _check_thread(thread)
    _check_paths(image)
    if len(image.auxv) > MAX_AUXV:
        raise ImageError(f"auxiliary vector of {len(image.auxv)} entries, more than "
                         f"{MAX_AUXV}")
    vma_offsets = offsets.get("vmas") or [None] * len(image.vmas)
    previous: Vma | None = None
    for vma, at in sorted(zip(image.vmas, vma_offsets), key=lambda pair: pair[0].start):
        if not (vma.start | vma.end) % PAGE_SIZE and vma.start < vma.end \
                and (vma.end <= USER_ADDRESS_LIMIT or _is_vsyscall(vma)) \
                and not vma.prot & ~7 and not vma.flags & ~(MAP_TYPE | VMA_FLAGS) \
                and vma.flags & MAP_TYPE in (MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE) \
                and (previous is None or vma.start >= previous.end):
            previous = vma
            continue  # well formed: the checks below name the first problem otherwise
        span = f"VMA {vma.start:#x}-{vma.end:#x}"
        if vma.start % PAGE_SIZE or vma.end % PAGE_SIZE:
            raise ImageError(f"{span} is not page aligned", at)
        if vma.end == vma.start:
            raise ImageError(f"{span} is empty", at)
        if vma.end < vma.start:
            raise ImageError(f"{span} is inverted (end before start)", at)
        if vma.end > USER_ADDRESS_LIMIT and not _is_vsyscall(vma):
            raise ImageError(f"{span} lies outside the canonical user address range", at)
        if vma.prot & ~7:
            raise ImageError(f"{span} has protection bits {vma.prot:#x} mmap does not take", at)
        if vma.flags & MAP_TYPE not in (MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE):
            raise ImageError(f"{span} has no valid sharing type in its flags "
                             f"{vma.flags:#x} (mmap takes shared or private)", at)
        if vma.flags & ~(MAP_TYPE | VMA_FLAGS):
            raise ImageError(f"{span} has unknown flag bits "
                             f"{vma.flags & ~(MAP_TYPE | VMA_FLAGS):#x}", at)
        if previous is not None and vma.start < previous.end:
            raise ImageError(f"{span} overlaps VMA {previous.start:#x}-{previous.end:#x}", at)
        previous = vma

    vmas = sorted(image.vmas, key=lambda v: v.start)
    starts = [v.start for v in vmas]
    run_offsets = offsets.get("runs") or [None] * len(image.runs)
    ordered = sorted(zip(image.runs, run_offsets), key=lambda pair: pair[0].vaddr)
    image.runs = [run for run, _ in ordered]
    last_end = 0
    for run, at in ordered:
        if run.vaddr % PAGE_SIZE:
            raise ImageError(f"page {run.vaddr:#x} is not page aligned", at)
        if run.vaddr < last_end:
            raise ImageError(f"page {run.vaddr:#x} is stored twice", at)
        last_end = run.end
        # The run must be covered by VMAs, possibly several adjacent ones.
        addr = run.vaddr
        while addr < run.end:
            i = bisect.bisect_right(starts, addr) - 1
            if i < 0 or addr >= vmas[i].end:
                raise ImageError(f"page {addr:#x} lies outside every VMA", at)
            vma = vmas[i]
            if vma.is_shared and vma.is_file:
                raise ImageError(f"page {addr:#x} would land in shared file mapping "
                                 f"{vma.path}", at)
            addr = vma.end
    seen: set[int] = set()
    for f in image.files or []:
        if f.fd < 0 or f.fd in seen:
            raise ImageError(f"open file record for fd {f.fd} is negative or repeated")
        if f.fd >= MAX_FD:
            raise ImageError(f"open file record for fd {f.fd}, above the kernel's limit "
                             f"{MAX_FD}")
        seen.add(f.fd)


def check_restorable(image: Image) -> None:
    """What the kernel would refuse at a restore, beyond the layout validate() checks: run
    before the first change, so that a refusal leaves the inferior untouched."""
    if not image.vmas:
        raise ImageError("image holds no VMA: nothing to restore")
    auxv_pairs = len(image.auxv) + (0 if image.auxv and image.auxv[-1][0] == 0 else 1)
    if auxv_pairs > KERNEL_AUXV:
        raise ImageError(f"auxiliary vector of {auxv_pairs} entries; the kernel keeps at "
                         f"most {KERNEL_AUXV} (prctl PR_SET_MM_MAP refuses more)")
    _check_auxv(image)
    for vma in image.vmas:
        span = f"VMA {vma.start:#x}-{vma.end:#x}"
        if vma.is_file and vma.pgoff * PAGE_SIZE + vma.size > MAX_FILE_OFFSET:
            raise ImageError(f"{span}: file offset {vma.pgoff * PAGE_SIZE:#x} lies beyond "
                             "what file systems allow")
    for thread in image.threads:
        alt = thread.altstack
        if not alt.flags & SS_DISABLE and alt.size < MINSIGSTKSZ:
            raise ImageError(f"thread {thread.tid}: alternate signal stack of {alt.size} "
                             f"bytes; sigaltstack refuses less than {MINSIGSTKSZ}")
        if thread.robust_list and thread.robust_list_len != ROBUST_LIST_HEAD:
            raise ImageError(f"thread {thread.tid}: robust list head of "
                             f"{thread.robust_list_len} bytes; the kernel takes "
                             f"{ROBUST_LIST_HEAD}")
    _check_mm(image)


def _canonical(value: int) -> bool:
    return value < CANONICAL_LOW or value >= CANONICAL_HIGH


def _check_thread(thread: Thread) -> None:
    """Register values the kernel or the CPU would refuse, found before any change."""
    regs, who = thread.registers, f"thread {thread.tid}"
    for name in ("rip", "rsp", "fs_base", "gs_base"):
        value = regs.get(name, 0)
        if not 0 <= value < 1 << 64 or not _canonical(value):
            raise ImageError(f"{who}: {name} {value:#x} is not a canonical address")
    if regs.get("rip", 0) >= USER_ADDRESS_LIMIT:
        raise ImageError(f"{who}: rip {regs['rip']:#x} lies in kernel space")
    if regs.get("eflags", 0) >= EFLAGS_LIMIT:
        raise ImageError(f"{who}: eflags {regs['eflags']:#x} has bits above bit 31")
    for name in ("ds", "es", "fs", "gs"):
        value = regs.get(name, 0)
        if value >= 1 << 16 or (value and value & 3 != 3):
            raise ImageError(f"{who}: {name} selector {value:#x} is not a user selector")
    if thread.altstack.flags & ~0x80000003 & 0xFFFFFFFF:
        raise ImageError(f"{who}: alternate signal stack flags {thread.altstack.flags:#x}")
    if thread.xsave is not None:
        _check_xsave(thread.xsave.data, thread.xsave.features, who)


def _check_xsave(data: bytes, features: int, who: str) -> None:
    """What makes xrstor raise #GP (and the kernel kill the inferior with SIGSEGV): a
    compacted or malformed header, reserved MXCSR bits."""
    if len(data) > MAX_XSAVE:
        raise ImageError(f"{who}: XSAVE area of {len(data)} bytes, more than {MAX_XSAVE}")
    if len(data) < XSAVE_HEADER + 64:
        raise ImageError(f"{who}: XSAVE area of {len(data)} bytes, shorter than its header")
    xstate_bv, xcomp_bv = struct.unpack_from("<QQ", data, XSAVE_HEADER)
    if xcomp_bv or any(data[XSAVE_HEADER + 16:XSAVE_HEADER + 64]):
        raise ImageError(f"{who}: XSAVE header is not in the standard format")
    if xstate_bv & ~features:
        raise ImageError(f"{who}: XSAVE header holds components {xstate_bv:#x} outside its "
                         f"feature mask {features:#x}")
    mxcsr, mask = struct.unpack_from("<II", data, 24)
    if mxcsr & ~(mask or 0xFFBF):
        raise ImageError(f"{who}: MXCSR {mxcsr:#x} sets reserved bits")


def _check_paths(image: Image) -> None:
    """No control characters in any path or name: they would be handed to the debugger or
    printed on the user's terminal (where an escape sequence can fake a line)."""
    named = [("the executable path", image.exe_path or ""), ("the working directory",
             image.cwd or "")]
    # Each distinct text once (tens of thousands of VMAs share a few paths); named on a find.
    bad = {text for text in {v.path or "" for v in image.vmas} | {v.name or "" for v in
                                                                  image.vmas}
           if has_control_characters(text)}
    named += [(f"VMA {v.start:#x}", v.path or "") for v in image.vmas if v.path in bad]
    named += [(f"VMA {v.start:#x} name", v.name or "") for v in image.vmas if v.name in bad]
    named += [(f"fd {f.fd}", f.path) for f in image.files or []]
    for what, text in named:
        if has_control_characters(text):
            raise ImageError(f"{what} holds control characters: {printable(text)!r}")


MM_ADDRESSES = ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                "start_stack", "arg_start", "arg_end", "env_start", "env_end")
MM_ORDER = (("start_code", "end_code", False), ("start_data", "end_data", True),
            ("start_brk", "brk", True), ("arg_start", "arg_end", True),
            ("env_start", "env_end", True))


def _mmap_min_addr() -> int:
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65536


def _check_mm(image: Image) -> None:
    """The rules prctl(PR_SET_MM_MAP) applies, for the mm fields a restore will give it
    (restore.py skips an image whose fields are missing)."""
    mm = image.mm
    if not all(mm.get(n) for n in MM_ADDRESSES if n not in ("start_data", "end_data")):
        return
    low = _mmap_min_addr()
    for name in MM_ADDRESSES:
        if not low <= mm.get(name, 0) < USER_TOP:
            raise ImageError(f"mm field {name} {mm.get(name, 0):#x} lies outside "
                             f"{low:#x}-{USER_TOP:#x}, which the kernel refuses")
    for first, second, equal_ok in MM_ORDER:
        a, b = mm[first], mm[second]
        if a > b or (a == b and not equal_ok):
            raise ImageError(f"mm fields out of order: {first} {a:#x}, {second} {b:#x}")


# auxv entries that hold addresses in the process (AT_PHDR, AT_BASE, AT_ENTRY, AT_PLATFORM,
# AT_BASE_PLATFORM, AT_RANDOM, AT_EXECFN, AT_SYSINFO_EHDR): the debugger reads the program
# and its libraries from them after the restore.
AUXV_ADDRESSES = (3, 7, 9, 15, 24, 25, 31, 33)
AT_NULL, AT_PAGESZ = 0, 6
AUXV_NEEDED = ((3, "AT_PHDR"), (6, "AT_PAGESZ"), (9, "AT_ENTRY"))


def _check_auxv(image: Image) -> None:
    """The auxiliary vector as the kernel makes it: known types, each once, AT_NULL last,
    the page size, and addresses inside the image's memory."""
    seen: set[int] = set()
    spans = sorted((v.start, v.end) for v in image.vmas)
    starts = [start for start, _ in spans]
    for i, (kind, value) in enumerate(image.auxv):
        if kind >= 64 or kind in seen or (kind == AT_NULL and i != len(image.auxv) - 1):
            raise ImageError(f"auxiliary vector entry {i}: type {kind} is unknown, repeated "
                             "or a terminator before the end")
        seen.add(kind)
        if kind == AT_PAGESZ and value != PAGE_SIZE:
            raise ImageError(f"auxiliary vector: page size {value}, not {PAGE_SIZE}")
        if kind in AUXV_ADDRESSES and value:
            at = bisect.bisect_right(starts, value) - 1
            if at < 0 or value >= spans[at][1]:
                raise ImageError(f"auxiliary vector: entry type {kind} points at {value:#x}, "
                                 "outside the image's memory")
    missing = [name for kind, name in AUXV_NEEDED if kind not in seen]
    if image.auxv and missing:  # the kernel gives every program these; debuggers need them
        raise ImageError(f"auxiliary vector without {', '.join(missing)}")
