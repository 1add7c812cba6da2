"""The agent says a confirmed call's media is gone (FCP WatchEvents: idle, expired, removed
by an operator): the ALG ends the call itself — one BYE to each party with an RFC 3326
Reason, the CDR says the ALG ended it and why, every binding is released — and an event
about a group or a pinhole the call no longer holds changes nothing (`MediaCore
.bindings_gone`). First the media core in the UAC-ALG-UAS harness, then the proxy core
with the recorder, as the shell drives it (`ProxyCore.media_gone`)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest
from media_testing import ALICE, BOB, Alg, backend, request, response, sdp

from alg.builders import build_response
from alg.cdr import CallRecorder, Disposition
from alg.media.actions import Reject, Release
from alg.media.agents import AgentConfig, AgentPool, GroupGone
from alg.media.core import MediaConfig, MediaCore
from alg.media.ledger import ENDED_MEMORY
from alg.media.masking import InsideNetworks
from alg.media.perform import OwnedBackend, perform
from alg.media.rewrite import Hiding
from alg.proxy import ProxyCore
from alg.proxy_model import Endpoint, Interface, ProxyConfig, Send, Target
from alg.sip import SipMessage, SipUri, parse_message
from fcp.types import EventKind, LifetimeChange, LifetimeTarget

CALL_ID = "c1@10.77.0.10"
# a proxy of bob's provider between us and bob: it records its route above ours
PROVIDER_RR = "<sip:203.0.113.99;lr>"

REASONS = {
    EventKind.IDLE: 'SIP;cause=408;text="media timeout"',
    EventKind.EXPIRED: 'SIP;cause=408;text="media lifetime expired"',
    EventKind.REMOVED_BY_ADMIN: 'SIP;cause=503;text="media removed by operator"',
}


@dataclasses.dataclass
class Answered:
    invite: bytes  # as bob got it
    ok: bytes  # bob's 200, as he sent it


def answered_call(alg: Alg) -> Answered:
    """alice (inside) calls bob (outside); bob's 200 copies the Record-Route (RFC 3261
    §12.1.1) with his provider's entry on top."""
    sent = alg.forward_request(request("INVITE", call_id=CALL_ID, body=sdp()), ALICE, BOB)
    assert not isinstance(sent, Reject), sent
    ours = parse_message(sent).header("record-route")
    ok = response(
        sent,
        200,
        body=sdp("203.0.113.20", 50000),
        extra=f"Record-Route: {PROVIDER_RR}, {ours}\r\n",
    )
    assert not isinstance(alg.forward_response(ok, BOB, ALICE), Reject)
    return Answered(sent, ok)


def gone(alg: Alg, kind: EventKind, what: str) -> GroupGone:
    """The event the agent sends for the call's `what` ("rule", "binding", "group")."""
    call = alg.core.call(CALL_ID)
    assert call is not None
    [rule] = alg.rules()
    [binding] = alg.bindings()
    rule_id = rule.rule_id if what == "rule" else None  # type: ignore[attr-defined]
    binding_id = None if what == "group" else binding.binding_id  # type: ignore[attr-defined]
    return GroupGone("gw1", call.group_id, kind, binding_id, rule_id)


def byes(alg: Alg) -> dict[str, tuple[str, SipMessage]]:
    """The core's requests by side: (next hop, message); exactly one BYE per side."""
    requests = alg.core.take_requests()
    assert sorted((r.side, r.method) for r in requests) == [
        ("inside", "BYE"),
        ("outside", "BYE"),
    ]
    return {r.side: (r.next_hop, parse_message(r.data)) for r in requests}


