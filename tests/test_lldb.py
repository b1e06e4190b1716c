"""The LLDB front end against the real lldb-19: dump at checkpoint(), restore in a fresh LLDB,
and the resumed program's output must complete the uninterrupted run's output exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lldb_helpers import (
    GDB,
    compile_c,
    gdb_batch,
    lldb_batch,
    lldb_missing,
    read,
    run_uninterrupted,
)

from binfmt_img import image_file
from binfmt_img.model import PAGE_SIZE, PROT_EXEC

_MISSING = lldb_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed")

# Signals the programs raise on purpose: LLDB would stop at each one.
QUIET_SIGNALS = "process handle SIGUSR1 SIGUSR2 SIGALRM -s false -n false -p true"

PROGRAMS = {
    # Full buffering (stdout is a file): the image carries unflushed output; the heap grows
    # by brk and by mmap after the restore, and old blocks keep their contents.
    "heap": r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    char *blocks[40];
    unsigned long sum = 0;
    char *start = sbrk(0);
    for (int i = 0; i < 40; i++) {
        if (i == 12) checkpoint();
        size_t size = (size_t)(i + 1) * 1000 * (i % 10 == 9 ? 300 : 1);
        blocks[i] = malloc(size);
        memset(blocks[i], 'a' + i % 26, size);
        for (int j = 0; j <= i; j++) sum += (unsigned char)blocks[j][j * 7 % 1000];
        printf("i=%d size=%zu sum=%lu\n", i, size, sum);
        if (i % 3 == 0) { free(blocks[i]); blocks[i] = malloc(64); memset(blocks[i], 'z', 64); }
    }
    printf("brk grew=%d\n", (char *)sbrk(0) > start);
    return 0;
}
""",
    "tls": r"""
__thread long counter = 40;
__thread char label[16] = "tls-label";
static __thread double scale = 1.5;
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    for (int i = 0; i < 6; i++) {
        if (i == 3) checkpoint();
        counter += i;
        scale *= 2;
        printf("i=%d counter=%ld label=%s scale=%.1f\n", i, counter, label, scale);
    }
    return 0;
}
""",
    "vdso": r"""
#include <sys/time.h>
#include <time.h>
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    struct timespec before, after, real;
    clock_gettime(CLOCK_MONOTONIC, &before);
    printf("monotonic before ok=%d\n", before.tv_sec > 0 || before.tv_nsec > 0);
    checkpoint();
    for (int i = 0; i < 3; i++) {
        clock_gettime(CLOCK_MONOTONIC, &after);
        clock_gettime(CLOCK_REALTIME, &real);
        struct timeval tv;
        gettimeofday(&tv, 0);
        printf("after %d: realtime sane=%d gettimeofday sane=%d monotonic forward=%d\n", i,
               real.tv_sec > 1700000000, tv.tv_sec > 1700000000,
               after.tv_sec > before.tv_sec ||
                   (after.tv_sec == before.tv_sec && after.tv_nsec >= before.tv_nsec));
    }
    return 0;
}
""",
    "signals": r"""
#include <signal.h>
#include <stdlib.h>
#include <string.h>
static char *alt_base;
static volatile int usr1_count, on_alt_stack;
static void on_usr1(int sig) { (void)sig; usr1_count++; }
static void on_usr2(int sig) {
    char here;
    (void)sig;
    on_alt_stack = &here >= alt_base && &here < alt_base + 65536;
}
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    alt_base = malloc(65536);
    stack_t ss = {.ss_sp = alt_base, .ss_size = 65536, .ss_flags = 0};
    sigaltstack(&ss, 0);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR2, &sa, 0);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, 0);
    raise(SIGUSR1);
    printf("before: usr1=%d\n", usr1_count);
    checkpoint();
    raise(SIGUSR1);
    raise(SIGUSR1);
    printf("after: usr1=%d\n", usr1_count);
    raise(SIGTERM); /* blocked: stays pending instead of killing us */
    sigset_t pending;
    sigpending(&pending);
    printf("SIGTERM pending=%d, still alive\n", sigismember(&pending, SIGTERM));
    raise(SIGUSR2);
    printf("usr2 ran on the alternate stack=%d\n", on_alt_stack);
    signal(SIGTERM, SIG_IGN);
    return 0;
}
""",
    "loop": r"""
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    int total = 0;
    for (int i = 0; i < 6; i++) {
        if (i == 3) checkpoint();
        total += i;
        printf("iteration %d total %d\n", i, total); /* loop body */
    }
    return 0;
}
""",
    # A library loaded after the restore: LLDB's loader must still see dlopen.
    "dlopen": r"""
#include <dlfcn.h>
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    printf("before\n");
    checkpoint();
    void *libm = dlopen("libm.so.6", RTLD_NOW);
    double (*root)(double) = (double (*)(double))dlsym(libm, "cbrt");
    printf("dlopen ok=%d cbrt(27)=%.1f\n", libm != 0, root(27.0));
    return 0;
}
""",
    # Interrupted in pselect6 by a signal LLDB keeps from it: the system call must restart.
    "syscall": r"""
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>
int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IOLBF, 0);
    printf("before\n");
    if (argc > 1 && fork() == 0) {
        usleep(150000);
        kill(getppid(), SIGUSR1);
        _exit(0);
    }
    struct timeval tv = {0, 600000};
    int r = select(0, 0, 0, 0, &tv);
    printf("select=%d errno=%d\n", r, r < 0 ? errno : 0);
    printf("after\n");
    return 0;
}
""",
}


