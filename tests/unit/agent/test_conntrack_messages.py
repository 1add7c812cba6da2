"""The exact-tuple conntrack deletes (filter_agent/conntrack.py): which flows can use them,
and that the messages say what pyroute2's own ctnetlink parser reads back. The kernel
side is proven in tests/lab/agent/test_conntrack_kernel.py."""

from __future__ import annotations

import socket
import struct

from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from filter_agent.conntrack import (
    IPCTNL_MSG_CT_DELETE,
    NFNL_SUBSYS_CTNETLINK,
    acks,
    delete_message,
    matches,
    shapes,
)
from filter_agent.engine import FlowMatch

INSIDE, PUBLIC, REMOTE = "10.77.0.10", "203.0.113.1", "198.51.100.20"


def test_both_shapes_of_a_flow_with_known_ends() -> None:
    flow = FlowMatch("udp", INSIDE, 4000, PUBLIC, 20000, REMOTE, 5000)
    assert shapes(flow) == (
        (socket.IPPROTO_UDP, REMOTE, 5000, PUBLIC, 20000),  # first packet from the remote
        (socket.IPPROTO_UDP, INSIDE, 4000, REMOTE, 5000),  # first packet from the inside
    )


def test_no_exact_shape_without_the_remote_port_or_address() -> None:
    assert shapes(FlowMatch("udp", INSIDE, 4000, PUBLIC, 20000, REMOTE, None)) is None
    assert shapes(FlowMatch("udp", INSIDE, 4000, PUBLIC, 20000)) is None


def test_delete_message_parses_back_with_pyroute2() -> None:
    data = delete_message((socket.IPPROTO_TCP, REMOTE, 5061, PUBLIC, 20002), 42)
    message = nfct_msg(data)
    message.decode()
    header = message["header"]
    assert header["type"] == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    assert header["sequence_number"] == 42 and header["length"] == len(data)
    assert header["flags"] == 0x1 | 0x4  # request, acknowledged
    orig = message.get_attr("CTA_TUPLE_ORIG")
    ip, proto = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
    assert (ip.get_attr("CTA_IP_V4_SRC"), ip.get_attr("CTA_IP_V4_DST")) == (REMOTE, PUBLIC)
    assert proto.get_attr("CTA_PROTO_NUM") == socket.IPPROTO_TCP
    assert (proto.get_attr("CTA_PROTO_SRC_PORT"), proto.get_attr("CTA_PROTO_DST_PORT")) == (
        5061,
        20002,
    )


def test_acks_are_read_with_their_sequence_and_code() -> None:
    def ack(seq: int, code: int) -> bytes:
        body = struct.pack("=i", code) + b"\0" * 16  # code + the request's header
        return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 0) + body

    assert list(acks(ack(1, 0) + ack(2, -2))) == [(1, 0), (2, -2)]


def test_matching_dumped_entries_with_wildcard_remote_port() -> None:
    latching = FlowMatch("udp", INSIDE, 4000, PUBLIC, 20000, REMOTE, None)
    whole_binding = FlowMatch("udp", INSIDE, 4010, PUBLIC, 20010)
    match = matches([latching, whole_binding])
    udp = socket.IPPROTO_UDP
    assert match((udp, REMOTE, 47000, PUBLIC, 20000))  # in: any port of the remote
    assert match((udp, INSIDE, 4000, REMOTE, 47000))  # out: the same flow, other shape
    assert not match((udp, "198.51.100.99", 47000, PUBLIC, 20000))  # another remote
    assert not match((udp, REMOTE, 47000, PUBLIC, 20002))  # another public port
    assert not match((socket.IPPROTO_TCP, REMOTE, 47000, PUBLIC, 20000))  # another protocol
    assert match((udp, "192.0.2.7", 1234, PUBLIC, 20010))  # a whole binding: any remote
    assert match((udp, INSIDE, 4010, "192.0.2.7", 1234))
    assert not match((udp, INSIDE, 4011, "192.0.2.7", 1234))
