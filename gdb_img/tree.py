"""Process trees in GDB: `img-dump --tree` and the restore of a tree image (docs/TREES.md).

The dump attaches every descendant of the stopped inferior as another inferior (all of them
before any is dumped, so the pipes between them hold still), dumps each through the same
core into FILE.PID, then the root into FILE with the tree's record, and detaches them.

The restore brings the root back as for one process (its state kind makes the shared pipes,
held at high numbers), then forks each child from its restored parent with an injected
clone3 (set_tid asks for the original pid) while GDB follows forks (detach-on-fork off): the
child is a new inferior, restored from its own image, its pipe ends put at their numbers.
A zombie is a child that exits at once with its status, left for its parent to reap.
"""

from __future__ import annotations

import os
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gdb

from binfmt_img import state, tree
from binfmt_img.errors import ImageError, RestoreError
from binfmt_img.fdkinds.pipe import buffered
from binfmt_img.fdkinds.unix import unix_sockets
from binfmt_img.live import syscalls as sc
from binfmt_img.live.dump import DumpReport, dump
from binfmt_img.live.inject import RESERVED, SAVED_REGISTERS, Injector, free_area
from binfmt_img.live.procfs import read_maps
from binfmt_img.live.restore import RestorePlan, load_image
from binfmt_img.live.target import counting
from binfmt_img.live.threads import put_back_registers
from gdb_img.target import STARTED_HERE, GdbTarget

CLONE3, SETSID, SETPGID, EXIT_GROUP, KILL, SETRLIMIT = 435, 112, 109, 231, 62, 160
CLONE_ARGS = struct.Struct("<11Q")
RLIMIT_CORE = 4


def _select(inferior: gdb.Inferior) -> None:
    """Switch to an inferior quietly (the `inferior` command prints where it is)."""
    threads = [t for t in inferior.threads() if t.is_valid()]
    if threads:
        min(threads, key=lambda t: t.num).switch()
    else:
        gdb.execute(f"inferior {inferior.num}", to_string=True)


def _inferior_of(pid: int) -> gdb.Inferior | None:
    return next((i for i in gdb.inferiors() if i.pid == pid), None)


# ---- dump ----

def _attach(pid: int, root: gdb.Inferior) -> gdb.Inferior:
    """pid attached (so stopped) as a new inferior."""
    gdb.execute("add-inferior", to_string=True)
    inferior = max(gdb.inferiors(), key=lambda i: i.num)
    _select(inferior)
    try:
        gdb.execute(f"attach {pid}", to_string=True)
    except gdb.error as error:
        _let_go(inferior, root)
        raise RestoreError(f"process {pid} of the tree cannot be attached: {error}") from None
    return inferior


def _setting(value: object) -> str:
    return "on" if value is True else "off" if value is False else str(value)


def _let_go(inferior: gdb.Inferior, back_to: gdb.Inferior) -> None:
    """Detach from an inferior and remove it (GDB removes only one not selected)."""
    try:
        _select(inferior)
        if inferior.pid:
            gdb.execute("detach", to_string=True)
        _select(back_to)
        gdb.execute(f"remove-inferiors {inferior.num}", to_string=True)
    except gdb.error:
        pass  # gone meanwhile


def _dump_one(path: str, fmt: str, hide: tuple[str, ...]) -> DumpReport:
    target = GdbTarget()
    try:
        report = dump(target, path, fmt)
    finally:
        target.sync()
        target.put_back_stop()
    report.warnings = [w for w in report.warnings if not any(h in w for h in hide)]
    return report


def dump_tree(path: str, fmt: str) -> DumpReport:
    """The stopped inferior and its descendants: FILE, FILE.PID for each live descendant."""
    if fmt != "v1":
        raise RestoreError("--tree needs the v1 format")
    root_inferior = gdb.selected_inferior()
    root = root_inferior.pid
    if not root:
        raise RestoreError("no live process to dump")
    if not tree.descendants(root):
        one = _dump_one(path, fmt, ())
        one.warnings.append("--tree: the process has no children; an image of it alone")
        return one
    attached: dict[int, gdb.Inferior] = {}
    try:
        while True:  # until no new process appears: each stops once attached
            pids = tree.descendants(root)
            new = [p for p in pids if p not in attached and not tree.is_zombie(p)]
            if not new:
                break
            for pid in new:
                if tree.is_zombie(pid) or not os.path.exists(f"/proc/{pid}"):
                    continue  # ended meanwhile: the next listing says what it is now
                attached[pid] = _attach(pid, root_inferior)
        _select(root_inferior)
        records = [tree.process_record(p) for p in [root] + pids]
        live = [root] + [p for p in pids if p in attached]
        pipes, warnings = tree.shared_pipes(live, buffered)
        sockets, more = tree.shared_sockets(live, unix_sockets())
        hide = tuple(p["path"] or f"pipe:[{p['inode']}]" for p in pipes) + tuple(
            f"socket:[{i}]" for s in sockets for i in s["inodes"]) + ("children are not in",)
        total = DumpReport(warnings=warnings + more)
        for record in records[1:]:
            if record["zombie"]:
                continue
            _select(attached[record["pid"]])
            child_path = f"{path}.{record['pid']}"
            _add(total, _dump_one(child_path, fmt, hide), f"process {record['pid']}: ")
            record["image"] = os.path.basename(child_path)
            record["digest"] = tree.digest(child_path)
        _select(root_inferior)
        tree.PENDING[root] = {"root": root, "processes": records, "pipes": pipes,
                              "sockets": sockets}
        _add(total, _dump_one(path, fmt, hide), "")
        total.bytes += os.path.getsize(path)
        return total
    finally:
        tree.PENDING.pop(root, None)
        tree.PEEK.clear()
        tree.PEEKED.clear()
        for inferior in attached.values():
            _let_go(inferior, root_inferior)
        _select(root_inferior)


