"""Unix socket pairs with both ends in this process, with the data queued on each end.

What a socket is comes from the kernel's sock_diag netlink interface (type, name, peer's
inode): only an unnamed connected pair whose two ends are both here comes back; any other
socket (TCP, UDP, a named unix socket, a pair to another process) is Lost. The queued data is
read in the inferior with MSG_PEEK, moving SO_PEEK_OFF along so that nothing is taken (each
datagram of a SOCK_DGRAM/SOCK_SEQPACKET pair separately); the restore makes a socketpair and
sends each end's data from the other end. Descriptors in flight (SCM_RIGHTS) and credentials
are not kept; shutdown state neither.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

from construct import GreedyBytes, Int32ul, Prefixed, PrefixedArray, Struct, VarInt

from binfmt_img.errors import RestoreError
from binfmt_img.fdkinds import Entry, FdKind, Lost, Restorer, Seen, lose
from binfmt_img.live import syscalls as sc

if TYPE_CHECKING:
    from binfmt_img.live.dump import DumpPlan
    from binfmt_img.live.restore import RestorePlan

ID = 7
SOCKETPAIR, SENDTO, RECVFROM, SETSOCKOPT, GETSOCKOPT = 53, 44, 45, 54, 55
SOL_SOCKET, SO_PEEK_OFF = 1, 42
MSG_PEEK, MSG_DONTWAIT, MSG_TRUNC = 2, 0x40, 0x20
SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5
TYPES = {SOCK_STREAM: "stream", SOCK_DGRAM: "datagram", SOCK_SEQPACKET: "seqpacket"}
CHUNK = 0xC000  # bytes peeked at a time, within the scratch area's data pages
MAX_MESSAGES = 4096  # more queued datagrams than a unix socket's default queue holds
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLMSG_DONE, NLMSG_ERROR = 4, 20, 3, 2
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER = 1, 4
UNIX_DIAG_NAME, UNIX_DIAG_PEER = 0, 2
Record = Struct(
    "inode" / Int32ul, "peer" / Int32ul, "type" / Int32ul,
    "queued" / PrefixedArray(VarInt, Prefixed(VarInt, GreedyBytes)),  # messages to read here
)


def unix_sockets() -> dict[int, tuple[int, int, bool]]:
    """Every unix socket of this network namespace: inode -> (type, peer inode, named)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        request = struct.pack("<BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                              UDIAG_SHOW_NAME | UDIAG_SHOW_PEER, 0, 0)
        header = struct.pack("<IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, 0x301, 1, 0)
        nl.send(header + request)
        found: dict[int, tuple[int, int, bool]] = {}
        while True:
            data = nl.recv(1 << 16)
            at = 0
            while at + 16 <= len(data):
                length, kind = struct.unpack_from("<IH", data, at)
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    return found
                _family, sock_type, _state, _pad, ino = struct.unpack_from("<BBBBI", data,
                                                                            at + 16)
                peer, named = 0, False
                attr = at + 16 + 16
                while attr + 4 <= at + length:
                    attr_len, attr_type = struct.unpack_from("<HH", data, attr)
                    if attr_type == UNIX_DIAG_PEER:
                        (peer,) = struct.unpack_from("<I", data, attr + 4)
                    elif attr_type == UNIX_DIAG_NAME:
                        named = True
                    attr += (attr_len + 3) & ~3
                found[ino] = (sock_type, peer, named)
                at += (length + 3) & ~3


def peek_all(plan: DumpPlan, fd: int, sock_type: int) -> list[bytes]:
    """What is queued to be read at fd, message by message, left in place."""
    inj, read = plan.injector, plan.target.read_memory
    inj.reset_data()
    old_at, size_at = inj.reserve(4), inj.put(struct.pack("<I", 4))
    step = f"fd {fd}: peeking at the queued data"
    inj.call(GETSOCKOPT, fd, SOL_SOCKET, SO_PEEK_OFF, old_at, size_at, step=step)
    old = read(old_at, 4)
    inj.call(SETSOCKOPT, fd, SOL_SOCKET, SO_PEEK_OFF, inj.put(struct.pack("<i", 0)), 4, step=step)
    buf = inj.reserve(CHUNK)
    truncated = 0 if sock_type == SOCK_STREAM else MSG_TRUNC  # a datagram's whole length
    messages: list[bytes] = []
    try:
        while True:
            got = inj.raw(RECVFROM, fd, buf, CHUNK, MSG_PEEK | MSG_DONTWAIT | truncated, 0, 0)
            if sc.is_error(got) or (got == 0 and sock_type == SOCK_STREAM):
                break
            if got > CHUNK and sock_type != SOCK_STREAM:
                raise Lost(f"socket with a {got}-byte datagram queued, too large to keep")
            messages.append(read(buf, min(got, CHUNK)))
            if len(messages) > MAX_MESSAGES:
                raise RestoreError(f"{step}: no end to it")
    finally:
        inj.raw(SETSOCKOPT, fd, SOL_SOCKET, SO_PEEK_OFF, inj.put(old), 4)
    if sock_type == SOCK_STREAM:
        return [b"".join(messages)] if messages else []
    return messages


def _dump(plan: DumpPlan, seen: Seen) -> dict:
    if not hasattr(plan, "unix_sockets"):
        plan.unix_sockets = unix_sockets()
    ino = int(seen.link[len("socket:["):-1])
    found = plan.unix_sockets.get(ino)
    if found is None:
        raise Lost(f"{seen.link}, {_network(plan.pid, ino)}")
    sock_type, peer, named = found
    here = {s.ino for s in _all_seen(seen)}
    if named or not peer:
        raise Lost(f"{seen.link}, a unix socket that is named, listening or unconnected")
    if seen.elsewhere:
        raise Lost(f"{seen.link}, a unix socket also open in {seen.elsewhere}")
    if peer not in here:
        raise Lost(f"{seen.link}, a unix socket connected to another process")
    if sock_type not in TYPES:
        raise Lost(f"{seen.link}, a unix socket of type {sock_type}")
    queued = peek_all(plan, seen.fd, sock_type) if seen is seen.group[0] else []
    return {"inode": ino, "peer": peer, "type": sock_type, "queued": queued}


def _address(text: str) -> str:
    """/proc/net/tcp's "0100007F:1F90" as "127.0.0.1:8080" (IPv6 left as the kernel shows)."""
    host, port = text.split(":")
    if len(host) == 8:
        host = socket.inet_ntoa(struct.pack("<I", int(host, 16)))
    return f"{host}:{int(port, 16)}"


def _network(pid: int, ino: int) -> str:
    """What a socket that is not a unix one is, in words: "a TCP connection a -> b"."""
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = [line.split() for line in f][1:]
        except OSError:
            continue
        for row in rows:
            if len(row) > 9 and row[9] == str(ino):
                proto = table.rstrip("6").upper()
                return f"a {proto} socket {_address(row[1])} -> {_address(row[2])}"
    return "a socket that is not a unix socket pair (netlink, packet...)"


def _all_seen(seen: Seen) -> list[Seen]:
    return seen.everyone or [seen]


def _check(plan: RestorePlan, entries: list[Entry]) -> None:
    inodes = {e.value.inode for e in entries}
    for entry in entries:
        if entry.value.type not in TYPES or entry.value.peer not in inodes:
            lose(plan, entry, "a socket pair the image records wrongly")


def _restore(ctx: Restorer, entries: list[Entry]) -> None:
    by_inode: dict[int, list[Entry]] = {}
    for entry in entries:
        by_inode.setdefault(entry.value.inode, []).append(entry)
    done: set[int] = set()
    for inode, group in by_inode.items():
        if inode in done:
            continue
        v = group[0].value
        other = by_inode[v.peer]
        done |= {inode, v.peer}
        ctx.inj.reset_data()
        at = ctx.inj.reserve(8)
        step = f"making the socket pair of fds {group[0].fd} and {other[0].fd}"
        ctx.call(SOCKETPAIR, socket.AF_UNIX, v.type | sc.O_CLOEXEC, 0, at, step=step)
        raw = ctx.plan.target.read_memory(at, 8)
        here, there = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")
        for sender, messages in ((there, _queued(group)), (here, _queued(other))):
            for message in messages:
                send_message(ctx, sender, message, step)
        ctx.place([(here, group[0]), (there, other[0])])
        ctx.dup_to(group[0].fd, group[1:])
        ctx.dup_to(other[0].fd, other[1:])


def _queued(group: list[Entry]) -> list[bytes]:
    return [message for entry in group for message in entry.value.queued]


def send_message(ctx: Restorer, fd: int, message: bytes, step: str) -> None:
    view = memoryview(message)
    while True:  # a stream's bytes in pieces the scratch area holds; a datagram whole
        ctx.inj.reset_data()
        piece = bytes(view[:CHUNK])
        sent = ctx.call(SENDTO, fd, ctx.inj.put(piece), len(piece), MSG_DONTWAIT, 0, 0,
                        step=f"{step}: queueing the data back")
        view = view[sent:]
        if not view:
            return


FDKIND = FdKind(id=ID, name="unix", record=Record, dump=_dump, check=_check, restore=_restore,
                matches=lambda seen: seen.link.startswith("socket:["),
                describe=lambda e: f"{TYPES.get(e.value.type, e.value.type)} pair with "
                                   f"socket {e.value.peer}, {len(e.value.queued)} queued")
