"""Make LLDB's module list match a restored image: its files at the image's load addresses.

LLDB cannot be told to rescan a process it already debugs (its dynamic loader plugin reads
the link map only at launch, attach and its link-map breakpoint), and re-attaching would cut
the inferior off LLDB's terminal. So the modules are set here, as that plugin would set them:
the executable, then each entry of the restored dynamic linker's link map, under the name the
link map gives (so that after a later dlopen the plugin finds them rather than adding them a
second time), at the address where the image maps the file (v1) or the link map's l_addr (v0
images name no files). A static executable has no link map: its mapped ELF files are used.
"""

from __future__ import annotations

import os
import struct

import lldb

from binfmt_img.formats.model import PAGE_SIZE, Image, Vma
from binfmt_img.live.procfs import read_auxv
from binfmt_img.safeio import open_regular_file
from lldb_img import relocation

VDSO = "[vdso]"
AT_PHDR, AT_PHNUM, AT_BASE = 3, 5, 7
PT_DYNAMIC, PT_PHDR = 2, 6
DT_NULL, DT_DEBUG = 0, 21
LIMIT = 4096  # link map entries, dynamic entries: a guard against corrupt memory
Key = tuple[int, int] | str


def _identity(path: str) -> Key:
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def _is_elf(path: str) -> bool:
    try:
        with open_regular_file(path) as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _file_vmas(image: Image) -> dict[Key, list[Vma]]:
    out: dict[Key, list[Vma]] = {}
    for vma in sorted(image.vmas, key=lambda v: v.start):
        if vma.path is not None:
            out.setdefault(_identity(vma.path), []).append(vma)
        elif vma.name == VDSO:
            out.setdefault(VDSO, []).append(vma)
    return out


class _Memory:
    """Little-endian reads of the restored process; None once anything is unreadable."""

    def __init__(self, process: lldb.SBProcess) -> None:
        self.process = process

    def u64s(self, addr: int, count: int) -> tuple[int, ...] | None:
        error = lldb.SBError()
        data = self.process.ReadMemory(addr, 8 * count, error)
        return None if error.Fail() or data is None else struct.unpack(f"<{count}Q", data)

    def string(self, addr: int) -> str:
        error = lldb.SBError()
        text = self.process.ReadCStringFromMemory(addr, 4096, error) if addr else ""
        return "" if error.Fail() else text or ""


def _auxv(process: lldb.SBProcess, image: Image) -> dict[int, int]:
    """The image's auxv; a v0 image has none: the process's own then, right when it runs
    the image's executable."""
    try:
        return dict(image.auxv or read_auxv(process.GetProcessID()))
    except OSError:
        return {}


def _r_debug(memory: _Memory, auxv: dict[int, int]) -> int | None:
    """The executable's DT_DEBUG entry, found from the auxv's program headers."""
    phdr, phnum = auxv.get(AT_PHDR), auxv.get(AT_PHNUM, 0)
    if not phdr:
        return None
    headers = []
    for i in range(min(phnum, 64)):
        raw = memory.u64s(phdr + 56 * i, 7)  # type|flags, offset, vaddr, paddr, sizes, align
        if raw is None:
            return None
        headers.append((raw[0] & 0xFFFFFFFF, raw[2]))
    bias = next((phdr - vaddr for kind, vaddr in headers if kind == PT_PHDR), None)
    dynamic = next((vaddr for kind, vaddr in headers if kind == PT_DYNAMIC), None)
    if bias is None or dynamic is None:
        return None
    for i in range(LIMIT):
        entry = memory.u64s(bias + dynamic + 16 * i, 2)
        if entry is None or entry[0] == DT_NULL:
            return None
        if entry[0] == DT_DEBUG:
            return entry[1] or None
    return None


def _link_map(process: lldb.SBProcess, auxv: dict[int, int]) -> list[tuple[str, int]]:
    """(l_name, l_addr) of each loaded object; the executable's name is ""."""
    memory = _Memory(process)
    r_debug = _r_debug(memory, auxv)
    head = memory.u64s(r_debug + 8, 1) if r_debug else None  # r_debug.r_map
    entry = head[0] if head else 0
    out = []
    for _ in range(LIMIT):
        raw = memory.u64s(entry, 4) if entry else None  # l_addr, l_name, l_ld, l_next
        if raw is None:
            break
        out.append((memory.string(raw[1]), raw[0]))
        entry = raw[3]
    return out