def _add(total: DumpReport, one: DumpReport, label: str) -> None:
    total.vmas += one.vmas
    total.pages += one.pages
    total.bytes += one.bytes
    total.seconds += one.seconds
    total.warnings += [label + w for w in one.warnings]


# ---- restore ----

def prepare(plan: RestorePlan, image: Any, path: str) -> TreeRestore | None:
    """For a tree image: its children's images loaded and checked (SHA-256), the root's plan
    told it is one (before its check). None for a one-process image."""
    value = getattr(image, "states", {}).get("tree")
    if value is None:
        return None
    tree.validate(value)
    images = {}
    for proc in value.processes[1:]:
        if proc.zombie:
            continue
        file = os.path.join(os.path.dirname(path), proc.image)
        try:
            same = tree.digest(file) == bytes(proc.digest)
        except OSError as error:
            raise ImageError(f"the tree's image of process {proc.pid} ({file}): "
                             f"{error.strerror}") from None
        if not same:
            raise ImageError(f"the tree's image of process {proc.pid} ({file}) is not the "
                             "one dumped with it (SHA-256 differs)")
        images[proc.pid] = load_image(file)
    for proc in value.processes[1:]:
        if not proc.zombie:
            tree.check_inherited(proc, images[proc.pid], images.get(proc.ppid, image))
    base = tree.temp_base(value, [image, *images.values()])
    pids = {p.pid for p in value.processes}
    tree.keep_pids_free(pids)
    plan.tree = tree.TreeContext(value.root, True, value, base, pids)  # type: ignore[attr-defined]
    return TreeRestore(plan, value, images, base)


@contextmanager
def _injecting(target: GdbTarget) -> Iterator[Injector]:
    """System calls in the selected thread of a restored process, its registers put back."""
    saved = target.read_registers(SAVED_REGISTERS)
    inj = Injector(counting(target))
    maps = read_maps(target.pid() or 0)
    inj.open_scratch(free_area([(m.start, m.end) for m in maps], RESERVED))
    try:
        yield inj
    finally:
        inj.close_scratch()
        put_back_registers(target, {0: saved})
        target.sync()