@pytest.mark.parametrize("what", ["rule", "binding", "group"])
@pytest.mark.parametrize("kind", [EventKind.IDLE, EventKind.EXPIRED, EventKind.REMOVED_BY_ADMIN])
def test_a_confirmed_call_whose_media_is_gone_is_ended_both_ways(
    alg: Alg, kind: EventKind, what: str
) -> None:
    answered_call(alg)
    assert alg.core.take_requests() == []
    call = alg.core.bindings_gone(gone(alg, kind, what), alg.now)
    assert call is not None and call.call_id == CALL_ID
    sent = byes(alg)
    hop, to_bob = sent["outside"]
    # to bob the ALG stands in for alice: her tag in From, her CSeq space (INVITE was 1),
    # along the route set toward the callee (the entries above ours, RFC 5658 §4)
    assert hop == "sip:203.0.113.99;lr"
    assert to_bob.header("route") == PROVIDER_RR
    assert to_bob.request_uri.text == "sip:bob@203.0.113.20:5060"  # type: ignore[union-attr]
    assert (to_bob.from_.tag, to_bob.to.tag) == ("a1", "b1")
    assert (to_bob.cseq.number, to_bob.cseq.method) == (2, "BYE")
    assert to_bob.top_via.host == "203.0.113.1"
    assert b"10.77." not in to_bob.raw  # masked like everything that goes out
    hop, to_alice = sent["inside"]
    # to alice it stands in for bob, who sent no request yet: nothing below our entries
    assert hop == "sip:alice@10.77.0.10:5060" and to_alice.header("route") is None
    assert (to_alice.from_.tag, to_alice.to.tag) == ("b1", "a1")
    assert (to_alice.cseq.number, to_alice.cseq.method) == (1, "BYE")
    assert to_alice.top_via.host == "10.77.0.1"
    assert to_alice.call_id == CALL_ID
    # her own From URI, masked on the way out and back in bob's 2xx, is hers again
    assert str(to_alice.to.uri) == "sip:alice@10.77.0.10"
    assert b"sw-" not in to_alice.raw
    for message in (to_bob, to_alice):
        assert message.header("reason") == REASONS[kind]
    status, text = {
        EventKind.IDLE: (408, "media timeout"),
        EventKind.EXPIRED: (408, "media lifetime expired"),
        EventKind.REMOVED_BY_ADMIN: (503, "media removed by operator"),
    }[kind]
    [ending] = alg.core.take_endings()
    assert (ending.call_id, ending.at, ending.status, ending.reason) == (
        CALL_ID,
        alg.now,
        status,
        text,
    )
    assert alg.core.call_count == 0
    assert alg.core.stats["teardown.media_gone"] == 1
    # the group is released (the agent forgets what it already removed)
    performed = len(alg.performed)
    alg.pump()
    assert [type(a) for a in alg.performed[performed:]] == [Release]
    assert alg.bindings() == [] and alg.rules() == []
    [record] = alg.core.take_records()
    assert record.call_id == CALL_ID and record.media["agent"] == "gw1"
    # the rest of the event's burst (a group's removal names each rule and binding)
    # finds no call: nothing more is sent
    assert alg.core.bindings_gone(gone_again(call.group_id, kind), alg.now) is None
    assert alg.core.take_requests() == [] and alg.core.take_actions() == []


def gone_again(group_id: str, kind: EventKind) -> GroupGone:
    return GroupGone("gw1", group_id, kind, "b-any", None)


def test_a_bye_crossing_ours_is_forwarded_and_starts_nothing(alg: Alg) -> None:
    answered = answered_call(alg)
    alg.core.bindings_gone(gone(alg, EventKind.IDLE, "rule"), alg.now)
    alg.pump()  # the release
    byes(alg)
    alg.core.take_endings()
    alg.core.take_records()
    # alice hung up before our BYE reached her: her BYE goes on to bob (the proxy's
    # routing; the media core knows the call ended and starts nothing), and bob, whose
    # dialog our BYE ended, answers 481 (RFC 3261 §15.1.2), which goes back to her
    rr = parse_message(answered.invite).header("record-route")
    assert rr is not None
    bye = request(
        "BYE",
        uri="sip:bob@203.0.113.20:5060",
        via="SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bKa2;rport",
        call_id=CALL_ID,
        to="<sip:bob@203.0.113.20>;tag=b1",
        cseq=2,
    )
    down = alg.forward_request(bye, ALICE, BOB)
    assert not isinstance(down, Reject)
    assert alg.core.call_count == 0 and alg.core.take_actions() == []
    back = alg.forward_response(response(down, 481, to_tag=None), BOB, ALICE)
    assert not isinstance(back, Reject)
    assert alg.core.call_count == 0
    assert alg.core.take_requests() == [] and alg.core.take_endings() == []
    # and once the 2xx retransmission window is past, the core holds nothing at all
    alg.advance(ENDED_MEMORY + 1)
    assert alg.core.take_records() == []
    assert set(alg.core.footprint().values()) == {0}, alg.core.footprint()
    assert alg.core.get_timer() is None