def _build(tmp_path: Path, name: str) -> tuple[Path, str]:
    binary = compile_c(PROGRAMS[name], tmp_path, name)
    return binary, run_uninterrupted(binary)


def _dump_in_lldb(binary: Path, image: Path, *setup: str) -> str:
    """Run to checkpoint() under LLDB, dump, kill; returns what the program printed."""
    out = binary.parent / "dump.out"
    result = lldb_batch(f"settings set target.output-path {out}", QUIET_SIGNALS, *setup,
                        "breakpoint set -n checkpoint", "run", f"img-dump {image}", "kill",
                        program=binary)
    assert image.exists(), result.stdout + result.stderr
    return read(out)


def _restore_in_lldb(image: Path, out: Path, *after: str, setup: tuple[str, ...] = ()):
    result = lldb_batch(f"settings set target.output-path {out}", *setup,
                        f"img-restore {image}", QUIET_SIGNALS, *after)
    assert "img-restore:" in result.stdout and "error:" not in result.stderr, (
        result.stdout + result.stderr)
    return result


def _info_json(image: Path) -> str:
    result = lldb_batch(f"img-info {image} --json")
    return next(line for line in result.stdout.splitlines() if line.startswith("{"))


@pytest.mark.parametrize("name", ["heap", "tls", "vdso", "signals"])
def test_restored_output_completes_the_run(tmp_path: Path, name: str) -> None:
    binary, expected = _build(tmp_path, name)
    image = tmp_path / f"{name}.img"
    printed = _dump_in_lldb(binary, image)
    out = tmp_path / "restored.out"
    result = _restore_in_lldb(image, out, "continue")
    assert "exited with status = 0" in result.stdout, result.stdout + result.stderr
    assert printed + read(out) == expected


def test_lldb_view_after_restore(tmp_path: Path) -> None:
    """bt names checkpoint and main; image list has the image's files at their addresses;
    a breakpoint set after the restore is hit; step-over, finish and continue work."""
    binary, expected = _build(tmp_path, "loop")
    image = tmp_path / "loop.img"
    printed = _dump_in_lldb(binary, image)
    line = next(n for n, text in enumerate((tmp_path / "loop.c").read_text().splitlines(), 1)
                if "loop body" in text)
    out = tmp_path / "restored.out"
    result = _restore_in_lldb(
        image, out, "bt", "image list", "finish", f"breakpoint set -f loop.c -l {line}",
        "continue", "frame variable i total", "thread step-over", "continue",
        "frame variable i", "breakpoint disable", "continue")
    text = result.stdout
    bt = text[text.index("(lldb) bt"):text.index("(lldb) image list")]
    assert "loop`checkpoint" in bt and "loop`main" in bt, bt
    modules = text[text.index("(lldb) image list"):text.index("(lldb) finish")]
    assert f"0x0000555555554000 {binary}" in modules, modules
    assert "libc.so.6" in modules and "ld-linux-x86-64.so.2" in modules, modules
    assert "stop reason = step out" in text, text
    assert "stop reason = breakpoint 1.1" in text, text
    assert "(int) i = 3" in text and "(int) total = 6" in text, text
    assert "stop reason = step over" in text, text
    assert "(int) i = 4" in text, text
    assert "exited with status = 0" in text, text
    assert printed + read(out) == expected


