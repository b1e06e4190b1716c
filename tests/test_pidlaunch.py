"""lldb_img.pidlaunch: the checkpoint's pid for a process started after many short-lived
tasks and a few threads, as LLDB's launch is (no LLDB needed)."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from lldb_img.pidlaunch import launch_with_pid

pytestmark = pytest.mark.skipif(not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK),
                                reason="choosing the next pid needs CAP_SYS_ADMIN or "
                                       "CAP_CHECKPOINT_RESTORE")


def _free_pid() -> int:
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    with open("/proc/sys/kernel/pid_max") as f:
        top = int(f.read())
    pid = last + 200 if last + 200 < top - 100 else 1000
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


def test_launch_after_short_lived_tasks_and_threads_gets_the_pid() -> None:
    stop = threading.Event()
    started: list[threading.Thread] = []

    def launch() -> subprocess.Popen[bytes]:
        for _ in range(6):  # lsb_release and its pipes: each waited for
            subprocess.run(["/bin/true"], check=True)
        for _ in range(3):  # the launcher's threads, alive when the inferior is forked
            thread = threading.Thread(target=stop.wait)
            thread.start()
            started.append(thread)
        return subprocess.Popen(["/bin/sleep", "30"])

    def kill(process: subprocess.Popen[bytes]) -> bool:
        process.kill()
        process.wait()
        stop.set()
        for thread in started:
            thread.join()
        started.clear()
        stop.clear()
        return True

    pid = _free_pid()
    process = launch_with_pid(launch, lambda p: p.pid, kill, pid, tries=8)  # a busy machine
    try:
        assert process.pid == pid
    finally:
        kill(process)