def test_an_event_for_a_group_or_a_pinhole_the_call_does_not_hold_changes_nothing(
    alg: Alg,
) -> None:
    answered_call(alg)
    call = alg.core.call(CALL_ID)
    assert call is not None
    before = dict(alg.core.footprint())
    stale = [
        GroupGone("gw1", "g-unknown", EventKind.REMOVED_BY_ADMIN, "b-1", "r-1"),
        GroupGone("gw1", call.group_id, EventKind.IDLE, None, "r-superseded"),
        GroupGone("gw1", call.group_id, EventKind.EXPIRED, "b-freed", None),
    ]
    assert [alg.core.bindings_gone(g, alg.now) for g in stale] == [None, call, call]
    assert alg.core.take_requests() == [] and alg.core.take_actions() == []
    assert alg.core.take_endings() == []
    assert alg.core.call(CALL_ID) is call and alg.core.footprint() == before
    assert alg.core.stats["agent.gone.no_call"] == 1
    assert alg.core.stats["agent.gone.stale"] == 2
    assert len(alg.bindings()) == 1 and len(alg.rules()) == 1


def test_an_unanswered_call_is_left_to_its_caller(alg: Alg) -> None:
    sent = alg.forward_request(request("INVITE", call_id=CALL_ID, body=sdp()), ALICE, BOB)
    assert not isinstance(sent, Reject)
    ringing = response(sent, 183, body=sdp("203.0.113.20", 50000))
    assert not isinstance(alg.forward_response(ringing, BOB, ALICE), Reject)
    [rule] = alg.rules()  # early media's pinhole
    call = alg.core.call(CALL_ID)
    assert call is not None
    # the agent removed it (idle: the callee rang without sending early media) ...
    gone_rule = LifetimeChange(LifetimeTarget.RULE, rule.rule_id, 0)  # type: ignore[attr-defined]
    alg.loop.run_until_complete(alg.agents["gw1"].change_lifetime("alg-1", gone_rule))
    event = GroupGone("gw1", call.group_id, EventKind.IDLE, None, rule.rule_id)  # type: ignore[attr-defined]
    assert alg.core.bindings_gone(event, alg.now) is call
    assert alg.core.take_requests() == [] and alg.core.take_endings() == []
    assert alg.core.call(CALL_ID) is call
    assert alg.core.stats["agent.gone.kept"] == 1
    # ... and the ALG opens it again at once, to the same peer: early media starting
    # later, and the answer, get through
    alg.pump()
    [again] = alg.rules()
    assert again.rule_id != rule.rule_id  # type: ignore[attr-defined]
    assert again.remote_address == rule.remote_address  # type: ignore[attr-defined]
    assert alg.core.stats["agent.gone.reopened"] == 1
    ok = response(sent, 200, body=sdp("203.0.113.20", 50000))
    assert not isinstance(alg.forward_response(ok, BOB, ALICE), Reject)
    assert [r.rule_id for r in alg.rules()] == [again.rule_id]  # type: ignore[attr-defined]


# --- the proxy core with the recorder, as the shell drives it --------------------------

INSIDE = Interface("inside", "10.77.0.1", 5060)
OUTSIDE = Interface("outside", "203.0.113.1", 5060)
PROXY = ProxyConfig(
    interfaces={"inside": INSIDE, "outside": OUTSIDE}, inside_networks=("10.77.0.0/16",)
)


class Router:
    def route(self, request: SipMessage, source: Endpoint, now: float) -> list[Target]:
        uri = request.request_uri
        assert isinstance(uri, SipUri)
        to = BOB if uri.user == "bob" else ALICE
        return [Target(to, f"sip:{uri.user}@{to.host}:{to.port}")]


class Rig:
    """ProxyCore + MediaCore + CallRecorder; the MemoryBackend answers every action."""

    def __init__(self) -> None:
        self.clock = lambda: self.now
        self.now = 1_700_000_000.0
        self.agent = backend(self.clock)  # type: ignore[arg-type]
        hiding = Hiding("203.0.113.1", 5060, InsideNetworks.of("10.77.0.0/16"))
        self.media = MediaCore(MediaConfig(hiding, b"k" * 32), AgentPool((AgentConfig("gw1"),)))
        self.recorder = CallRecorder()
        self.core = ProxyCore(PROXY, Router(), recorder=self.recorder, media=self.media)  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()
        self.written: list[object] = []

    def settle(self, out: list[Send]) -> list[Send]:
        """Perform the media core's actions (feeding their results back) until none is
        left; every Send that causes, with `out` first."""
        while actions := self.media.take_actions():
            for action in actions:
                result = self.loop.run_until_complete(
                    perform(action, OwnedBackend(self.agent, "alg-1"))
                )
                out += self.core.media_result(result, self.now)
        self.written += self.core.take_finished_calls()
        return out

    def receive(self, data: bytes, source: Endpoint) -> list[Send]:
        return self.settle(self.core.receive(data, source, self.now))

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while (deadline := self.core.get_timer()) is not None and deadline <= until:
            self.now = deadline
            self.settle(self.core.handle_timer(deadline))
        self.now = until

    def held(self) -> tuple[list[object], list[object]]:
        bindings = self.loop.run_until_complete(self.agent.list_bindings("alg-1"))
        rules = self.loop.run_until_complete(self.agent.list_rules("alg-1"))
        return list(bindings), list(rules)


