"""Delete the conntrack entries of a closed binding or rule (ctnetlink, raw netlink).

Deleting the element already makes the forward chain drop the flow (its connection carries
our ct mark and no pinhole matches), but the conntrack entry would keep its NAT and its
counters alive until the UDP timeout; deleting it also lets a later packet be classified
afresh (new binding, new rule) instead of riding an old NAT.

A flow of a binding shows up in conntrack in one of two shapes (original direction):
inbound, remote -> public P:p (DNATed), or outbound, inside I:i -> remote (SNATed).

Cost: any dump, filtered or not, walks the WHOLE conntrack hash table (global, not per
namespace: 262,144 buckets on the lab machines), about 10 ms of kernel CPU. Dumping once
per shape cost 40 ms per released RTP pair -- ten times the agent's whole share of a
call (measured). So: when both ends of a flow are known (a rule with a remote port), each
shape is deleted by its exact original tuple (IPCTNL_MSG_CT_DELETE + CTA_TUPLE_ORIG: a
hash lookup), all of them in a few netlink writes: tens of microseconds. Flows whose
remote port is unknown (an address-only rule, RFC 7362 latching, which is how the ALG
opens pinholes; a whole binding) share ONE dump per flush, restricted by the kernel to
our ct mark, matched here, then deleted by exact tuple too. `kernel_io.ConntrackFlush`
also gathers the releases of `conntrack_dump_interval` (2 s by default) into one flush.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence

from filter_agent.engine import FlowMatch

log = logging.getLogger("sipwall.agent.conntrack")

_PROTO = {"udp": socket.IPPROTO_UDP, "tcp": socket.IPPROTO_TCP}

# linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 0x2, 0x3
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
CTA_MARK, CTA_MARK_MASK = 8, 21
CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW  # what a dump answers with
CTA_TUPLE_ORIG = 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3

EXACT_PER_WRITE = 256  # ~30 KB of acks at most (ENOENT acks echo the request)

Shape = tuple[int, str, int, str, int]  # protocol, source addr, port, destination addr, port


def shapes(flow: FlowMatch) -> tuple[Shape, Shape] | None:
    """The two original tuples of a flow with both ends known (see the module docstring):
    inbound remote -> public, outbound inside -> remote. None when the remote port (or
    address) is unknown: then only a filtered dump can find the entries."""
    if flow.remote_addr is None or flow.remote_port is None:
        return None
    proto = _PROTO[flow.protocol]
    return (
        (proto, flow.remote_addr, flow.remote_port, flow.external_addr, flow.external_port),
        (proto, flow.internal_addr, flow.internal_port, flow.remote_addr, flow.remote_port),
    )


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def delete_message(shape: Shape, seq: int) -> bytes:
    """IPCTNL_MSG_CT_DELETE for one original tuple (IPv4), acknowledged."""
    proto, src, sport, dst, dport = shape
    ip = _nla(CTA_IP_V4_SRC, socket.inet_aton(src)) + _nla(CTA_IP_V4_DST, socket.inet_aton(dst))
    ports = (
        _nla(CTA_PROTO_NUM, struct.pack("B", proto))
        + _nla(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
        + _nla(CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    )
    tuple_orig = _nla(
        CTA_TUPLE_ORIG | NLA_F_NESTED,
        _nla(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _nla(CTA_TUPLE_PROTO | NLA_F_NESTED, ports),
    )
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + tuple_orig
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(seq, error code) of every NLMSG_ERROR (ack) in a netlink read."""
    start = 0
    while start + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, start)
        if kind == NLMSG_ERROR:
            yield seq, struct.unpack_from("=i", data, start + 16)[0]
        start += max(length, 16)


def matches(flows: Sequence[FlowMatch]) -> Callable[[Shape], bool]:
    """Whether an entry's original tuple belongs to one of `flows` (either shape), the
    remote port -- and for a whole binding the remote address -- being wildcards."""
    inbound: dict[tuple[int, str, int], list[FlowMatch]] = {}
    outbound: dict[tuple[int, str, int], list[FlowMatch]] = {}
    for flow in flows:
        proto = _PROTO[flow.protocol]
        inbound.setdefault((proto, flow.external_addr, flow.external_port), []).append(flow)
        outbound.setdefault((proto, flow.internal_addr, flow.internal_port), []).append(flow)

    def match(shape: Shape) -> bool:
        proto, src, sport, dst, dport = shape
        return any(
            f.remote_addr in (None, src) and f.remote_port in (None, sport)
            for f in inbound.get((proto, dst, dport), ())
        ) or any(
            f.remote_addr in (None, dst) and f.remote_port in (None, dport)
            for f in outbound.get((proto, src, sport), ())
        )

    return match


