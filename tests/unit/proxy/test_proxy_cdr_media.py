"""A call's CDR carries its media (bindings, counters at release): the proxy core with the
media core and a recorder, the in-memory FCP backend playing the agent. The release is
answered after the BYE closed the record; the record waits for it, within a deadline."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterator
from typing import Literal

import pytest
from proxy_harness import ALICE, BOB, StaticRouter, config, invite, sent_to

from alg.builders import build_response
from alg.cdr import CallRecorder, Cdr, Disposition
from alg.media.actions import AgentAction, Done, Enable, Failed, Release
from alg.media.agents import AgentConfig, AgentPool, AgentSettings
from alg.media.core import MediaConfig, MediaCore
from alg.media.masking import InsideNetworks
from alg.media.perform import OwnedBackend, perform
from alg.media.rewrite import Hiding
from alg.proxy import ProxyCore
from alg.proxy_model import Send
from alg.sip import SipMessage, parse_message
from fcp.errors import FcpError, Reason
from fcp.memory_backend import MemoryBackend, MemoryBackendConfig
from fcp.types import IpVersion, Pool

START = 1_700_000_000.0
PUBLIC = "198.51.100.10"
MEDIA_WAIT = 15.0
ANSWER_SDP = (
    b"v=0\r\no=bob 1 1 IN IP4 203.0.113.20\r\ns=-\r\nc=IN IP4 203.0.113.20\r\n"
    b"t=0 0\r\nm=audio 17000 RTP/AVP 0\r\n"
)


Answering = Literal["perform", "fail", "hold"]
REFUSED = FcpError(Reason.NETWORK_FAILURE, "connection refused")


class Rig:
    """The shell's part: performs the media core's actions unless `agent_up` is False
    (then they are held, as if the agent never answered) or `answer(action)` says to
    answer with an error ("fail", `REFUSED`, as a dead agent's channel does) or never
    ("hold")."""

    def __init__(self, settings: AgentSettings | None = None) -> None:
        self.now = START
        pool = Pool("v4", IpVersion.V4, (ipaddress.IPv4Address(PUBLIC),), 20000, 20999)
        self.backend = MemoryBackend(
            MemoryBackendConfig(pools=(pool,)), epoch=1, clock=lambda: self.now
        )
        media = MediaCore(
            MediaConfig(Hiding("203.0.113.1", 5060, InsideNetworks.of("10.77.0.0/16")), b"s" * 32),
            AgentPool(
                (AgentConfig("gw1", 1.0),), settings or AgentSettings(deadline=1.0, attempts=2)
            ),
        )
        self.recorder = CallRecorder(media_wait=MEDIA_WAIT)
        self.core = ProxyCore(
            config(inside_networks=("10.77.0.0/16",)),
            StaticRouter({"bob": [BOB]}),
            recorder=self.recorder,
            media=media,
        )
        self.agent_up = True
        self.answer: Callable[[AgentAction], Answering] = lambda action: "perform"
        self.held: list[AgentAction] = []
        self.written: list[tuple[float, Cdr]] = []  # what the shell would write, and when
        self.sent: list[tuple[float, Send]] = []  # everything sent, and when
        self.loop = asyncio.new_event_loop()

    def receive(self, data: bytes, source, at: float) -> list[Send]:  # type: ignore[no-untyped-def]
        self.now = START + at
        out = self.core.receive(data, source, self.now) + self.pump()
        self.sent += [(self.now, send) for send in out]
        self.drain()
        return out

    def pump(self) -> list[Send]:
        out: list[Send] = []
        media = self.core.media
        assert media is not None
        while actions := media.take_actions():
            if not self.agent_up:
                self.held += actions
                return out
            for action in actions:
                answering = self.answer(action)
                if answering == "hold":
                    self.held.append(action)
                    continue
                if answering == "fail":
                    result: Done | Failed = Failed(action.token, REFUSED)
                else:
                    result = self.loop.run_until_complete(
                        perform(action, OwnedBackend(self.backend, "alg-1"))
                    )
                out += self.core.media_result(result, self.now)
        return out

    def advance(self, to: float) -> None:
        while (deadline := self.core.get_timer()) is not None and deadline <= START + to:
            self.now = deadline
            out = self.core.handle_timer(deadline) + self.pump()
            self.sent += [(deadline, send) for send in out]
            self.drain()

    def drain(self) -> None:
        if self.core.finished_calls:
            self.written += [(self.now, cdr) for cdr in self.core.take_finished_calls()]

    def rules(self) -> list[str]:
        return [r.rule_id for r in self.loop.run_until_complete(self.backend.list_rules("alg-1"))]


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig()
    yield built
    built.loop.close()


def answer_call(rig: Rig) -> tuple[SipMessage, SipMessage]:
    """INVITE from alice, 200 with SDP from bob: what bob got, what alice got."""
    (forwarded,) = sent_to(rig.receive(invite(), ALICE, at=0.0), BOB)
    # as a UAS answers (RFC 3261 §12.1.1): the Record-Route copied, its own Contact
    dialog = (
        ("Record-Route", (forwarded.header("record-route") or "").encode()),
        ("Contact", b"<sip:bob@203.0.113.20:5060>"),
    )
    ok = build_response(forwarded, 200, to_tag="b1", body=ANSWER_SDP, extra_headers=dialog)
    ok = ok.replace(b"Content-Length: 0", b"Content-Type: application/sdp\r\nContent-Length: 0")
    message = parse_message(ok)
    assert message.body == ANSWER_SDP, ok
    (answered,) = sent_to(rig.receive(ok, BOB, at=1.0), ALICE)
    assert answered.status == 200
    return forwarded, answered


def bye_from_bob(forwarded: SipMessage) -> bytes:
    """bob hangs up: a BYE in the dialog bob saw (RFC 3261 §12.2.1.1), routed through the
    ALG's Record-Route (the route set of the UAS, in order)."""
    routes = ", ".join(str(r.uri).join("<>") for r in forwarded.record_routes)
    target = (forwarded.header("contact") or "").strip("<>")  # alice's (masked) Contact
    return (
        f"BYE {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKbye1;rport\r\n"
        f"Route: {routes}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:bob@example.net>;tag=b1\r\n"
        f"To: {forwarded.header('from')}\r\n"
        f"Call-ID: {forwarded.call_id}\r\n"
        f"CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_call_hung_up_by_bye_is_written_with_its_bindings_and_counters(rig: Rig) -> None:
    forwarded, _ = answer_call(rig)
    (rule,) = rig.rules()
    rig.backend.record_traffic(rule, 250, 250 * 172)  # 5 s of G.711 into the pinhole
    rig.agent_up = False  # the release is answered only later
    out = rig.receive(bye_from_bob(forwarded), BOB, at=6.0)
    assert [m.method for m in sent_to(out, ALICE)] == ["BYE"]
    assert rig.written == []  # the BYE ended the call, but the counters are not in yet
    assert rig.recorder.closing_count == 1
    rig.agent_up = True
    rig.now = START + 6.2
    for action in rig.held:
        result = rig.loop.run_until_complete(perform(action, OwnedBackend(rig.backend, "alg-1")))
        rig.core.media_result(result, rig.now)
    rig.drain()
    ((when, cdr),) = rig.written
    assert when == START + 6.2 and cdr.end == START + 6.0  # billed up to the BYE
    assert (cdr.disposition, cdr.ended_by) == (Disposition.ANSWERED, "bye")
    media = dict(cdr.media)
    assert media["agent"] == "gw1"
    (binding,) = media["bindings"]
    assert (binding["internal"], binding["kind"]) == ("10.77.0.10:40000", "rtp_pair")
    assert binding["external_address"] == PUBLIC
    rtp = binding["external_ports"][0]
    assert binding["external_ports"] == [rtp, rtp + 1] and rtp % 2 == 0
    assert f"m=audio {rtp} " in forwarded.body.decode()  # the binding bob was offered
    assert (binding["packets"], binding["bytes"]) == (250, 250 * 172)
    assert (media["packets"], media["bytes"]) == (250, 250 * 172)
    assert [r["remote_address"] for r in media["rules"]] == ["203.0.113.20"]
    assert rig.recorder.closing_count == 0 and rig.core.get_timer() is not None


def test_a_release_the_agent_refuses_is_written_at_once_without_counters(rig: Rig) -> None:
    forwarded, _ = answer_call(rig)
    rig.agent_up = False
    rig.receive(bye_from_bob(forwarded), BOB, at=6.0)
    # the agent answers every attempt with an error (as a dead agent's gRPC channel does)
    while rig.held or (rig.core.get_timer() or START + 999) <= START + 10:
        for action in rig.held:
            error = FcpError(Reason.NETWORK_FAILURE, "connection refused")
            rig.core.media_result(Failed(action.token, error), rig.now)
        rig.held = []
        rig.drain()
        if rig.written:
            break
        rig.now = rig.core.get_timer() or rig.now
        rig.core.handle_timer(rig.now)
        rig.pump()
    ((when, cdr),) = rig.written
    assert when < START + 6.0 + 2  # two attempts, 0.2 s apart: not the recorder's deadline
    assert cdr.ended_by == "bye"
    assert dict(cdr.media) == {
        "agent": "gw1",
        "error": "release failed: NETWORK_FAILURE: connection refused",
    }
    assert rig.recorder.closing_count == 0


def test_a_release_that_times_out_is_written_when_the_media_core_gives_up(rig: Rig) -> None:
    forwarded, _ = answer_call(rig)
    rig.agent_up = False  # the agent never answers: every attempt of the release times out
    rig.receive(bye_from_bob(forwarded), BOB, at=6.0)
    rig.advance(6.0 + MEDIA_WAIT)
    ((when, cdr),) = rig.written
    # two attempts of 1 s, 0.2 s apart: written when the media core gives up (a timer of
    # its own), not at the recorder's deadline 15 s after the BYE
    assert when == pytest.approx(START + 6.0 + 1.0 + 0.2 + 1.0)
    assert (cdr.ended_by, cdr.end) == ("bye", START + 6.0)
    assert dict(cdr.media) == {
        "agent": "gw1",
        "error": "release failed: NETWORK_FAILURE: deadline exceeded",
    }
    assert rig.recorder.closing_count == 0 and rig.recorder.get_timer() is None


def byes_sent(rig: Rig) -> list[tuple[float, Send]]:
    """The BYEs sent first (not their retransmissions, RFC 3261 §17.1.2.2), and when."""
    byes = [(when, send) for when, send in rig.sent if send.data.startswith(b"BYE ")]
    return [(when, send) for when, send in byes if when == byes[0][0]]


@pytest.mark.parametrize("answering", ["hold", "fail"])
def test_a_call_the_alg_ends_itself_is_billed_up_to_its_byes_and_says_why(
    rig: Rig, answering: Answering
) -> None:
    # the agent never opens the pinhole (no answer: both attempts time out; or an error
    # each time): the answered call has no media, and the ALG BYEs both parties
    rig.answer = lambda action: answering if isinstance(action, Enable) else "perform"
    answer_call(rig)
    rig.advance(60.0)
    byes = byes_sent(rig)
    assert sorted(send.to.side for _, send in byes) == ["inside", "outside"]
    when_ended = byes[0][0]
    for _, send in byes:
        reason = parse_message(send.data).header("reason")
        assert reason == 'SIP;cause=503;text="media anchoring failed"'
    ((written, cdr),) = rig.written
    # billed from the 2xx (1.0) to the ALG's BYEs, not up to max_duration (4 h)
    assert (cdr.answer, cdr.end, written) == (START + 1.0, when_ended, when_ended)
    expected = 1.0 + 0.2 + 1.0 if answering == "hold" else 0.2
    assert cdr.duration == pytest.approx(expected)
    assert (cdr.disposition, cdr.ended_by, cdr.status, cdr.reason) == (
        Disposition.ANSWERED,
        "alg",
        503,
        "media anchoring failed",
    )
    (binding,) = cdr.media["bindings"]  # the release came back: the call's binding
    assert (binding["packets"], cdr.media["rules"]) == (0, [])
    line = cdr.to_json()
    assert '"ended_by":"alg"' in line and '"reason":"media anchoring failed"' in line
    assert rig.recorder.closing_count == 0 and len(rig.recorder) == 0


def test_a_call_the_alg_ended_waits_for_the_release_of_its_group(rig: Rig) -> None:
    # the pinhole fails at 1.0 and again at 1.2; the release is held (it would time out
    # at 2.2)
    def answer(action: AgentAction) -> Answering:
        if isinstance(action, Enable):
            return "fail"
        return "hold" if isinstance(action, Release) else "perform"

    rig.answer = answer
    answer_call(rig)
    rig.advance(2.0)
    assert rig.written == [] and rig.recorder.closing_count == 1
    ((when_ended, _), *_) = byes_sent(rig)
    (release,) = [action for action in rig.held if isinstance(action, Release)]
    rig.now = START + 2.0
    result = rig.loop.run_until_complete(perform(release, OwnedBackend(rig.backend, "alg-1")))
    rig.core.media_result(result, rig.now)
    rig.drain()
    ((written, cdr),) = rig.written
    assert (written, cdr.end, cdr.ended_by) == (START + 2.0, when_ended, "alg")
    assert cdr.media["agent"] == "gw1" and "error" not in cdr.media


def test_the_recorder_leaves_calls_the_alg_ended_unanswered_or_already_over() -> None:
    recorder = CallRecorder()
    recorder.invite("c1", "sip:a@x", "sip:b@y", "inside", START)
    recorder.alg_ended("c1", START + 1, 503, "media anchoring failed")  # not answered yet
    assert len(recorder) == 1 and recorder.closing_count == 0
    cdr = recorder.response("c1", 503, START + 1)  # the failure final its caller gets
    assert cdr is not None and cdr.ended_by == "final" and cdr.reason is None
    recorder.alg_ended("c1", START + 2, 503, "media anchoring failed")  # already over
    assert (len(recorder), recorder.closing_count, recorder.take_ready()) == (0, 0, [])


def test_a_call_the_proxy_refused_itself_is_written_at_once(rig: Rig) -> None:
    # no route: 404 from the proxy, the media core never saw the call
    out = rig.receive(invite(to_user="nobody", call_id="c404"), ALICE, at=0.0)
    assert [m.status for m in sent_to(out, ALICE)][-1] == 404
    ((when, cdr),) = rig.written
    assert (when, cdr.status, dict(cdr.media)) == (START, 404, {})


def test_a_busy_call_lists_the_binding_of_its_offer(rig: Rig) -> None:
    (forwarded,) = sent_to(rig.receive(invite(), ALICE, at=0.0), BOB)
    rig.receive(build_response(forwarded, 486, to_tag="b1"), BOB, at=1.0)
    ((_, cdr),) = rig.written
    assert cdr.disposition is Disposition.BUSY
    (binding,) = cdr.media["bindings"]
    assert (binding["external_address"], binding["packets"]) == (PUBLIC, 0)
    assert cdr.media["rules"] == []


def test_records_waiting_for_media_are_handed_out_when_the_alg_stops(rig: Rig) -> None:
    forwarded, _ = answer_call(rig)
    rig.agent_up = False
    rig.receive(bye_from_bob(forwarded), BOB, at=6.0)
    assert rig.written == [] and rig.core.calls is not None
    (cdr,) = rig.core.calls.close()  # what alg.main writes at exit
    assert (cdr.ended_by, dict(cdr.media)) == (
        "bye",
        {"error": "the ALG stopped before the release was reported"},
    )
    assert rig.core.take_finished_calls() == [] and rig.recorder.closing_count == 0


def test_an_answer_parked_twice_that_cannot_be_anchored_fails_the_call_once(rig: Rig) -> None:
    # an outside call to alice: her 200 (SDP from the inside) waits for its binding, and
    # she retransmits it (T1) while the agent does not answer; then the agent refuses
    rig.core.router = StaticRouter({"alice": [ALICE]})
    from_outside = (
        invite(to_user="alice", call_id="out-1")
        .replace(b"Via: SIP/2.0/UDP 10.77.0.10:5060", b"Via: SIP/2.0/UDP 203.0.113.20:5060")
        .replace(b"IN IP4 10.77.0.10", b"IN IP4 203.0.113.20")
        .replace(b"<sip:alice@10.77.0.10:5060>", b"<sip:bob@203.0.113.20:5060>")
    )
    (to_alice,) = sent_to(rig.receive(from_outside, BOB, at=0.0), ALICE)
    rig.receive(build_response(to_alice, 180, to_tag="a1"), ALICE, at=0.5)
    rig.agent_up = False
    sdp = (
        b"v=0\r\no=a 1 1 IN IP4 10.77.0.10\r\ns=-\r\nc=IN IP4 10.77.0.10\r\n"
        b"t=0 0\r\nm=audio 40010 RTP/AVP 0\r\n"
    )
    contact = (("Contact", b"<sip:alice@10.77.0.10:5060>"),)
    ok = build_response(to_alice, 200, to_tag="a1", body=sdp, extra_headers=contact)
    assert sent_to(rig.receive(ok, ALICE, at=1.0), BOB) == []
    assert sent_to(rig.receive(ok, ALICE, at=1.5), BOB) == []  # the retransmission
    out: list[Send] = []
    for _ in range(100):  # every attempt refused, as by a dead agent; timers run
        actions, rig.held = rig.held, []
        for action in actions:
            error = FcpError(Reason.NETWORK_FAILURE, "connection refused")
            out += rig.core.media_result(Failed(action.token, error), rig.now)
        rig.drain()
        if rig.written or rig.now > START + 30:  # the release failed too: the CDR is out
            break
        rig.now = max(rig.now + 0.05, rig.core.get_timer() or rig.now)
        out += rig.core.handle_timer(rig.now)
        rig.pump()
    to_bob = sent_to(out, BOB)
    assert to_bob and {(m.status, m.cseq.method) for m in to_bob} == {(503, "INVITE")}
    assert "cause=503" in (to_bob[0].header("reason") or "")
    assert [m.method for m in sent_to(out, ALICE)][:2] == ["ACK", "BYE"]  # BYE: retransmitted
    ((_, cdr),) = rig.written
    assert (cdr.disposition, cdr.status, cdr.answer) == (Disposition.FAILED, 503, None)
    assert str(cdr.media["error"]).startswith("release failed")


def test_a_challenged_attempt_is_written_at_once_and_the_retry_gets_the_media(rig: Rig) -> None:
    # the provider's 407: the attempt's record has no media to wait for (the call keeps
    # its binding for the retry, RFC 3261 §22.2)
    (first,) = sent_to(rig.receive(invite(), ALICE, at=0.0), BOB)
    rig.receive(build_response(first, 407, to_tag="p1"), BOB, at=0.5)
    ((when, challenged),) = rig.written
    assert (when, challenged.status, dict(challenged.media)) == (START + 0.5, 407, {})
    assert rig.recorder.closing_count == 0
    # the retry with credentials is answered and hung up: its record carries the binding
    retry = invite(branch="z9hG4bKalice2").replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE")
    (second,) = sent_to(rig.receive(retry, ALICE, at=1.0), BOB)
    dialog = (
        ("Record-Route", (second.header("record-route") or "").encode()),
        ("Contact", b"<sip:bob@203.0.113.20:5060>"),
    )
    ok = build_response(second, 200, to_tag="b2", body=ANSWER_SDP, extra_headers=dialog)
    ok = ok.replace(b"Content-Length: 0", b"Content-Type: application/sdp\r\nContent-Length: 0")
    (answered,) = sent_to(rig.receive(ok, BOB, at=1.5), ALICE)
    assert answered.status == 200
    rig.receive(bye_from_bob(second).replace(b"tag=b1", b"tag=b2"), BOB, at=5.0)
    ((_, cdr),) = rig.written[1:]
    assert (cdr.disposition, cdr.ended_by) == (Disposition.ANSWERED, "bye")
    (binding,) = cdr.media["bindings"]
    assert binding["internal"] == "10.77.0.10:40000"
