"""Run inside GDB (`source`): img-restore every image listed in $MUTATION_LIST into the
program stopped at checkpoint(), one result line per image in $MUTATION_RESULTS:
"<path>\t<outcome>\t<message>", where outcome is refused, refused-changed (the inferior's
registers or memory differ after a refusal), restored, or python-error."""

import os
import zlib

import gdb

results = open(os.environ["MUTATION_RESULTS"], "w", buffering=1)  # noqa: SIM115


def to_checkpoint() -> None:
    gdb.execute("run > /dev/null", to_string=True)


def snapshot() -> tuple[str, int]:
    regs = gdb.execute("info registers rip rsp rbp rbx fs_base eflags", to_string=True)
    inferior = gdb.selected_inferior()
    sp = int(gdb.parse_and_eval("$sp")) & ~4095
    return regs, zlib.crc32(inferior.read_memory(sp, 4096))


gdb.execute("set confirm off")
gdb.execute("break checkpoint", to_string=True)
to_checkpoint()
for path in open(os.environ["MUTATION_LIST"]).read().split("\n"):
    if not path:
        continue
    results.write(f"{path}\tstarted\t\n")
    before = snapshot()
    try:
        gdb.execute(f"img-restore {path}", to_string=True)
        outcome, message = "restored", ""
    except gdb.error as error:
        message = str(error)
        outcome = "python-error" if "Error occurred in Python" in message else "refused"
    if outcome != "restored":
        try:
            alive = gdb.selected_inferior().pid != 0
            if alive and snapshot() != before:
                outcome = "refused-changed"
            elif not alive:
                outcome = "refused-killed"
        except gdb.error as error:
            outcome, message = "refused-changed", f"{message} / then: {error}"
    results.write(f"{path}\t{outcome}\t{message}\n")
    if outcome != "refused" or not gdb.selected_inferior().pid:
        gdb.execute("kill", to_string=True) if gdb.selected_inferior().pid else None
        gdb.execute("delete", to_string=True)
        gdb.execute("file " + os.environ["MUTATION_PROGRAM"], to_string=True)
        gdb.execute("break checkpoint", to_string=True)
        to_checkpoint()
results.write("DONE\n")
