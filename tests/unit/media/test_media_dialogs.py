"""Forking, re-INVITE, hold, session timers, anti-forgery, agents (virtual clock)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from media_testing import ALICE, BOB, CAROL, Alg, Clock, backend, request, response, sdp

from alg.media.actions import Reject, Release, Reserve
from alg.media.agents import AgentPool, AgentSettings, Breaker
from alg.media.antiforgery import TrustedPeer
from alg.media.core import MediaConfig, MediaCore


def invite_out(alg: Alg, body: bytes = sdp(), **kw: object) -> bytes:
    data = alg.forward_request(request("INVITE", body=body, **kw), ALICE, BOB)  # type: ignore[arg-type]
    assert not isinstance(data, Reject), data
    return data


def answered(alg: Alg) -> bytes:
    sent = invite_out(alg)
    alg.forward_response(response(sent, 200, body=sdp("203.0.113.20", 50000)), BOB, ALICE)
    return sent


def test_forking_one_rule_per_early_dialog_losers_released(alg: Alg) -> None:
    sent = invite_out(alg)
    alg.forward_response(
        response(sent, 183, to_tag="b1", body=sdp("203.0.113.20", 50000)), BOB, ALICE
    )
    alg.forward_response(
        response(sent, 183, to_tag="c1", body=sdp("203.0.113.30", 52000)), CAROL, ALICE
    )
    remotes = sorted(str(r.remote_address) for r in alg.rules())  # type: ignore[attr-defined]
    assert remotes == ["203.0.113.20", "203.0.113.30"]
    assert len(alg.bindings()) == 1  # one inside endpoint, one binding
    alg.forward_response(
        response(sent, 200, to_tag="c1", body=sdp("203.0.113.30", 52000)), CAROL, ALICE
    )
    [rule] = alg.rules()
    assert str(rule.remote_address) == "203.0.113.30"  # type: ignore[attr-defined]


def test_reinvite_success_make_before_break(alg: Alg) -> None:
    answered(alg)
    reinvite = request("INVITE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2, body=sdp(version=2))
    out = alg.forward_request(reinvite, ALICE, BOB)
    before = {r.rule_id for r in alg.rules()}  # type: ignore[attr-defined]
    alg.forward_response(response(out, 200, body=sdp("203.0.113.40", 50000)), BOB, ALICE)  # type: ignore[arg-type]
    [rule] = alg.rules()
    assert str(rule.remote_address) == "203.0.113.40" and rule.rule_id not in before  # type: ignore[attr-defined]
    enables = [a for a in alg.performed if type(a).__name__ == "Enable"]
    removes = [a for a in alg.performed if type(a).__name__ == "ChangeLifetime"]
    assert alg.performed.index(enables[-1]) < alg.performed.index(removes[-1])


def test_reinvite_failure_rolls_back(alg: Alg) -> None:
    answered(alg)
    rules_before = {r.rule_id for r in alg.rules()}  # type: ignore[attr-defined]
    reinvite = request(
        "INVITE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2, body=sdp(port=40100, version=2)
    )
    out = alg.forward_request(reinvite, ALICE, BOB)
    assert len(alg.bindings()) == 2
    alg.forward_response(response(out, 488), BOB, ALICE)  # type: ignore[arg-type]
    [binding] = alg.bindings()
    assert binding.internal.port == 40000  # type: ignore[attr-defined]
    assert {r.rule_id for r in alg.rules()} == rules_before  # type: ignore[attr-defined]
    assert alg.core.call_count == 1


def test_hold_and_resume_keep_bindings(alg: Alg) -> None:
    answered(alg)
    [binding] = alg.bindings()
    hold = request(
        "INVITE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2, body=sdp("0.0.0.0", version=2)
    )
    out = alg.forward_request(hold, ALICE, BOB)
    assert b"c=IN IP4 0.0.0.0" in out  # type: ignore[operator]
    alg.forward_response(
        response(out, 200, body=sdp("203.0.113.20", 50000, media_extra="a=recvonly\r\n")),
        BOB,
        ALICE,
    )  # type: ignore[arg-type]
    assert alg.bindings() == [binding] and len(alg.rules()) == 1
    resume = request("INVITE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=3, body=sdp(version=3))
    out = alg.forward_request(resume, ALICE, BOB)
    alg.forward_response(response(out, 200, body=sdp("203.0.113.20", 50000)), BOB, ALICE)  # type: ignore[arg-type]
    assert alg.bindings() == [binding] and len(alg.rules()) == 1


def test_session_timer_inserted_and_expiry_releases(alg: Alg) -> None:
    sent = invite_out(alg, extra="Supported: timer\r\n")
    assert b"Session-Expires: 1800" in sent
    ok = alg.forward_response(response(sent, 200, body=sdp("203.0.113.20", 50000)), BOB, ALICE)
    assert b"refresher=uac" in ok and b"Require: timer" in ok  # type: ignore[operator]
    alg.advance(1700)
    assert alg.core.call_count == 1
    refresh = request("UPDATE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2)
    out = alg.forward_request(refresh, ALICE, BOB)
    alg.forward_response(
        response(out, 200, extra="Session-Expires: 1800;refresher=uac\r\n"), BOB, ALICE
    )  # type: ignore[arg-type]
    alg.advance(1700)
    assert alg.core.call_count == 1 and len(alg.bindings()) == 1
    alg.advance(200)
    assert alg.core.call_count == 0 and alg.bindings() == []


def test_forged_inside_sdp_is_488_and_opens_nothing(alg: Alg) -> None:
    out = alg.forward_request(request("INVITE", body=sdp("10.77.0.99")), ALICE, BOB)
    assert isinstance(out, Reject) and out.status == 488
    assert alg.bindings() == [] and alg.performed == []


def test_trusted_pbx_may_signal_for_its_subnet() -> None:
    alg = Alg()
    config = alg.core.config
    alg.core = MediaCore(
        MediaConfig(
            config.hiding, config.secret, trusted=(TrustedPeer.of("10.77.0.10", "10.77.5.0/24"),)
        ),
        alg.core.pool,
    )
    out = alg.forward_request(request("INVITE", body=sdp("10.77.5.7")), ALICE, BOB)
    assert not isinstance(out, Reject)
    assert str(alg.bindings()[0].internal) == "10.77.5.7:40000"  # type: ignore[attr-defined]
    alg.assert_no_leak()
    alg.close()


def test_no_agent_is_503_and_nothing_forwarded() -> None:
    alg = Alg(settings=AgentSettings(threshold=1, attempts=1, open_for=30))
    alg.down.add("gw1")
    out = alg.forward_request(request("INVITE", body=sdp()), ALICE, BOB)
    assert isinstance(out, Reject) and out.status == 0  # parked: no answer yet
    alg.advance(3)  # the deadline passes: refused, breaker open
    assert any(getattr(r, "status", None) == 503 for r in alg.resolutions)
    assert alg.core.pool.state("gw1", alg.now) is Breaker.OPEN
    out = alg.forward_request(request("INVITE", call_id="c2@10.77.0.10", body=sdp()), ALICE, BOB)
    assert isinstance(out, Reject) and out.status == 503
    assert alg.outside_wire == []
    alg.close()


def test_failover_and_circuit_breaker_half_open() -> None:
    clock = Clock()
    agents = {"gw1": backend(clock), "gw2": backend(clock, "198.51.100.20")}
    alg = Alg(clock=clock, agents=agents, settings=AgentSettings(threshold=1, attempts=2))
    probe = AgentPool(alg.core.pool.agents, alg.core.pool.settings)
    first = probe.choose(alg.core.tokens.key("c1@10.77.0.10", "a1"), alg.now)
    alg.down.add(first or "")
    out = alg.forward_request(request("INVITE", body=sdp()), ALICE, BOB)
    assert isinstance(out, Reject)  # parked
    alg.advance(2.5)  # timeout: a retry is scheduled (backoff)
    alg.advance(0.5)  # ... and sent with the same request, hence the same key
    retried = [a for a in alg.performed if isinstance(a, Reserve) and a.agent == first]
    assert len(retried) == 2 and retried[0].request == retried[1].request
    alg.advance(3)  # gives up: breaker opens, the call moves
    other = "gw2" if first == "gw1" else "gw1"
    assert len(alg.bindings(other)) == 1
    assert any(isinstance(a, Release) and a.agent == first for a in alg.performed)
    assert alg.core.pool.state(first or "", alg.now) is Breaker.OPEN
    alg.advance(31)
    assert alg.core.pool.state(first or "", alg.now) is Breaker.HALF_OPEN
    alg.down.clear()
    alg.core.pool.succeeded(first or "")
    assert alg.core.pool.state(first or "", alg.now) is Breaker.CLOSED
    alg.assert_no_leak()
    alg.close()


@settings(max_examples=60, deadline=None)
@given(
    host=st.integers(2, 254),
    port=st.integers(1024, 30000).map(lambda p: p * 2),
    mux=st.booleans(),
    extra=st.sampled_from(["", "a=x-note:10.77.3.3\r\n", "i=at 10.77.9.9\r\n"]),
    ice=st.booleans(),
    video=st.sampled_from(
        [
            "",
            "m=video 0 RTP/AVP 31\r\nc=IN IP4 10.77.0.{h}\r\n",
            "m=video {p2} RTP/AVP 31\r\na=rtcp:{p3} IN IP4 10.77.0.{h}\r\n",
        ]
    ),
)
def test_random_sdps_never_leak(
    host: int, port: int, mux: bool, extra: str, ice: bool, video: str
) -> None:
    alg = Alg()
    address = f"10.77.0.{host}"
    media = ("a=rtcp-mux\r\n" if mux else "") + extra
    if ice:
        media += f"a=candidate:1 1 UDP 2130706431 {address} {port} typ host\r\na=ice-ufrag:abcd\r\n"
    streams = video.format(h=host, p2=port + 2, p3=port + 5)
    body = sdp(address, port, media_extra=media, streams=streams)
    source = type(ALICE)("inside", "UDP", address, 5060)
    out = alg.forward_request(
        request("INVITE", body=body, call_id=f"x@{address}", contact=f"<sip:a@{address}>"),
        source,
        BOB,
    )
    assert not isinstance(out, Reject) or out.status in (500,), out
    alg.assert_no_leak()
    alg.close()
