"""Small helpers the process-state kinds share: /proc status fields and capability bits,
integers read back from the scratch area. (No KIND here: not a kind of its own.)"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from binfmt_img.live.procfs import proc_file

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

CAP_SYS_PTRACE, CAP_SYS_NICE, CAP_SYS_RESOURCE = 19, 23, 24


def status_fields(text: str) -> dict[str, str]:
    return {key: value.strip() for key, _, value in
            (line.partition(":") for line in text.splitlines()) if value}


def inferior_status(plan: RestorePlan) -> dict[str, str]:
    """/proc/PID/status of the process restored into, wherever it runs."""
    return status_fields(proc_file(plan.target, plan.pid, "status").decode(errors="replace"))


def has_capability(status: dict[str, str], cap: int) -> bool:
    return bool(int(status.get("CapEff", "0"), 16) >> cap & 1)


def debugger_has_capability(cap: int) -> bool:
    """The debugger (the tracer, or with LLDB its lldb-server of the same user) holds cap."""
    with open(f"/proc/{os.getpid()}/status") as f:
        return has_capability(status_fields(f.read()), cap)


def read_u64(plan: DumpPlan | RestorePlan, address: int) -> int:
    return struct.unpack("<Q", plan.target.read_memory(address, 8))[0]


def read_i32(plan: DumpPlan | RestorePlan, address: int) -> int:
    return struct.unpack("<i", plan.target.read_memory(address, 4))[0]


def printable(data: bytes | str) -> str:
    """A name from an image or /proc for a message: control characters shown as '?'."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return "".join(c if c.isprintable() else "?" for c in text)