def test_dlopen_after_restore_is_seen(tmp_path: Path) -> None:
    """LLDB names the modules as its loader does: a dlopen after the restore adds the new
    library (its pending breakpoint resolves and is hit) and nothing twice."""
    binary, expected = _build(tmp_path, "dlopen")
    image = tmp_path / "dlopen.img"
    printed = _dump_in_lldb(binary, image)
    out = tmp_path / "restored.out"
    result = _restore_in_lldb(image, out, "breakpoint set -n cbrt", "continue", "image list",
                              "continue")
    text = result.stdout
    assert "stop reason = breakpoint 1.1" in text and "libm.so.6`" in text, text
    modules = text[text.index("(lldb) image list"):]
    paths = [line.split()[-1] for line in modules.splitlines() if line.startswith("[")]
    names = [os.path.basename(path) for path in paths]
    assert "libm.so.6" in names and len(names) == len(set(names)), modules
    assert printed + read(out) == expected


def test_v0_image(tmp_path: Path) -> None:
    """The seed's format names no files: the modules come from the restored link map."""
    binary, expected = _build(tmp_path, "loop")
    image = tmp_path / "loop.img"
    out = tmp_path / "dump.out"
    lldb_batch(f"settings set target.output-path {out}", "breakpoint set -n checkpoint", "run",
               f"img-dump {image} --format v0", "kill", program=binary)
    printed = read(out)
    out = tmp_path / "restored.out"
    result = lldb_batch(f"settings set target.output-path {out}", f"img-restore {image}", "bt",
                        "image list", "continue", program=binary)
    assert "loop`main" in result.stdout and "libc.so.6" in result.stdout, result.stdout
    assert printed + read(out) == expected


def test_restore_into_a_live_process_via_debugger(tmp_path: Path) -> None:
    """Into a process LLDB already runs, stopped at a user breakpoint, with glibc's rseq
    area registered (it must be unregistered before the old memory goes)."""
    binary, expected = _build(tmp_path, "tls")
    image = tmp_path / "tls.img"
    printed = _dump_in_lldb(binary, image)
    out = tmp_path / "restored.out"
    result = lldb_batch(f"settings set target.output-path {out}", "breakpoint set -n main",
                        "run", f"img-restore {image} --via debugger", "continue", program=binary)
    assert "via debugger" in result.stdout, result.stdout + result.stderr
    assert "exited with status = 0" in result.stdout, result.stdout + result.stderr
    assert printed + read(out) == expected


def test_registers_lldb_does_not_show_are_set_by_arch_prctl(tmp_path: Path) -> None:
    """An LLDB without fs_base/gs_base: dump reads and restore sets them by arch_prctl."""
    binary, expected = _build(tmp_path, "tls")
    image = tmp_path / "tls.img"
    hide = "script lldb_img.target.LldbTarget.hidden = ('fs_base', 'gs_base')"
    printed = _dump_in_lldb(binary, image, hide)
    info = json.loads(_info_json(image))
    assert info["registers"]["fs_base"] != 0
    out = tmp_path / "restored.out"
    _restore_in_lldb(image, out, "continue", setup=(hide,))
    assert printed + read(out) == expected