def to(out: list[Send], endpoint: Endpoint) -> list[SipMessage]:
    return [parse_message(s.data) for s in out if s.to == endpoint]


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig()
    yield built
    built.loop.close()


def test_the_proxy_sends_the_byes_and_the_cdr_says_the_alg_ended_the_call(rig: Rig) -> None:
    invite = request("INVITE", uri="sip:bob@example.net", call_id=CALL_ID, body=sdp())
    [forwarded] = to(rig.receive(invite, ALICE), BOB)
    dialog = (
        ("Record-Route", (forwarded.header("record-route") or "").encode()),
        ("Contact", b"<sip:bob@203.0.113.20:5060>"),
    )
    body = sdp("203.0.113.20", 50000)
    ok = build_response(forwarded, 200, to_tag="b1", body=body, extra_headers=dialog)
    rig.now += 1
    [answered] = to(rig.receive(ok, BOB), ALICE)
    assert answered.status == 200
    [rule] = rig.held()[1]
    call = rig.media.call(CALL_ID)
    assert call is not None
    rig.now += 10
    ended_at = rig.now
    event = GroupGone("gw1", call.group_id, EventKind.IDLE, rule.binding_id, rule.rule_id)  # type: ignore[attr-defined]
    out = rig.settle(rig.core.media_gone(event, rig.now))
    [bye_alice] = [m for m in to(out, ALICE) if m.method == "BYE"]
    [bye_bob] = [m for m in to(out, BOB) if m.method == "BYE"]
    for bye in (bye_alice, bye_bob):
        assert bye.header("reason") == 'SIP;cause=408;text="media timeout"'
    # each from our address on its side (alice answers to the Via, RFC 3261 §18.2.2)
    assert (bye_alice.top_via.host, bye_bob.top_via.host) == ("10.77.0.1", "203.0.113.1")
    assert b"sw-" not in bye_alice.raw  # nothing masked goes inside (her To, our Route)
    assert b"10.77." not in next(s.data for s in out if s.to == BOB)
    # every binding released, and the CDR written: answered, ended by the ALG, why
    assert rig.held() == ([], [])
    [cdr] = rig.written
    assert (cdr.disposition, cdr.ended_by, cdr.status, cdr.reason) == (  # type: ignore[attr-defined]
        Disposition.ANSWERED,
        "alg",
        408,
        "media timeout",
    )
    assert cdr.end == ended_at and cdr.media["agent"] == "gw1"  # type: ignore[attr-defined]
    # both parties answer our BYEs: the proxy's own client transactions absorb that
    for bye, party in ((bye_alice, ALICE), (bye_bob, BOB)):
        assert rig.receive(build_response(bye, 200), party) == []
    # bob's BYE had crossed ours: the proxy routes it to alice, who answers 481; no
    # second record, nothing started
    routes = ", ".join(str(r.uri).join("<>") for r in forwarded.record_routes)
    late = (
        f"BYE {(forwarded.header('contact') or '').strip('<>')} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKbye9;rport\r\n"
        f"Route: {routes}\r\nMax-Forwards: 70\r\nFrom: <sip:bob@example.net>;tag=b1\r\n"
        f"To: {forwarded.header('from')}\r\nCall-ID: {forwarded.call_id}\r\n"
        "CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    [late_down] = to(rig.receive(late, BOB), ALICE)
    assert late_down.method == "BYE"
    [gone_up] = to(rig.receive(build_response(late_down, 481), ALICE), BOB)
    assert gone_up.status == 481
    assert rig.media.call_count == 0 and len(rig.written) == 1
    # past every timer nothing of the call is left anywhere
    rig.advance(600)
    assert set(rig.media.footprint().values()) == {0}, rig.media.footprint()
    assert rig.core.transaction_count == 0 and rig.core.get_timer() is None
    assert len(rig.recorder) == 0 and rig.recorder.closing_count == 0
    assert rig.held() == ([], [])
