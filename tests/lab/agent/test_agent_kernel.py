"""The agent against the real kernel, in a three-namespace lab.

inside 10.77.0.10 -- gw 10.77.0.1 | 203.0.113.1 (agent, forwarding) -- outside .20 and .30

Absence of packets is proven by ordering, not by waiting: a stream that must be dropped is
sent first, then a stream that must pass on the same path; once the second one arrives,
anything of the first one would have arrived before it.
"""

from __future__ import annotations

import random
from typing import Any  # the `agent` fixture (conftest.Agent)

import pytest

from filter_agent import ops
from filter_agent.allocator import Allocator, PoolConfig
from filter_agent.driver import without_state
from filter_agent.drivers.fake import FakeNftDriver
from filter_agent.engine import Engine
from filter_agent.errors import DriverError
from filter_agent.model import BindingKind, Direction
from filter_agent.plan import Element, element_commands, transaction
from labs.netns import wait_until
from labs.traffic import now

pytestmark = pytest.mark.kernel

INSIDE = "10.77.0.10"
REMOTE, OTHER = "203.0.113.20", "203.0.113.30"


def test_inbound_only_with_rule_and_only_from_its_remote(agent: Any) -> None:
    g, e = agent.g, agent.engine
    b = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=60), now())
    pub = b.external_port
    rx = agent.recv(g.inside, INSIDE, 4000)
    # 1. Binding but no rule yet: dropped.
    agent.send(g.outside, REMOTE, 5000, b.external_addr, pub, tag="early", count=20).wait()
    e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 5000, Direction.INBOUND), now())
    # 2. A different remote address: dropped. 3. The signalled remote: passes.
    agent.send(g.outside, OTHER, 5000, b.external_addr, pub, tag="other", count=20).wait()
    agent.send(g.outside, REMOTE, 5000, b.external_addr, pub, tag="good", count=20).wait()
    wait_until(lambda: len(rx.packets()) >= 15, 10, what="allowed stream arrives")
    got = rx.packets()
    assert {p.tag for p in got} == {"good"}
    assert {(p.src, p.sport) for p in got} == {(REMOTE, 5000)}  # DNAT keeps the source
    # Right remote address, wrong port: dropped too (the rule knows the port).
    agent.send(g.outside, REMOTE, 5002, b.external_addr, pub, tag="wrongport", count=10).wait()
    agent.send(g.outside, REMOTE, 5000, b.external_addr, pub, tag="good2", count=10).wait()
    wait_until(lambda: any(p.tag == "good2" for p in rx.packets()), 10, what="second stream")
    assert not any(p.tag == "wrongport" for p in rx.packets())
    e.observe(now())
    assert e.counters("alg", b.id).packets >= 25


def test_outbound_is_snatted_to_the_binding(agent: Any) -> None:
    g, e = agent.g, agent.engine
    b = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=60), now())
    e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 5000, Direction.OUTBOUND), now())
    rx = agent.recv(g.outside, REMOTE, 5000)
    rtcp = agent.recv(g.outside, REMOTE, 5001)
    agent.send(g.inside, INSIDE, 4000, REMOTE, 5000, tag="rtp", count=10).wait()
    agent.send(g.inside, INSIDE, 4001, REMOTE, 5001, tag="rtcp", count=10).wait()
    wait_until(lambda: len(rx.packets()) >= 8 and len(rtcp.packets()) >= 8, 10, what="outbound")
    assert {(p.src, p.sport) for p in rx.packets()} == {(b.external_addr, b.external_ports[0])}
    assert {(p.src, p.sport) for p in rtcp.packets()} == {(b.external_addr, b.external_ports[1])}


def test_release_stops_an_established_flow_within_a_second(agent: Any) -> None:
    g, e = agent.g, agent.engine
    b = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=60), now())
    e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 5000), now())
    rx = agent.recv(g.inside, INSIDE, 4000)
    tx = agent.send(
        g.outside, REMOTE, 5000, b.external_addr, b.external_port, tag="s", count=400, interval=0.01
    )
    wait_until(lambda: len(rx.packets()) >= 20, 10, what="flow established")
    assert _conntrack_count(agent, b.external_addr, b.external_port) == 1
    released = now()
    e.change_group_lifetime("alg", "c1", 0, released)
    wait_until(lambda: tx.sent_until() > released + 1.5, 10, what="sender kept going")
    assert max(p.t for p in rx.packets()) <= released + 1.0
    assert _conntrack_count(agent, b.external_addr, b.external_port) <= 1  # re-created, unNATed
    assert all(p.src == REMOTE for p in rx.packets())


