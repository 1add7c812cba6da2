"""Two gateways, two real agents, one ALG (issues #5, #6): while gw1's agent is healthy
calls anchor on gw1; after it is SIGKILLed (and the VRRP address moves to gw2) new calls
anchor on gw2's agent and their media flows through gw2; once gw2's agent drains too, a
new call gets 503 and nothing with an inside address leaves. Real baresip phones with
tones both ways, the real agents' nftables, captures on both gateways' outside links.

The scenario runs once per module (`run`); each test checks one claim on its evidence.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from labs import build
from labs import state as st
from labs.baresip import Phone
from labs.failover_lab import (
    ALICE_HZ,
    CAROL_HZ,
    DOMAIN,
    GATEWAYS,
    FailoverLab,
    Sdp,
    count_packets,
    poll,
    sdp_sent,
    start,
)
from labs.pytest_plugin import unique_lab_name
from labs.tone import Tone, analyse

pytestmark = [pytest.mark.netns, pytest.mark.kernel, pytest.mark.peers]

TALK_SECONDS = 2.0
TONE_TOLERANCE_HZ = 5.0
MIN_PURITY = 0.8
CAROL = "203.0.113.20"
MIN_MEDIA_PACKETS = 50  # 20 ms packets: 2 s of talk is ~100 each way


@dataclass
class CallEvidence:
    label: str
    t_dial: float = 0.0
    t_hangup: float = 0.0
    held: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # agent -> bindings
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # agent -> rules
    heard: dict[str, Tone] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)  # agent -> bindings + rules after


@dataclass
class Evidence:
    calls: dict[str, CallEvidence] = field(default_factory=dict)
    breaker_after_kill: dict[str, Any] = field(default_factory=dict)
    seconds_to_open: float = 0.0
    counters_drained: dict[str, Any] = field(default_factory=dict)
    counters_end: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, Any] = field(default_factory=dict)  # the CALL_CLOSED event
    t_refused: tuple[float, float] = (0.0, 0.0)
    tables: dict[str, int | None] = field(default_factory=dict)
    sdp_out: list[Sdp] = field(default_factory=list)  # SIP with SDP sent outside
    pcaps: dict[str, Any] = field(default_factory=dict)


def _talk(fo: FailoverLab, label: str, caller: Phone, callee: Phone, uri: str) -> CallEvidence:
    call = CallEvidence(label, t_dial=time.time())
    caller.dial(uri)
    event = caller.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"), timeout=20)
    assert event.get("type") == "CALL_ESTABLISHED", f"call {label}: {event}"
    callee.wait_event("CALL_ESTABLISHED", timeout=20)
    for phone in (caller, callee):
        phone.wait_heard(TALK_SECONDS, timeout=20)
    for gw in GATEWAYS:
        if fo.agents.get(gw.host) is not None and fo.agents[gw.host].poll() is None:
            call.held[gw.host] = fo.ctl(gw.host, "bindings")
            call.rules[gw.host] = fo.ctl(gw.host, "rules")
    call.t_hangup = time.time()
    caller.hangup()
    caller.wait_event("CALL_CLOSED", timeout=15)
    callee.wait_event("CALL_CLOSED", timeout=15)
    for phone in (caller, callee):
        heard = phone.heard()
        assert heard is not None, f"call {label}: {phone.host} recorded nothing"
        keep = fo.work / f"call-{label}-{phone.host}.wav"
        shutil.copyfile(heard, keep)
        call.heard[phone.host] = analyse(keep)

    def released() -> bool:
        for host in call.held:
            call.left[host] = len(fo.ctl(host, "bindings")) + len(fo.ctl(host, "rules"))
        return not any(call.left.values())

    poll(f"call {label}: agents empty after the hangup", 20, released)
    return call


def _scenario(fo: FailoverLab, ev: Evidence) -> None:
    alice, carol = fo.phones()
    with alice, carol:
        poll("alice registered through the ALG", 20, alice.registered)
        # (a) both agents healthy: gw1, the primary, anchors
        to_carol, to_alice = f"sip:carol@{CAROL}", f"sip:alice@{DOMAIN}"
        ev.calls["a"] = _talk(fo, "a", alice, carol, to_carol)

        # (b) gw1's agent dies; the VRRP backup (gw2) takes the inside gateway address
        killed = time.monotonic()
        fo.kill_agent("gw1", signal.SIGKILL)
        fo.vrrp_master("gw2")

        def gw1_open() -> dict[str, Any] | None:
            agents: dict[str, Any] = fo.alg_counters()["agents"]
            return agents if agents["gw1"]["breaker"] == "open" else None

        ev.breaker_after_kill = poll("the ALG opening gw1's breaker", 30, gw1_open)
        ev.seconds_to_open = time.monotonic() - killed
        ev.calls["b"] = _talk(fo, "b", alice, carol, to_carol)
        ev.calls["b2"] = _talk(fo, "b2", carol, alice, to_alice)  # and the other way

        # (c) gw2's agent is told to stop: it drains (SIGTERM), then exits
        fo.kill_agent("gw2", signal.SIGTERM)
        ev.counters_drained = poll(
            "the ALG seeing gw2 drain",
            20,
            lambda: (c := fo.alg_counters())["agents"]["gw2"]["draining"] and c,
        )
        start_c = time.time()
        alice.dial(f"sip:carol@{CAROL}")
        ev.refused = alice.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"), timeout=20)
        ev.t_refused = (start_c, time.time())
        ev.counters_end = fo.alg_counters()
    fo.stop()  # ALG, agents (dead already), captures: the pcaps are complete now
    ev.tables = {gw.host: fo.table_elements(gw.host) for gw in GATEWAYS}
    ev.sdp_out = [s for gw in GATEWAYS for s in sdp_sent(fo.pcap(gw.host))]
    windows = {label: (c.t_dial, c.t_hangup) for label, c in ev.calls.items()}
    for gw in GATEWAYS:
        pcap = fo.pcap(gw.host)
        leaks = 'ip.addr == 10.77.0.0/24 || frame contains "10.77.0."'
        ev.pcaps[f"{gw.host}.inside_addresses"] = count_packets(pcap, leaks)
        for label, (t0, t1) in windows.items():
            media = "udp && !(udp.port == 5060)"
            media += f" && frame.time_epoch >= {t0} && frame.time_epoch <= {t1}"
            out = f"{media} && ip.src == {gw.outside} && ip.dst == {CAROL}"
            back = f"{media} && ip.src == {CAROL} && ip.dst == {gw.outside}"
            ev.pcaps[f"{gw.host}.{label}.out"] = count_packets(pcap, out)
            ev.pcaps[f"{gw.host}.{label}.in"] = count_packets(pcap, back)
        t0, t1 = ev.t_refused
        sip = f"sip && frame.time_epoch >= {t0} && frame.time_epoch <= {t1 + 1}"
        ev.pcaps[f"{gw.host}.c.sip"] = count_packets(pcap, sip)


@pytest.fixture(scope="module")
def run() -> Iterator[Evidence]:
    name = unique_lab_name()
    fo = start(name)
    ev = Evidence()
    try:
        _scenario(fo, ev)
        yield ev
    finally:
        try:
            fo.stop()
        finally:
            fo.lab.close()
            assert not [n for n in build.our_namespaces() if st.ns_lab(n) == name]


def _heard(call: CallEvidence) -> None:
    for phone, expect in (("alice", CAROL_HZ), ("carol", ALICE_HZ)):
        tone = call.heard[phone]
        assert abs(tone.frequency - expect) < TONE_TOLERANCE_HZ, (call.label, phone, tone)
        assert tone.purity > MIN_PURITY, (call.label, phone, tone)


def _sdp_to_carol(ev: Evidence, label: str) -> set[tuple[str, str]]:
    """(message, c= address) of every SDP the ALG sent carol during call `label`."""
    call = ev.calls[label]
    return {
        (s.what, s.connection)
        for s in ev.sdp_out
        if s.dst == CAROL and call.t_dial <= s.t <= call.t_hangup
    }


def test_a_healthy_primary_anchors_the_call(run: Evidence) -> None:
    call = run.calls["a"]
    assert [len(call.held["gw1"]), len(call.held["gw2"])] == [1, 0], call.held
    [binding] = call.held["gw1"]
    assert binding["external_address"] == "203.0.113.1"
    assert binding["internal"].startswith("10.77.0.10:")
    assert _sdp_to_carol(run, "a") == {("INVITE", "203.0.113.1")}  # what carol was offered
    assert run.pcaps["gw1.a.out"] >= MIN_MEDIA_PACKETS, run.pcaps
    assert run.pcaps["gw1.a.in"] >= MIN_MEDIA_PACKETS, run.pcaps
    assert run.pcaps["gw2.a.out"] == run.pcaps["gw2.a.in"] == 0, run.pcaps
    _heard(call)
    assert call.left == {"gw1": 0, "gw2": 0}


def test_b_after_sigkill_new_calls_anchor_and_flow_on_gw2(run: Evidence) -> None:
    # the broken event stream, not a failed call, opened gw1's breaker
    assert run.breaker_after_kill["gw1"]["breaker"] == "open", run.breaker_after_kill
    assert run.breaker_after_kill["gw2"]["breaker"] == "closed", run.breaker_after_kill
    call = run.calls["b"]
    assert list(call.held) == ["gw2"] and len(call.held["gw2"]) == 1, call.held
    [binding] = call.held["gw2"]
    assert binding["external_address"] == "203.0.113.2"
    assert binding["counters"]["packets"] > 0  # gw2's kernel forwarded alice's media
    assert any(r["counters"]["packets"] > 0 for r in call.rules["gw2"])  # ... and carol's
    assert _sdp_to_carol(run, "b") == {("INVITE", "203.0.113.2")}
    assert run.pcaps["gw2.b.out"] >= MIN_MEDIA_PACKETS, run.pcaps
    assert run.pcaps["gw2.b.in"] >= MIN_MEDIA_PACKETS, run.pcaps
    assert run.pcaps["gw1.b.out"] == run.pcaps["gw1.b.in"] == 0, run.pcaps
    _heard(call)
    assert call.left == {"gw2": 0}


def test_b2_an_incoming_call_is_answered_through_gw2_too(run: Evidence) -> None:
    call = run.calls["b2"]
    assert list(call.held) == ["gw2"] and len(call.held["gw2"]) == 1, call.held
    [binding] = call.held["gw2"]
    assert binding["external_address"] == "203.0.113.2"
    assert binding["internal"].startswith("10.77.0.10:")  # alice's answer was anchored
    assert _sdp_to_carol(run, "b2") == {("200", "203.0.113.2")}  # the answer carol got
    assert run.pcaps["gw2.b2.out"] >= MIN_MEDIA_PACKETS, run.pcaps
    assert run.pcaps["gw2.b2.in"] >= MIN_MEDIA_PACKETS, run.pcaps
    assert run.pcaps["gw1.b2.out"] == run.pcaps["gw1.b2.in"] == 0, run.pcaps
    _heard(call)
    assert call.left == {"gw2": 0}


def test_c_a_draining_agent_is_left_alone_and_no_agent_means_503(run: Evidence) -> None:
    drained = run.counters_drained
    assert drained["media"].get("gw2.event.agent_draining") == 1, drained["media"]
    event = run.refused
    assert event.get("type") == "CALL_CLOSED", event
    assert "503" in str(event.get("param")), event
    before, after = run.counters_drained["media"], run.counters_end["media"]
    assert after.get("reject.no_agent", 0) == before.get("reject.no_agent", 0) + 1
    # refused at once: no reservation was even tried on a dead or draining agent
    tried = ("agent.failed.reserve", "agent.timeout", "agent.retry")
    assert [after.get(k, 0) for k in tried] == [before.get(k, 0) for k in tried]
    assert run.pcaps["gw1.c.sip"] == run.pcaps["gw2.c.sip"] == 0, run.pcaps  # not forwarded


def test_nothing_inside_leaves_and_nothing_stays_open(run: Evidence) -> None:
    assert run.pcaps["gw1.inside_addresses"] == 0, run.pcaps
    assert run.pcaps["gw2.inside_addresses"] == 0, run.pcaps
    # the agents are gone, their tables stay (by design); they must hold nothing
    assert run.tables == {"gw1": 0, "gw2": 0}, run.tables