def dump_message(mark: int | None, seq: int) -> bytes:
    """IPCTNL_MSG_CT_GET dump, restricted by the kernel to entries carrying `mark`."""
    attrs = b""
    if mark is not None:
        attrs = _nla(CTA_MARK, struct.pack("!I", mark)) + _nla(
            CTA_MARK_MASK, struct.pack("!I", mark)
        )
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def messages(data: bytes, seq: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(type, payload after the netlink header) of every message in a netlink read; only
    the answers to request `seq` if given."""
    start = 0
    while start + 16 <= len(data):
        length, kind, _flags, number = struct.unpack_from("=IHHI", data, start)
        if seq is None or number == seq:
            yield kind, data[start + 16 : start + max(length, 16)]
        start += (max(length, 16) + 3) & ~3


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    start = 0
    while start + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            break
        out[kind & ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)] = data[start + 4 : start + length]
        start += (length + 3) & ~3
    return out


def entry_shape(body: bytes) -> Shape | None:
    """The original tuple of one dumped entry (after its nfgenmsg); None unless IPv4
    UDP/TCP."""
    orig = _attrs(body[4:]).get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    parts = _attrs(orig)
    ip, proto = _attrs(parts.get(CTA_TUPLE_IP, b"")), _attrs(parts.get(CTA_TUPLE_PROTO, b""))
    try:
        number = proto[CTA_PROTO_NUM][0]
        src, dst = ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST]
        (sport,) = struct.unpack("!H", proto[CTA_PROTO_SRC_PORT][:2])
        (dport,) = struct.unpack("!H", proto[CTA_PROTO_DST_PORT][:2])
    except (KeyError, IndexError, struct.error):
        return None  # IPv6, ICMP (no ports), ...
    if number not in _PROTO.values():
        return None
    return (number, socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport)


class CtnetlinkFlusher:
    """`netns`: a named network namespace (tests); None = this process's namespace.
    `mark`: the ct mark bit our forward chain sets on every connection of a bound inside
    endpoint (`TableSpec.mark`): a dump then returns only our entries.

    One netlink socket for the flusher's life, not one per flush: closing a netfilter
    netlink socket waits for an RCU grace period (netlink_release), and right after an
    nftables commit that deleted set elements -- every release -- that wait is 7-15 ms
    and also stalls the agent's next nftables transaction (measured on the lab kernel,
    6.18: a ReserveBinding went from 0.35 to 5.5 ms median at 200 calls/s). Not
    thread-safe: one user thread per flusher. After an error (a timed-out exchange may
    leave answers queued) the socket is dropped and the next call opens a fresh one."""

    def __init__(self, netns: str | None = None, mark: int | None = None) -> None:
        self.netns = netns
        self.mark = mark
        self._sock: socket.socket | None = None
        self._seq = 0

    def flush(self, flows: Sequence[FlowMatch]) -> int:
        """Exact deletes for flows with both ends known; ONE dump (one walk of the
        conntrack table, whatever the number of flows) for the others."""
        exact = [shape for flow in flows for shape in shapes(flow) or ()]
        rest = [flow for flow in flows if shapes(flow) is None]
        if rest:
            exact += self.find(rest, marked=all(flow.marked_only for flow in rest))
        return self.delete_exact(exact) if exact else 0

    def fileno(self) -> int | None:
        """The open netlink socket's descriptor, None before the first use."""
        return None if self._sock is None else self._sock.fileno()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _open(self) -> socket.socket:
        if self.netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        else:
            from pyroute2 import netns as nsutil

            sock = nsutil.create_socket(
                self.netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER
            )
        sock.bind((0, 0))
        return sock

    def _next_seq(self) -> int:
        self._seq = self._seq % 0x7FFFFFFF + 1
        return self._seq

    @contextlib.contextmanager
    def _exchange(self, timeout: float) -> Iterator[socket.socket]:
        if self._sock is None:
            self._sock = self._open()
        self._sock.settimeout(timeout)
        try:
            yield self._sock
        except BaseException:
            self.close()
            raise

    def find(
        self, flows: Sequence[FlowMatch], timeout: float = 5.0, *, marked: bool = True
    ) -> list[Shape]:
        """The original tuples of the entries that belong to `flows`: one dump (of our
        marked entries only, when the mark is known and `marked`), parsed here with
        struct -- a general parser costs far more per entry, and a busy gateway holds
        thousands."""
        match = matches(flows)
        found: list[Shape] = []
        with self._exchange(timeout) as sock:
            seq = self._next_seq()
            sock.sendall(dump_message(self.mark if marked else None, seq))
            while True:
                data = sock.recv(1 << 20)
                for kind, body in messages(data, seq):
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", body)
                        raise OSError(-code, f"conntrack dump: {os.strerror(-code)}")
                    if kind != CT_NEW:
                        continue
                    shape = entry_shape(body)
                    if shape is not None and match(shape):
                        found.append(shape)

    def delete_exact(self, exact: Sequence[Shape], timeout: float = 2.0) -> int:
        """Delete by original tuple; ENOENT (no such flow) is normal. Writes of at most
        `EXACT_PER_WRITE` requests, each acknowledged before the next: the kernel queues
        every ack on our socket during the write, and a full receive buffer drops them."""
        deleted = 0
        with self._exchange(timeout) as sock:
            for first in range(0, len(exact), EXACT_PER_WRITE):
                chunk = {self._next_seq(): s for s in exact[first : first + EXACT_PER_WRITE]}
                sock.sendall(b"".join(delete_message(s, seq) for seq, s in chunk.items()))
                waiting = set(chunk)
                while waiting:
                    for seq, code in acks(sock.recv(65536)):
                        if seq not in waiting:
                            continue
                        waiting.discard(seq)
                        if code == 0:
                            deleted += 1
                        elif code != -errno.ENOENT:
                            reason = errno.errorcode.get(-code, str(code))
                            log.warning("conntrack delete %s: %s", chunk[seq], reason)
        return deleted
