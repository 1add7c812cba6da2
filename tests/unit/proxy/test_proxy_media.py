"""The proxy core with media anchoring on: the in-memory FCP backend plays the agent."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest
from proxy_harness import ALICE, BOB, INSIDE, OUTSIDE, StaticRouter, config, invite, sent_to

from alg.builders import build_response
from alg.media.agents import AgentConfig, AgentPool, AgentSettings
from alg.media.core import MediaConfig, MediaCore
from alg.media.masking import InsideNetworks
from alg.media.perform import OwnedBackend, perform
from alg.media.rewrite import Hiding
from alg.proxy import ProxyCore
from alg.proxy_model import Endpoint, Interface, Send
from alg.sip import parse_message
from fcp.memory_backend import MemoryBackend, MemoryBackendConfig
from fcp.types import IpVersion, Pool

START = 1_700_000_000.0
PUBLIC = "198.51.100.10"


class Rig:
    def __init__(
        self,
        *,
        agent_answers: bool = True,
        hiding: Hiding | None = None,
        bob: Endpoint = BOB,
        outside: Interface | None = None,
    ) -> None:
        self.now = START
        pool = Pool("v4", IpVersion.V4, (ipaddress.IPv4Address(PUBLIC),), 20000, 20999)
        self.backend = MemoryBackend(
            MemoryBackendConfig(pools=(pool,)), epoch=1, clock=lambda: self.now
        )
        media = MediaCore(
            MediaConfig(
                hiding or Hiding("203.0.113.1", 5060, InsideNetworks.of("10.77.0.0/16")),
                b"s" * 32,
            ),
            AgentPool((AgentConfig("gw1", 1.0),), AgentSettings(deadline=1.0, attempts=2)),
        )
        interfaces = {"inside": INSIDE, "outside": outside or OUTSIDE}
        self.core = ProxyCore(
            config(inside_networks=("10.77.0.0/16",), interfaces=interfaces),
            StaticRouter({"bob": [bob]}),
            media=media,
        )
        self.agent_answers = agent_answers
        self.loop = asyncio.new_event_loop()

    def receive(self, data: bytes, source, at: float = 0.0) -> list[Send]:  # type: ignore[no-untyped-def]
        self.now = START + at
        return self.core.receive(data, source, self.now) + self.pump()

    def pump(self) -> list[Send]:
        """Perform the media core's agent actions (as the shell does) until none are left."""
        out: list[Send] = []
        media = self.core.media
        assert media is not None
        while actions := media.take_actions():
            if not self.agent_answers:
                return out
            for action in actions:
                api = OwnedBackend(self.backend, "alg-1")
                result = self.loop.run_until_complete(perform(action, api))
                out += self.core.media_result(result, self.now)
        return out

    def advance(self, to: float) -> list[Send]:
        out: list[Send] = []
        while (deadline := self.core.get_timer()) is not None and deadline <= START + to:
            self.now = deadline
            out += self.core.handle_timer(deadline) + self.pump()
        return out

    def bindings(self) -> list[object]:
        return list(self.loop.run_until_complete(self.backend.list_bindings("alg-1")))


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig()
    yield built
    built.loop.close()


def test_invite_waits_for_its_binding_and_leaves_with_no_inside_address(rig: Rig) -> None:
    out = rig.receive(invite(), ALICE)
    assert [m.status for m in sent_to(out, ALICE)] == [100]
    (forwarded,) = [s for s in out if s.to == BOB]
    assert b"10.77." not in forwarded.data  # topology hiding: nothing inside leaks
    sdp = parse_message(forwarded.data).body.decode()
    assert f"c=IN IP4 {PUBLIC}" in sdp
    assert len(rig.bindings()) == 1


def test_busy_releases_the_binding(rig: Rig) -> None:
    out = rig.receive(invite(), ALICE)
    (forwarded,) = [parse_message(s.data) for s in out if s.to == BOB]
    out = rig.receive(build_response(forwarded, 486, to_tag="b1"), BOB, at=1.0)
    assert [m.status for m in sent_to(out, ALICE)] == [486]
    assert rig.bindings() == []


def test_no_agent_means_503_and_nothing_forwarded() -> None:
    rig = Rig(agent_answers=False)
    try:
        out = rig.receive(invite(), ALICE)
        out += rig.advance(60.0)
        assert [s for s in out if s.to == BOB] == []
        assert [m.status for m in sent_to(out, ALICE)][-1] == 503
    finally:
        rig.loop.close()


def test_outside_call_to_inside_phone_is_answered_with_the_binding_not_488() -> None:
    rig = Rig()
    rig.core.router = StaticRouter({"alice": [ALICE]})
    try:
        from_outside = (
            invite(to_user="alice")
            .replace(b"Via: SIP/2.0/UDP 10.77.0.10:5060", b"Via: SIP/2.0/UDP 203.0.113.20:5060")
            .replace(b"IN IP4 10.77.0.10", b"IN IP4 203.0.113.20")
            .replace(b"<sip:alice@10.77.0.10:5060>", b"<sip:bob@203.0.113.20:5060>")
        )
        out = rig.receive(from_outside, BOB)
        (to_alice,) = [parse_message(s.data) for s in out if s.to == ALICE]
        answer = build_response(
            to_alice,
            200,
            to_tag="a1",
            body=b"v=0\r\no=a 1 1 IN IP4 10.77.0.10\r\ns=-\r\n"
            b"c=IN IP4 10.77.0.10\r\nt=0 0\r\nm=audio 40010 RTP/AVP 0\r\n",
        )
        out = rig.receive(answer, ALICE, at=1.0)
        (to_bob,) = [s for s in out if s.to == BOB]
        assert parse_message(to_bob.data).status == 200  # the callee's own media: no 488
        assert b"10.77." not in to_bob.data
        assert f"c=IN IP4 {PUBLIC}".encode() in to_bob.data
    finally:
        rig.loop.close()


def test_an_invite_leaving_over_tls_gets_a_contact_reachable_over_tls() -> None:
    bob = Endpoint("outside", "TLS", "203.0.113.20", 5061)
    rig = Rig(
        hiding=Hiding(
            "203.0.113.1", 5060, InsideNetworks.of("10.77.0.0/16"), outside_tls_port=5061
        ),
        bob=bob,
        outside=Interface("outside", "203.0.113.1", 5060, tls_port=5061),
    )
    try:
        out = rig.receive(invite(), ALICE)
        (forwarded,) = sent_to(out, bob)
        assert forwarded.top_via.transport == "TLS" and forwarded.top_via.port == 5061
        contact = forwarded.header("contact") or ""
        assert contact.endswith("@203.0.113.1:5061;transport=tls>"), contact
        assert b"10.77." not in parse_message(forwarded.serialize()).raw
    finally:
        rig.loop.close()