def _slide(module: lldb.SBModule, vmas: list[Vma]) -> int | None:
    """Load bias such that a PT_LOAD segment's first page sits at the VMA mapping it."""
    segments = [s for s in module.sections if s.GetName().startswith("PT_LOAD")]
    for vma in vmas:
        for segment in segments:
            page = segment.GetFileAddress() & ~(PAGE_SIZE - 1)
            if vma.name == VDSO or segment.GetFileOffset() // PAGE_SIZE == vma.pgoff:
                return vma.start - page
    return None


def _moved(image: Image, name: str) -> str:
    """The file a restore used for a link map name: the name itself unless --exe, --map,
    --sysroot or a packed copy moved it (the link map may say /lib/... for /usr/lib/...)."""
    if not name or not image.moved:
        return name
    if name in image.moved:
        return image.moved[name]
    base = os.path.basename(name)
    found = {new for old, new in image.moved.items() if os.path.basename(old) == base}
    return found.pop() if len(found) == 1 else name


def _plan(target: lldb.SBTarget, image: Image,
          auxv: dict[int, int]) -> list[tuple[str, Key, int | None]]:
    """(path to load, file identity, l_addr if known) in load order, the executable first."""
    exe = image.exe_path if image.exe_path and os.path.exists(image.exe_path) else None
    exe = exe or target.GetExecutable().fullpath or ""
    entries = _link_map(target.GetProcess(), auxv)
    plan: list[tuple[str, Key, int | None]] = []
    if entries:
        for name, l_addr in entries:
            used = _moved(image, name)
            if not name:
                if exe:
                    plan.append((exe, _identity(exe), l_addr))
            elif os.path.isabs(used) and os.path.exists(used):
                # A moved file under its link map name, which LLDB's search paths lead to
                # the file used: the loader plugin then finds it rather than adding another.
                plan.append((used, _identity(used), l_addr))
            elif name.startswith("linux-vdso") or name.startswith("linux-gate"):
                plan.append((VDSO, VDSO, l_addr))
    else:  # a static executable, or no readable link map: every mapped ELF file
        for key, vmas in _file_vmas(image).items():
            path = vmas[0].path or VDSO
            if key == VDSO or _is_elf(path):
                plan.append((path, key, None))
        plan.sort(key=lambda item: item[0] != exe)
    return plan


def sync_modules(target: lldb.SBTarget, image: Image) -> list[str]:
    """Drop every module, then add the restored process's ones at their load addresses.
    ld.so is removed and added back as the same module object, which re-arms LLDB's
    link-map breakpoint in the restored memory. Returns warnings."""
    vmas = _file_vmas(image)
    auxv = _auxv(target.GetProcess(), image)
    plan = _plan(target, image, auxv)
    if not plan:
        return ["neither a link map nor mapped files in the image: LLDB's modules unchanged"]
    at_base = auxv.get(AT_BASE, 0)
    interpreter = next((_identity(v.path) for v in image.vmas if v.path and v.start == at_base),
                       None)
    old: dict[Key, lldb.SBModule] = {}
    for module in list(target.modules):
        path = module.GetFileSpec().fullpath or ""
        key = VDSO if module.GetFileSpec().GetFilename() == VDSO else _identity(path)
        old.setdefault(key, module)
        target.RemoveModule(module)
    warnings = []
    for path, key, l_addr in plan:
        reuse = key == VDSO or key == interpreter or bool(at_base and l_addr == at_base)
        module = old.get(key) if reuse else None
        if module is not None:
            target.AddModule(module)
        elif key == VDSO:
            continue  # LLDB read no vDSO at launch: nothing to add back
        else:
            module = relocation.add_module(target, image, path)
            if not module.IsValid():
                warnings.append(f"LLDB could not load {path}")
                continue
        slide = _slide(module, vmas[key]) if key in vmas else l_addr
        if slide is None:
            warnings.append(f"no load address for {path}: left unloaded")
            continue
        error = target.SetModuleLoadAddress(module, slide)
        if error.Fail():
            warnings.append(f"loading {path} at {slide:#x}: {error.GetCString()}")
    return warnings