def test_interrupted_system_call_restarts(tmp_path: Path) -> None:
    """LLDB cannot write orig_rax: the restart the kernel would make is done by hand, both
    for the process left running after img-dump and for the restored one."""
    binary, expected = _build(tmp_path, "syscall")
    assert expected == "before\nselect=0 errno=0\nafter\n"
    image = tmp_path / "syscall.img"
    dumped = tmp_path / "dump.out"
    result = lldb_batch(f"settings set target.output-path {dumped}",
                        "process handle SIGUSR1 -s true -n true -p false",
                        "process launch -- interrupt", program=binary,
                        on_signal=(f"img-dump {image}", "continue"))
    assert "stop reason = signal SIGUSR1" in result.stdout, result.stdout + result.stderr
    assert read(dumped) == expected  # the live process went on as if never stopped
    out = tmp_path / "restored.out"
    _restore_in_lldb(image, out, "continue")
    assert read(out) == "select=0 errno=0\nafter\n"
    info = json.loads(_info_json(image))
    assert info["registers"]["orig_rax"] == 270  # pselect6, read from /proc/PID/syscall


@needs_gdb
def test_image_dumped_in_gdb_restores_in_lldb(tmp_path: Path) -> None:
    binary, expected = _build(tmp_path, "heap")
    image, dumped = tmp_path / "heap.img", tmp_path / "dump.out"
    result = gdb_batch("break checkpoint", f"run > {dumped}", f"img-dump {image}", "kill",
                       program=binary)
    assert image.exists(), result.stdout + result.stderr
    out = tmp_path / "restored.out"
    result = _restore_in_lldb(image, out, "bt", "continue")
    assert "heap`checkpoint" in result.stdout and "heap`main" in result.stdout, result.stdout
    assert read(dumped) + read(out) == expected


@needs_gdb
def test_image_dumped_in_lldb_restores_in_gdb(tmp_path: Path) -> None:
    binary, expected = _build(tmp_path, "signals")
    image = tmp_path / "signals.img"
    printed = _dump_in_lldb(binary, image)
    out = tmp_path / "restored.out"
    # Start the process with its stdout on a file first; img-restore then restores into it.
    result = gdb_batch("handle SIGUSR1 SIGUSR2 nostop noprint pass", f"file {binary}",
                       f"starti > {out}", f"img-restore {image}", "bt", "continue")
    assert "exited normally" in result.stdout, result.stdout + result.stderr
    assert "img-restore:" in result.stdout, result.stdout + result.stderr
    assert "checkpoint" in result.stdout and "main" in result.stdout, result.stdout
    assert printed + read(out) == expected


def test_dump_holds_no_breakpoint_traps(tmp_path: Path) -> None:
    """LLDB keeps its traps in memory while stopped (the user's at checkpoint, its own in
    ld.so): the code pages an image stores are the files' own bytes."""
    binary, _ = _build(tmp_path, "loop")
    image_path = tmp_path / "loop.img"
    _dump_in_lldb(binary, image_path)
    image = image_file.load(str(image_path))
    checked = 0
    for vma in image.vmas:
        if not (vma.is_file and vma.prot & PROT_EXEC):
            continue
        with open(vma.path, "rb") as f:
            for page in range(vma.start, vma.end, PAGE_SIZE):
                stored = image.page_at(page)
                if stored is not None:
                    f.seek(vma.pgoff * PAGE_SIZE + page - vma.start)
                    assert stored == f.read(PAGE_SIZE).ljust(PAGE_SIZE, b"\0"), hex(page)
                    checked += 1
    assert checked >= 2  # checkpoint's page and ld.so's _dl_debug_state page were written


def test_img_info_and_errors(tmp_path: Path) -> None:
    binary, _ = _build(tmp_path, "loop")
    image = tmp_path / "loop.img"
    _dump_in_lldb(binary, image)
    text = lldb_batch(f"img-info {image} --verify").stdout
    assert "image format v1" in text and "verify: OK" in text, text
    info = json.loads(_info_json(image))
    assert info["format"] == "v1" and info["exe_path"] == str(binary)
    help_text = lldb_batch("help img-restore").stdout
    assert "auto|fast|debugger" in help_text, help_text
    for command, message in (
            (f"img-restore {tmp_path / 'missing.img'}", "No such file or directory"),
            (f"img-info {binary}", "not a core file"),
            ("img-restore", "the following arguments are required: file"),
            (f"img-restore {image} --via teleport", "invalid choice"),
            (f"img-dump {tmp_path / 'x.img'}", "no live process")):
        result = lldb_batch(command)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert "Traceback" not in result.stdout + result.stderr
