"""Set lookups at scale: with 100,000 live pinholes the kernel still tells them apart.

Functional, not timed (bench/forwarding.py measures the cost). The agent's engine opens one
call (binding + inbound pinhole for 203.0.113.20:5000); 99,999 other calls (binding +
pinhole each, `labs.scale.other_calls`) go in through the same planner and driver in
batches. Absence is proven by ordering as in test_agent_kernel.py: the streams that must be
dropped are sent first, then the one that must pass on the same path.
"""

from __future__ import annotations

from typing import Any  # the `agent` fixture (conftest.Agent)

import pytest

from filter_agent import ops
from filter_agent.model import BindingKind, Direction
from labs import scale
from labs.netns import wait_until
from labs.traffic import now

pytestmark = pytest.mark.kernel

INSIDE = "10.77.0.10"
REMOTE, OTHER = "203.0.113.20", "203.0.113.30"
TOTAL = 100_000
DEEP = 54_321  # an other call far into the sets


def test_pinholes_stay_exact_with_100k_installed(agent: Any) -> None:
    g, e, lab = agent.g, agent.engine, agent.g.lab
    single = ops.ReserveBinding("c1", INSIDE, 4000, kind=BindingKind.SINGLE, lifetime=120)
    b = e.reserve_binding("alg", single, now())  # one port: one element per set, like the rest
    e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 5000, Direction.INBOUND), now())
    others = scale.other_calls(TOTAL - 1)
    scale.install(agent.driver, agent.driver.spec, others)
    assert scale.count_elements(lab, g.gw, "in4") == TOTAL

    # One of the other calls, to be reached for real: its inside host, its public address
    # (the gw owns its pool's addresses), its remote peer and the route back to it.
    rule, bind = others[DEEP]
    lab.address(g.inside, "in0", f"{bind.internal_addr}/24")
    lab.address(g.gw, "gw-out", f"{bind.external_addr}/24")
    lab.address(g.outside, "out0", f"{rule.remote_addr}/24")
    lab.route(g.gw, "198.51.100.0/24", REMOTE)
    assert rule.remote_port is not None

    rx = agent.recv(g.inside, INSIDE, 4000)
    rx_deep = agent.recv(g.inside, bind.internal_addr, bind.internal_port)
    pub = b.external_port
    # Dropped: a remote with no pinhole at all, and a remote that has a pinhole, but on
    # another call's binding.
    agent.send(g.outside, OTHER, 5000, b.external_addr, pub, tag="other", count=10).wait()
    agent.send(
        g.outside, rule.remote_addr, rule.remote_port, b.external_addr, pub, tag="cross", count=10
    ).wait()
    # Passes: the call's own remote, and the deep call's remote to its own binding.
    agent.send(g.outside, REMOTE, 5000, b.external_addr, pub, tag="good", count=10).wait()
    agent.send(
        g.outside,
        rule.remote_addr,
        rule.remote_port,
        bind.external_addr,
        bind.external_port,
        tag="deep",
        count=10,
    ).wait()
    wait_until(lambda: len(rx.packets()) >= 8, 10, what="the pinholed stream arrives")
    wait_until(lambda: len(rx_deep.packets()) >= 8, 10, what="the deep call's stream arrives")
    assert {p.tag for p in rx.packets()} == {"good"}
    assert {(p.src, p.sport) for p in rx.packets()} == {(REMOTE, 5000)}
    assert {(p.tag, p.src, p.sport) for p in rx_deep.packets()} == {
        ("deep", rule.remote_addr, rule.remote_port)
    }
    key = ("udp", INSIDE, 4000, REMOTE, 5000)
    counted = scale.element_packets(lab, g.gw, "in4", key)
    assert counted is not None
    assert counted >= 8