class TreeRestore:
    def __init__(self, plan: RestorePlan, record: Any, images: dict[int, Any],
                 base: int) -> None:
        self.root_plan, self.record, self.images, self.base = plan, record, images, base
        self.accept_loss = plan.accept_loss
        self.live: dict[int, int] = {}  # image pid -> live pid
        self.inferiors: dict[int, gdb.Inferior] = {}
        self.warnings: list[str] = []

    def run(self) -> None:
        """After the root's restore: every other process, parents first."""
        root = gdb.selected_inferior()
        self.inferiors[self.record.root] = root
        self.live[self.record.root] = self.root_plan.pid
        saved = {name: gdb.parameter(name) for name in ("detach-on-fork", "follow-fork-mode")}
        gdb.execute("set detach-on-fork off", to_string=True)
        gdb.execute("set follow-fork-mode parent", to_string=True)
        try:
            self._children(self.record.root)
        except BaseException:
            self._kill_made()
            raise
        finally:
            for name, value in saved.items():
                gdb.execute(f"set {name} {_setting(value)}", to_string=True)
            _select(root)
        # The tree's processes wait on one another: they run together.
        gdb.execute("set schedule-multiple on", to_string=True)
        self.root_plan.report.warnings += self.warnings

    def summary(self) -> str:
        parts = []
        for proc in self.record.processes:
            inferior = self.inferiors.get(proc.pid)
            live = self.live.get(proc.pid, proc.pid)
            where = f"inferior {inferior.num}" if inferior is not None else "a zombie"
            same = "" if live == proc.pid else f" (was {proc.pid})"
            parts.append(f"{live}{same} {where}")
        return (f"process tree of {len(parts)}: " + ", ".join(parts)
                + "; schedule-multiple on: `continue` resumes them together")

    def _kill_made(self) -> None:
        for pid, inferior in self.inferiors.items():
            if pid != self.record.root and inferior.pid:
                try:
                    gdb.execute(f"kill inferiors {inferior.num}", to_string=True)
                except gdb.error:
                    pass

    def _children(self, parent: int) -> None:
        kids = [p for p in self.record.processes if p.ppid == parent]
        if not kids and parent != self.record.root:
            return self._close_temps(parent)
        forked = []
        _select(self.inferiors[parent])
        target = GdbTarget()
        with _injecting(target) as inj:
            for kid in kids:
                forked.append((kid, self._fork(inj, kid), inj.scratch))
            self._close_in(inj)
        for kid, pid, scratch in forked:
            self._make(kid, pid, scratch)
        return None

    def _fork(self, inj: Injector, kid: Any) -> int:
        tree.keep_pids_free({kid.pid})
        inj.reset_data()
        tid = inj.put(struct.pack("<i", kid.pid))
        args = inj.put(CLONE_ARGS.pack(0, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, tid, 1, 0))
        pid = inj.raw(CLONE3, args, CLONE_ARGS.size)
        if sc.is_error(pid):
            why = sc.errno_text(pid)
            args = inj.put(CLONE_ARGS.pack(0, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0, 0))
            pid = inj.call(CLONE3, args, CLONE_ARGS.size, step=f"forking process {kid.pid}")
            self.warnings.append(f"process {kid.pid} is process {pid} now (clone3 set_tid: "
                                 f"{why}): the processes' own records of its pid are stale")
        self.live[kid.pid] = pid
        return pid

    def _close_in(self, inj: Injector) -> None:
        for fd in tree.TreeContext(0, False, self.record, self.base).temps():
            inj.raw(sc.CLOSE, fd)

    def _close_temps(self, pid: int) -> None:
        _select(self.inferiors[pid])
        with _injecting(GdbTarget()) as inj:
            self._close_in(inj)

    def _make(self, kid: Any, pid: int, scratch: int | None) -> None:
        """The forked child `pid` of kid's restored parent becomes kid."""
        inferior = _inferior_of(pid)
        if inferior is None:
            raise RestoreError(f"GDB did not follow the fork of process {kid.pid} "
                               f"(pid {pid}): no inferior for it")
        self.inferiors[kid.pid] = inferior
        STARTED_HERE.add(pid)  # GDB's quit ends the tree as it ends what it started
        _select(inferior)
        image = self.images.get(kid.pid)
        target = GdbTarget(image.exe_path if image is not None else None)
        inj = Injector(counting(target))
        inj.scratch = scratch  # the parent's scratch area, copied by the fork
        self._group(inj, kid, pid)
        if kid.zombie:
            self._exit(inj, target, kid, pid)
            return
        assert image is not None
        state.put(image, state.BY_NAME["tree"], self.record)
        plan = RestorePlan(target, image, accept_loss=self.accept_loss)
        plan.keep_mapped = [(r.start, r.end) for r in kid.inherited]
        plan.tree = tree.TreeContext(kid.pid, False, self.record, self.base,  # type: ignore[attr-defined]
                                     {p.pid for p in self.record.processes})
        plan.check()
        result = plan.run()
        target.sync()
        said = set(self.root_plan.report.warnings)  # the standard streams' rule, say
        self.warnings += [f"process {kid.pid}: {w}" for w in result.warnings
                          if "the checkpoint had" not in w and w not in said]
        self._children(kid.pid)

    def _group(self, inj: Injector, kid: Any, pid: int) -> None:
        """The child's session and process group, as the checkpoint had them."""
        if kid.sid == kid.pid:
            inj.call(SETSID, step=f"making process {kid.pid} a session leader")
            return
        parent = next(p for p in self.record.processes if p.pid == kid.ppid)
        if kid.sid != parent.sid:
            self.warnings.append(f"process {kid.pid}: session {kid.sid} (not its own nor its "
                                 "parent's) not recreated: it stays in its parent's")
            return
        if kid.pgid == parent.pgid:
            return  # the parent's group, whatever it is now (the root's is GDB's choice)
        if kid.pgid == kid.pid:
            inj.call(SETPGID, 0, 0, step=f"making process {kid.pid} a group leader")
        else:
            result = inj.raw(SETPGID, 0, self.live.get(kid.pgid, kid.pgid))
            if sc.is_error(result):
                self.warnings.append(f"process {kid.pid}: process group {kid.pgid} not "
                                     f"joined: {sc.errno_text(result)}")

    def _exit(self, inj: Injector, target: GdbTarget, kid: Any, pid: int) -> None:
        """A zombie: the child ends at once as the checkpoint's had, once GDB lets it go."""
        status = kid.status & 0xFFFF
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            inj.reset_data()
            inj.raw(sc.RT_SIGACTION, number, inj.put(bytes(32)), 0, 8)  # SIG_DFL
            inj.raw(SETRLIMIT, RLIMIT_CORE, inj.put(bytes(16)))  # no core file
            inj.raw(sc.RT_SIGPROCMASK, sc.SIG_SETMASK, inj.put(bytes(8)), 0, 8)
            regs = {"rip": inj.scratch or 0, "rax": KILL, "rdi": pid, "rsi": number}
        else:
            regs = {"rip": inj.scratch or 0, "rax": EXIT_GROUP,
                    "rdi": os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0}
        target.write_registers(regs)
        target.sync()
        _let_go(self.inferiors.pop(kid.pid), self.inferiors[kid.ppid])
        STARTED_HERE.discard(pid)