def test_expiry_with_no_agent_alive_stops_traffic(agent: Any) -> None:
    g, e = agent.g, agent.engine
    t0 = now()
    b = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=3), t0)
    e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 5000, lifetime=3), t0)
    applied = now()
    agent.driver.close()  # the agent is gone: only kernel timeouts remain
    rx = agent.recv(g.inside, INSIDE, 4000)
    tx = agent.send(
        g.outside, REMOTE, 5000, b.external_addr, b.external_port, tag="s", count=600, interval=0.01
    )
    wait_until(lambda: len(rx.packets()) >= 20, 10, what="flow established")
    wait_until(lambda: tx.sent_until() > applied + 3 + 1.5, 15, what="sender past expiry")
    last = max(p.t for p in rx.packets())
    assert t0 + 3 - 1.0 <= last <= applied + 3 + 1.0


def test_fake_and_real_driver_agree(agent_with: Any) -> None:
    """With either element writer (agent.toml `element_writer`)."""
    agent = agent_with
    fake = FakeNftDriver()
    twin = Engine(
        Allocator(PoolConfig((agent.g.public_addr,), 20000, 29999), random.Random(11)), fake
    )
    twin.setup()
    script = [
        ops.ReserveBinding("c1", INSIDE, 4000, lifetime=300),
        ops.ReserveBinding("c1", INSIDE, 4010, kind=BindingKind.SINGLE, lifetime=300),
        ops.ReserveBinding("c2", "10.77.0.11", 6000, kind=BindingKind.BLOCK, block_size=4),
        ops.EnableRule("b1", REMOTE, 5000, lifetime=200),
        ops.EnableRule("b1", OTHER, None, Direction.INBOUND, lifetime=100),
        ops.EnableRule("b3", OTHER, 7000, Direction.OUTBOUND),
    ]
    for engine in (agent.engine, twin):
        engine.batch("alg", script[:3], 0)
        engine.batch("alg", script[3:], 0)
    assert without_state(agent.driver.elements()) == without_state(fake.elements())
    for engine in (agent.engine, twin):
        engine.change_lifetime("alg", "b2", 0, 1)
        engine.change_lifetime("alg", "r5", 0, 1)
        engine.change_lifetime("alg", "b1", 50, 1)
    real = agent.driver.elements()
    assert without_state(real) == without_state(fake.elements())
    assert {e.set for e in real} == {"dnat4", "snat4", "in4", "out4"}
    # Releasing what the kernel already dropped is fine on both.
    for engine in (agent.engine, twin):
        engine.change_group_lifetime("alg", "c1", 0, 2)
        engine.change_group_lifetime("alg", "c2", 0, 2)
    assert agent.driver.elements() == () == fake.elements()


def test_setup_is_idempotent_and_reconcile_rebuilds(agent: Any) -> None:
    e = agent.engine
    b = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=60), now())
    e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 5000), now())
    before = without_state(agent.driver.elements())
    e.setup()
    assert without_state(agent.driver.elements()) == before
    agent.g.lab.run(agent.g.gw, ["nft", "delete", "table", "inet", "sipwall"])
    assert e.reconcile(now()) is True
    assert {(x.set, x.key) for x in agent.driver.elements()} == {(x.set, x.key) for x in before}


def test_a_refused_element_transaction_changes_nothing(agent_with: Any, writer: str) -> None:
    """Element changes go to the kernel as one transaction, by either writer: one refused
    command undoes the others, and the error says why."""
    agent = agent_with
    spec = agent.engine.spec
    fresh = Element("in4", ("udp", INSIDE, 4100, REMOTE, 5100), None, 60)
    (add,) = element_commands(spec, [fresh], ())
    missing = {"family": "inet", "table": "sipwall", "name": "out4"}
    missing["elem"] = [{"concat": ["udp", INSIDE, 4200, REMOTE, 5200]}]  # no guard: ENOENT
    with pytest.raises(DriverError) as refused:
        agent.driver.apply(transaction([add, {"delete": {"element": missing}}]))
    if writer == "netlink":
        assert "delete element out4: No such file or directory (ENOENT)" in refused.value.detail
    else:
        assert "No such file or directory" in refused.value.detail
    assert agent.driver.elements() == ()
    agent.driver.apply(transaction([add]))
    (present,) = agent.driver.elements()
    assert (present.set, present.key) == ("in4", fresh.key)
    assert present.timeout == 60


def _conntrack_count(agent: Any, addr: str, port: int) -> int:
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    with Conntrack(netns=agent.g.gw) as ct:
        return len(
            list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=17, daddr=addr, dport=port)))
        )
