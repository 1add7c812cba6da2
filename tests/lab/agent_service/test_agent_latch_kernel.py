"""Latching in the real agent process (NFQUEUE reader on its asyncio loop), driven over
FCP + mTLS from inside the lab, against the real kernel.

inside 10.77.0.10 -- gw 10.77.0.1 | 203.0.113.1 (agent) -- outside .20 (signalled), .30

A rule enabled without a remote port learns it from the signalled remote's first packet;
that packet is re-injected (accepted) so the stream arrives whole. Absence is proven by
ordering, as in test_agent_process_kernel.py: the stream that must be dropped goes first,
the one that must pass follows on the same path.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from labs.netns import wait_until

pytestmark = pytest.mark.kernel

INSIDE, REMOTE, OTHER = "10.77.0.10", "203.0.113.20", "203.0.113.30"
ALG = {"as": "alg-1"}
COUNT = 200


def queue_rules(lab: Any) -> int:
    listing = lab.nft("-j", "list", "chain", "inet", "sipwall", "latch_queue")
    if listing.returncode != 0:
        return 0
    return sum("rule" in item for item in json.loads(listing.stdout)["nftables"])


def exact_pinholes(lab: Any) -> str:
    return lab.nft("list", "set", "inet", "sipwall", "in4").stdout


def port_unknown_call(lab: Any) -> tuple[dict[str, Any], str]:
    b = lab.ok("reserve", group="c1", addr=INSIDE, port=4000, lifetime=60, **ALG)
    r = lab.ok(
        "enable", binding_id=b["binding_id"], remote=REMOTE, remote_port=None, lifetime=60, **ALG
    )
    return b, r["rule_id"]


def test_first_packet_latches_over_fcp_and_survives_sigkill(agent_lab: Any) -> None:
    lab, g = agent_lab, agent_lab.g
    assert "latching via xt-nfqueue" in lab.last_log()  # this kernel's only path
    assert queue_rules(lab) == 1
    b, rule_id = port_unknown_call(lab)
    assert lab.ok("get_rule", rule_id=rule_id, **ALG)["remote_port"] is None
    pub, port = b["address"], b["ports"][0]
    rx = lab.recv(g.inside, INSIDE, 4000)
    # An unsignalled address first: dropped in the kernel, never queued.
    lab.send(g.outside, OTHER, 41000, pub, port, tag="other", count=20, interval=0.002).wait()
    lab.send(g.outside, REMOTE, 41000, pub, port, tag="a", count=COUNT, interval=0.005)
    wait_until(lambda: len(rx.packets()) >= COUNT, 15, what="the whole latching stream")
    got = rx.packets()
    # None lost, the very first one included (order may differ: queued vs fast path).
    assert sorted(p.seq for p in got) == list(range(COUNT))
    assert {(p.tag, p.src, p.sport) for p in got} == {("a", REMOTE, 41000)}
    # The learnt port is visible over FCP and is an exact kernel element (RTP and RTCP).
    assert lab.ok("get_rule", rule_id=rule_id, **ALG)["remote_port"] == 41000
    listed = {r["rule_id"]: r["remote_port"] for r in lab.ok("list_rules", **ALG)}
    assert listed == {rule_id: 41000}
    assert f"{REMOTE} . 41000" in exact_pinholes(lab)
    assert f"{REMOTE} . 41001" in exact_pinholes(lab)
    assert "latched" in lab.last_log()
    # Counters reach FCP through the agent's counter worker (child process); every packet
    # but the queued ones went through the exact elements.
    wait_until(
        lambda: lab.ok("get_rule", rule_id=rule_id, **ALG)["packets"] >= COUNT // 2,
        10,
        interval=0.1,
        what="counters of the latched rule",
    )

    lab.kill_agent(signal.SIGKILL)
    lab.start_agent()
    assert "1 bindings and 1 rules recovered" in lab.last_log()
    assert lab.ok("get_rule", rule_id=rule_id, **ALG)["remote_port"] == 41000
    assert f"{REMOTE} . 41000" in exact_pinholes(lab)
    assert queue_rules(lab) == 1
    # Still exact after the restart: another port of the same remote is dropped, the
    # learnt one passes (ordering proves the absence).
    lab.send(g.outside, REMOTE, 41002, pub, port, tag="wrong", count=20, interval=0.002).wait()
    lab.send(g.outside, REMOTE, 41000, pub, port, tag="b", count=20, interval=0.002)
    wait_until(lambda: sum(p.tag == "b" for p in rx.packets()) >= 20, 10, what="second stream")
    assert {p.tag for p in rx.packets()} == {"a", "b"}


def test_queue_rule_is_reinstalled_when_the_table_is_rebuilt(agent_lab: Any) -> None:
    lab, g = agent_lab, agent_lab.g
    assert lab.nft("delete", "table", "inet", "sipwall").returncode == 0
    wait_until(lambda: queue_rules(lab) == 1, 5, interval=0.02, what="queue rule reinstalled")
    b, rule_id = port_unknown_call(lab)
    rx = lab.recv(g.inside, INSIDE, 4000)
    lab.send(g.outside, REMOTE, 42000, b["address"], b["ports"][0], tag="a", count=50)
    wait_until(lambda: len(rx.packets()) >= 50, 10, what="latching stream after rebuild")
    assert sorted(p.seq for p in rx.packets()) == list(range(50))
    assert lab.ok("get_rule", rule_id=rule_id, **ALG)["remote_port"] == 42000


def test_latch_disabled_by_config_keeps_address_only(agent_lab: Any) -> None:
    lab, g = agent_lab, agent_lab.g
    config = lab.workdir / "agent.toml"
    config.write_text(config.read_text().replace("[agent]", "[agent]\nlatch = false", 1))
    lab.kill_agent(signal.SIGTERM)
    lab.start_agent()
    assert "latching disabled by configuration" in lab.last_log()
    assert "latch_queue" not in lab.nft("list", "chain", "inet", "sipwall", "forward").stdout
    b, rule_id = port_unknown_call(lab)
    rx = lab.recv(g.inside, INSIDE, 4000)
    pub, port = b["address"], b["ports"][0]
    lab.send(g.outside, OTHER, 41000, pub, port, tag="other", count=20, interval=0.002).wait()
    lab.send(g.outside, REMOTE, 41000, pub, port, tag="a", count=20, interval=0.002).wait()
    lab.send(g.outside, REMOTE, 43000, pub, port, tag="b", count=20, interval=0.002)
    wait_until(lambda: sum(p.tag == "b" for p in rx.packets()) >= 20, 10, what="any remote port")
    assert {p.tag for p in rx.packets()} == {"a", "b"}
    assert lab.ok("get_rule", rule_id=rule_id, **ALG)["remote_port"] is None
