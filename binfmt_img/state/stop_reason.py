"""Why the process was stopped at the dump: the siginfo of the selected thread's stop (a
breakpoint's SIGTRAP with si_code SI_KERNEL, a single step's TRAP_TRACE, a signal with its
sender and value), as the debugger showed it in `$_siginfo`.

The adapter reads it before the dump's first injected step (each step is a stop of its own)
and puts it back afterwards: `Target.stop_siginfo()`, optional; without it nothing is
recorded. The restore changes nothing in the inferior for it: the adapter makes its last stop
at the checkpoint report this siginfo (GDB: PTRACE_SETSIGINFO on the stopped thread).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from construct import Bytes, Int32ul, Struct

from binfmt_img.formats.model import signal_name
from binfmt_img.live import syscalls as sc
from binfmt_img.state import Kind

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

SIGINFO_SIZE = 128
Record = Struct("tid" / Int32ul, "siginfo" / Bytes(SIGINFO_SIZE))
SI_KERNEL, TRAP_BRKPT, TRAP_TRACE = 0x80, 1, 2


def dump(plan: DumpPlan) -> dict | None:
    read = getattr(plan.target, "stop_siginfo", None)
    info = read() if read is not None else None
    if info is None or len(info) != SIGINFO_SIZE or not valid(info):
        return None
    return {"tid": plan.threads[0].tid if plan.threads else 0, "siginfo": bytes(info)}


def valid(info: bytes) -> bool:
    """A signal number the kernel knows (the image is untrusted input)."""
    return 1 <= signal_number(info) <= sc.NSIG


def signal_number(info: bytes) -> int:
    return struct.unpack_from("<i", info)[0]


def check(plan: RestorePlan, value) -> None:
    if not valid(value.siginfo):
        plan.report.warnings.append(f"the checkpoint's stop names signal "
                                    f"{signal_number(value.siginfo)}: not reported")


def describe(value) -> str:
    number, _, code = struct.unpack_from("<iii", value.siginfo)
    what = {SI_KERNEL: "a breakpoint", TRAP_BRKPT: "a breakpoint",
            TRAP_TRACE: "a single step"}.get(code, "") if number == 5 else ""
    return (f"thread {value.tid}: {signal_name(number)} (si_code {code:#x}"
            + (f", {what})" if what else ")"))


KIND = Kind(id=50, name="stop_reason", record=Record, dump=dump, check=check,
            describe=describe)
