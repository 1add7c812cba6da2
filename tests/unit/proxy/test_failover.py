"""Failover between a route's next hops (alg.hop_health, [proxy] failover_timeout and
hop_hold_down): a gateway that does not answer at all gives way to the next one after
the failover timeout, and new calls try it last while it is held down. Explicit clock;
the core as `sipwall alg` assembles it, with a route table of two gateways."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest
from proxy_harness import ALICE, invite, run_timers, sent_to

from alg.assemble import AlgServices, assemble
from alg.builders import build_response
from alg.config import parse_config
from alg.hop_health import HopHealth
from alg.proxy_model import Endpoint, Send
from alg.sip import SipMessage

GW1 = Endpoint("outside", "UDP", "198.51.100.1", 5060)
GW2 = Endpoint("outside", "UDP", "198.51.100.2", 5060)
WATCHED = frozenset({(GW1.host, GW1.port), (GW2.host, GW2.port)})


def test_hop_health_holds_down_until_an_answer_or_the_end_of_the_hold() -> None:
    hops = HopHealth(hold_down=30.0, probe_interval=0, watched=WATCHED)
    assert hops.down(0.0) == frozenset()
    hops.failed(GW1, 1.0)
    hops.failed(GW1, 2.0)  # again: the hold restarts, counted once
    hops.failed(GW2, 3.0)
    assert hops.down(31.9) == {(GW1.host, GW1.port), (GW2.host, GW2.port)}
    hops.answered(GW2.host, GW2.port)
    assert hops.down(31.9) == {(GW1.host, GW1.port)}
    assert hops.down(32.0) == frozenset()  # the hold is over
    assert (hops.stats["hop.held_down"], hops.stats["hop.back_up"]) == (2, 1)
    assert hops.next_probe() is None and hops.probes_due(100.0) == []
    off = HopHealth(hold_down=0, watched=WATCHED)
    off.failed(GW1, 0.0)
    assert off.down(0.0) == frozenset() and off.next_probe() is None


def test_only_the_route_tables_hops_are_watched() -> None:
    hops = HopHealth(watched=frozenset({(GW1.host, GW1.port)}))
    phone = Endpoint("outside", "UDP", "203.0.113.77", 5060)  # a callee, not a gateway
    hops.failed(phone, 0.0)
    hops.failed(GW1, 0.0)
    assert hops.down(1.0) == {(GW1.host, GW1.port)} and hops.probes_due(10.0) == [GW1]
    hops.watch(frozenset({(GW2.host, GW2.port)}))  # a reloaded table without gw1
    assert hops.down(1.0) == frozenset() and hops.next_probe() is None


def test_a_down_hop_is_probed_every_interval_until_it_answers_or_its_hold_ends() -> None:
    hops = HopHealth(hold_down=30.0, probe_interval=10.0, watched=WATCHED)
    hops.failed(GW1, 0.0)
    assert hops.next_probe() == 10.0
    assert hops.probes_due(9.9) == []
    assert hops.probes_due(10.0) == [GW1]
    assert hops.next_probe() == 20.0
    hops.answered(GW1.host, GW1.port)  # the probe's answer: back up, no more probes
    assert hops.down(20.0) == frozenset() and hops.next_probe() is None
    hops.failed(GW2, 100.0)
    assert hops.probes_due(110.0) == [GW2] and hops.probes_due(120.0) == [GW2]
    assert hops.probes_due(130.0) == []  # the hold is over at 130: nothing left to probe
    assert hops.next_probe() is None
    assert hops.stats["hop.probes"] == 3


def services(
    tmp_path: Path, proxy: str = "", hops: tuple[Endpoint, ...] = (GW1, GW2)
) -> AlgServices:
    """The core with a default route to `hops`, in this order (priorities 10, 20, ...)."""
    routes = tmp_path / "routes.toml"
    entries = "".join(
        f'  {{ hop = "{hop.host}:{hop.port}", priority = {10 * (i + 1)} }},\n'
        for i, hop in enumerate(hops)
    )
    routes.write_text(f"[default]\nnext_hops = [\n{entries}]\n")
    text = f"""
