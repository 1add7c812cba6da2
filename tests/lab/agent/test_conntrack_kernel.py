"""Conntrack flushing against the real kernel: a released call's NAT entries are deleted
by their exact original tuples (filter_agent/conntrack.py), both shapes of a flow (first
packet from the remote, first packet from the inside), and nothing else is touched.

inside 10.77.0.10 -- gw 10.77.0.1 | 203.0.113.1 (agent, forwarding) -- outside .20
"""

from __future__ import annotations

import contextlib
from typing import Any  # the `agent` fixture (conftest.Agent)

import pytest

from filter_agent import ops
from filter_agent.conntrack import CtnetlinkFlusher
from filter_agent.engine import FlowMatch
from filter_agent.model import BindingKind, Direction
from filter_agent.plan import TableSpec
from labs.netns import wait_until
from labs.traffic import now

pytestmark = pytest.mark.kernel

INSIDE = "10.77.0.10"
REMOTE = "203.0.113.20"


def _entries(agent: Any, **tuple_orig: Any) -> int:
    """Conntrack entries in the gateway whose original tuple matches (UDP)."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    with Conntrack(netns=agent.g.gw) as ct:
        shape = NFCTAttrTuple(proto=17, **tuple_orig)
        return len(list(ct.dump_entries(tuple_orig=shape)))


def test_release_deletes_exactly_the_calls_entries(agent: Any) -> None:
    g, e = agent.g, agent.engine
    pair = ops.ReserveBinding("c1", INSIDE, 4000, kind=BindingKind.RTP_PAIR, lifetime=60)
    b1 = e.reserve_binding("alg", pair, now())
    e.enable_rule("alg", ops.EnableRule(b1.id, REMOTE, 5000, Direction.BOTH), now())
    b2 = e.reserve_binding("alg", ops.ReserveBinding("c2", INSIDE, 4010, lifetime=60), now())
    e.enable_rule("alg", ops.EnableRule(b2.id, REMOTE, 5010, Direction.BOTH), now())
    rtp = b1.external_ports[0]
    other = b2.external_port
    rx_rtp = agent.recv(g.inside, INSIDE, 4000)
    rx_rtcp = agent.recv(g.outside, REMOTE, 5001)
    rx_other = agent.recv(g.inside, INSIDE, 4010)
    # RTP starts from the remote (inbound shape), RTCP from the inside (outbound shape).
    agent.send(g.outside, REMOTE, 5000, b1.external_addr, rtp, tag="rtp", count=5).wait()
    agent.send(g.inside, INSIDE, 4001, REMOTE, 5001, tag="rtcp", count=5).wait()
    agent.send(g.outside, REMOTE, 5010, b2.external_addr, other, tag="o", count=5).wait()
    wait_until(
        lambda: rx_rtp.packets() and rx_rtcp.packets() and rx_other.packets(),
        10,
        what="the three flows pass",
    )
    assert _entries(agent, saddr=REMOTE, sport=5000, daddr=b1.external_addr, dport=rtp) == 1
    assert _entries(agent, saddr=INSIDE, sport=4001, daddr=REMOTE, dport=5001) == 1
    assert _entries(agent, saddr=REMOTE, sport=5010, daddr=b2.external_addr, dport=other) == 1

    e.change_group_lifetime("alg", "c1", 0, now())  # flushes synchronously (NetnsDriver)

    assert _entries(agent, saddr=REMOTE, sport=5000, daddr=b1.external_addr, dport=rtp) == 0
    assert _entries(agent, saddr=INSIDE, sport=4001, daddr=REMOTE, dport=5001) == 0
    assert _entries(agent, saddr=REMOTE, sport=5010, daddr=b2.external_addr, dport=other) == 1
    # Nothing is left to delete: each shape answers ENOENT, which is not an error.
    again = [
        FlowMatch("udp", INSIDE, inside, b1.external_addr, public, REMOTE, 5000 + offset)
        for offset, (inside, public) in enumerate(b1.port_pairs())
    ]
    assert agent.driver.flush(again) == 0


def test_an_address_only_rule_still_finds_its_flows_by_dump(agent: Any) -> None:
    """Latching (RFC 7362): the remote port is unknown, so no exact tuple exists."""
    g, e = agent.g, agent.engine
    b = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=60), now())
    e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, None, Direction.INBOUND), now())
    rx = agent.recv(g.inside, INSIDE, 4000)
    agent.send(g.outside, REMOTE, 47000, b.external_addr, b.external_port, tag="m", count=5).wait()
    wait_until(lambda: len(rx.packets()) >= 3, 10, what="the flow passes")
    assert _entries(agent, saddr=REMOTE, daddr=b.external_addr, dport=b.external_port) == 1

    e.change_group_lifetime("alg", "c1", 0, now())

    assert _entries(agent, saddr=REMOTE, daddr=b.external_addr, dport=b.external_port) == 0


def test_a_large_flush_is_acknowledged_in_chunks(agent: Any) -> None:
    """600 flows (1,200 exact deletes: several writes) with one real entry among them:
    every ack is read (no timeout, no lost ack) and exactly that entry goes."""
    g, e = agent.g, agent.engine
    b = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=60), now())
    e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 5000, Direction.INBOUND), now())
    rx = agent.recv(g.inside, INSIDE, 4000)
    agent.send(g.outside, REMOTE, 5000, b.external_addr, b.external_port, tag="m", count=5).wait()
    wait_until(lambda: len(rx.packets()) >= 3, 10, what="the flow passes")
    real = FlowMatch("udp", INSIDE, 4000, b.external_addr, b.external_port, REMOTE, 5000)
    absent = [
        FlowMatch("udp", INSIDE, 6000 + i, b.external_addr, 30000 + i, REMOTE, 7000 + i)
        for i in range(599)
    ]
    assert agent.driver.flush([*absent[:300], real, *absent[300:]]) == 1
    assert _entries(agent, saddr=REMOTE, sport=5000, daddr=b.external_addr) == 0


def test_one_marked_dump_finds_only_the_released_flows(agent: Any) -> None:
    """The agent's flusher dumps once, restricted by the kernel to our ct mark, and picks
    the flows of the released (address-only) rules out of it; another call's entry and
    an unmarked connection of the same namespace are left alone."""
    g, e = agent.g, agent.engine
    b1 = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=60), now())
    e.enable_rule("alg", ops.EnableRule(b1.id, REMOTE, None, Direction.BOTH), now())
    b2 = e.reserve_binding("alg", ops.ReserveBinding("c2", INSIDE, 4010, lifetime=60), now())
    e.enable_rule("alg", ops.EnableRule(b2.id, REMOTE, None, Direction.BOTH), now())
    rx1, rx2 = agent.recv(g.inside, INSIDE, 4000), agent.recv(g.inside, INSIDE, 4010)
    unmarked = agent.recv(g.outside, REMOTE, 6000)  # inside -> outside, no binding: not ours
    agent.send(g.outside, REMOTE, 47000, b1.external_addr, b1.external_port, tag="a").wait()
    agent.send(g.outside, REMOTE, 47010, b2.external_addr, b2.external_port, tag="b").wait()
    agent.send(g.inside, INSIDE, 9000, REMOTE, 6000, tag="u", count=5).wait()
    wait_until(
        lambda: rx1.packets() and rx2.packets() and unmarked.packets(), 10, what="flows pass"
    )
    released = [
        FlowMatch("udp", INSIDE, inside, b1.external_addr, public, REMOTE, None)
        for inside, public in b1.port_pairs()
    ]
    wide = [FlowMatch("udp", INSIDE, 9000, b1.external_addr, 1)]  # matches only unmarked
    with contextlib.closing(CtnetlinkFlusher(netns=g.gw, mark=TableSpec().mark)) as flusher:
        assert flusher.find(released + wide) == [
            (17, REMOTE, 47000, b1.external_addr, b1.external_port)
        ]
        assert flusher.flush(released) == 1
    assert _entries(agent, saddr=REMOTE, sport=47000) == 0
    assert _entries(agent, saddr=REMOTE, sport=47010) == 1  # the other call
    assert _entries(agent, saddr=INSIDE, sport=9000) == 1  # not ours: never dumped


def test_one_flusher_keeps_its_socket_across_releases(agent: Any) -> None:
    """The flusher's netlink socket lives as long as the flusher: closing one right after
    an nftables commit that deleted elements waits for an RCU grace period and stalls the
    agent's next transaction. A dump and exact deletes share it, call after call, and
    answers are matched to their own request."""
    g, e = agent.g, agent.engine
    flusher = CtnetlinkFlusher(netns=g.gw, mark=TableSpec().mark)
    sockets = set()
    try:
        for call, port in (("c1", 4000), ("c2", 4010), ("c3", 4020)):
            b = e.reserve_binding("alg", ops.ReserveBinding(call, INSIDE, port, lifetime=60), now())
            e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, None, Direction.INBOUND), now())
            rx = agent.recv(g.inside, INSIDE, port)
            src = 47000 + port
            agent.send(g.outside, REMOTE, src, b.external_addr, b.external_port, tag=call).wait()
            wait_until(lambda rx=rx: rx.packets(), 10, what=f"{call}'s flow passes")
            flows = [FlowMatch("udp", INSIDE, port, b.external_addr, b.external_port, REMOTE)]
            exact = [FlowMatch("udp", INSIDE, port, b.external_addr, b.external_port, REMOTE, 9)]
            assert flusher.flush(exact) == 0  # exact deletes of nothing: ENOENT acks
            assert flusher.flush(flows) == 1  # a marked dump, then the exact delete
            assert _entries(agent, saddr=REMOTE, sport=src) == 0
            sockets.add(flusher.fileno())
    finally:
        flusher.close()
    assert len(sockets) == 1 and None not in sockets
    assert flusher.fileno() is None