[inside]
address = "10.77.0.1"
[outside]
address = "203.0.113.1"
[proxy]
inside_networks = ["10.77.0.0/16"]
{proxy}
[files]
routes = "{routes}"
"""
    return assemble(parse_config(tomllib.loads(text)))


def call(n: int) -> bytes:
    return invite(call_id=f"call-{n}@10.77.0.10", branch=f"z9hG4bKalice{n}", to_user="bob")


def test_a_silent_gateway_gives_way_after_the_failover_timeout_and_is_tried_last(
    tmp_path: Path,
) -> None:
    core = services(tmp_path).core
    assert sent_to(core.receive(call(1), ALICE, 0.0), GW1)  # the priority-10 gateway
    fired = run_timers(core, 3.99)
    assert all(not sent_to(out, GW2) for _, out in fired)  # gw1 retransmits meanwhile
    (at, out), *_ = run_timers(core, 4.0)
    assert at == 4.0
    (to_gw2,) = sent_to(out, GW2)
    assert core.stats["failover.no_answer"] == 1
    assert core.hops.down(4.0) == {(GW1.host, GW1.port)}
    # gw1 is given up: no more retransmissions to it
    assert all(not sent_to(out, GW1) for _, out in run_timers(core, 8.0))
    ok = build_response(to_gw2, 200, to_tag="g2")
    (answer,) = sent_to(core.receive(ok, GW2, 4.1), ALICE)
    assert answer.status == 200
    # the next call, while gw1 is held down, goes to gw2 first
    assert sent_to(core.receive(call(2), ALICE, 10.0), GW2)
    # once the hold-down (30 s) is over, gw1 is first again
    assert sent_to(core.receive(call(3), ALICE, 34.1), GW1)


def test_a_gateway_that_answers_is_waited_for(tmp_path: Path) -> None:
    core = services(tmp_path).core
    (to_gw1,) = sent_to(core.receive(call(1), ALICE, 0.0), GW1)
    core.receive(build_response(to_gw1, 100), GW1, 0.2)
    fired = run_timers(core, 20.0)
    assert all(not sent_to(out, GW2) for _, out in fired)
    assert core.stats["failover.no_answer"] == 0 and core.hops.down(20.0) == frozenset()


@pytest.mark.parametrize("proxy", ["failover_timeout = 0", "hop_hold_down = 0"])
def test_each_part_can_be_turned_off(tmp_path: Path, proxy: str) -> None:
    core = services(tmp_path, proxy).core
    core.receive(call(1), ALICE, 0.0)
    moved = [at for at, out in run_timers(core, 40.0) if sent_to(out, GW2)]
    if proxy.startswith("failover"):
        # no failover timer: the target gives way only when Timer B (64*T1) fires
        assert moved[0] == 32.0, moved
        assert core.hops.down(32.0) == {(GW1.host, GW1.port)}  # held down after Timer B
    else:
        assert moved[0] == 4.0, moved
        assert core.hops.down(4.0) == frozenset()


def test_a_lone_target_has_no_failover_timer_but_is_held_down_after_timer_b(
    tmp_path: Path,
) -> None:
    core = services(tmp_path, hops=(GW1,)).core
    core.receive(call(1), ALICE, 0.0)
    fired = run_timers(core, 40.0)
    # nothing else to try: the INVITE is retransmitted until Timer B, then alice gets a
    # 408 (retransmitted by Timer G, as she does not ACK here)
    finals = [(at, m.status) for at, out in fired for m in sent_to(out, ALICE)]
    assert finals[0] == (32.0, 408), finals
    assert core.stats["failover.no_answer"] == 0
    assert core.hops.down(32.0) == {(GW1.host, GW1.port)}


def test_the_counters_name_the_held_down_hops(tmp_path: Path) -> None:
    assembled = services(tmp_path)
    now = time.monotonic()  # the core's clock in the running ALG (the loop's)
    assembled.core.receive(call(1), ALICE, now)
    run_timers(assembled.core, now + 4.0)
    counters = assembled.counters()
    assert counters["next_hops_held_down"] == [f"{GW1.host}:{GW1.port}"]
    assert counters["proxy"]["failover.no_answer"] == 1  # type: ignore[index]


def options_to(out: list[Send], hop: Endpoint) -> list[SipMessage]:
    return [m for m in sent_to(out, hop) if m.method == "OPTIONS"]


def test_the_silent_gateway_is_probed_and_comes_back_when_it_answers(tmp_path: Path) -> None:
    core = services(tmp_path).core
    core.receive(call(1), ALICE, 0.0)
    fired = run_timers(core, 13.99)
    assert core.hops.down(13.99) == {(GW1.host, GW1.port)}
    assert not [m for _, out in fired for m in options_to(out, GW1)]
    ((at, out),) = [(at, out) for at, out in run_timers(core, 14.0) if options_to(out, GW1)]
    assert at == 14.0  # held down at 4.0, probed 10 s later
    (probe,) = options_to(out, GW1)
    assert probe.top_via.host == "203.0.113.1" and str(probe.request_uri) == "sip:198.51.100.1:5060"
    assert core.receive(build_response(probe, 200, to_tag="p1"), GW1, 14.1) == []  # ours
    assert core.hops.down(14.1) == frozenset()
    assert sent_to(core.receive(call(2), ALICE, 15.0), GW1)  # first again


def test_a_probe_left_unanswered_holds_the_gateway_down_again(tmp_path: Path) -> None:
    core = services(tmp_path).core
    core.receive(call(1), ALICE, 0.0)
    run_timers(core, 60.0)
    # without probes gw1 would be back at 34 s; the probe sent at 14 s timed out at 46 s
    # (gw2, which got the call and never answered it either, is down too)
    assert (GW1.host, GW1.port) in core.hops.down(60.0)
    assert core.stats["hop.probes"] >= 2
