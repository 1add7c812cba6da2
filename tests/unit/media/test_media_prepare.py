"""A parked message's header edits, made while the agent is asked (`prepare_parked`):
the same bytes leave as without them, nothing is refused differently, and the asyncio
shell makes them while the reservation is in flight."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import Any

from media_testing import (
    ALICE,
    BOB,
    Alg,
    Clock,
    backend,
    incoming_invite,
    request,
    response,
    sdp,
    until,
)

from alg.aio import AlgShell
from alg.assemble import assemble
from alg.config import parse_config
from alg.media.actions import Reject
from alg.media.perform import OwnedBackend
from alg.proxy_model import Endpoint, Send
from fcp.types import Binding, BindingRequest

OWNER = "alg-1"


def _call(alg: Alg) -> list[bytes | Reject]:
    """An outgoing call (offer parked), its re-INVITE with a new port (parked again), and an
    incoming call answered from the inside (the 200 parked): what crossed, in order."""
    out: list[bytes | Reject] = []
    invite = request(
        "INVITE",
        via="SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bKa1;rport",
        extra="Supported: timer\r\nUser-Agent: phone at 10.77.0.10\r\n",
        body=sdp(),
    )
    sent = alg.forward_request(invite, ALICE, BOB)
    out.append(sent)
    assert not isinstance(sent, Reject), sent
    ok = response(sent, 200, body=sdp("203.0.113.20", 50000), extra="Require: timer\r\n")
    out.append(alg.forward_response(ok, BOB, ALICE))
    alg.clock.now += 5
    reinvite = request(
        "INVITE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2, body=sdp(port=40010, version=2)
    )
    again = alg.forward_request(reinvite, ALICE, BOB)
    out.append(again)
    assert not isinstance(again, Reject), again
    ok2 = response(again, 200, body=sdp("203.0.113.20", 50010, version=2))
    out.append(alg.forward_response(ok2, BOB, ALICE))
    down = alg.forward_request(incoming_invite(50020), BOB, ALICE)
    assert not isinstance(down, Reject), down
    answer = response(down, 200, to_tag="a9", body=sdp(port=40020))
    out.append(alg.forward_response(answer, ALICE, BOB))
    return out


def _ports_named(crossed: list[bytes | Reject]) -> list[bytes | Reject]:
    """The public ports are the agent's random choice (RFC 6056): named, not compared."""
    return [
        re.sub(rb"m=audio 2\d{4} ", b"m=audio PUBLIC ", c) if isinstance(c, bytes) else c
        for c in crossed
    ]


def test_prepared_messages_leave_exactly_as_unprepared_ones() -> None:
    plain, prepared = Alg(clock=Clock()), Alg(clock=Clock(), prepare=True)
    try:
        assert _ports_named(_call(prepared)) == _ports_named(_call(plain))
        assert _ports_named(prepared.outside_wire) == _ports_named(plain.outside_wire)  # type: ignore[arg-type]
        assert len(prepared.outside_wire) == 3  # the two offers and the inside answer
        # every parked message was prepared, and only in the harness that prepares
        assert prepared.core.stats["parked"] == 3
        assert prepared.core.stats["prepared"] == 3
        assert plain.core.stats["prepared"] == 0
        prepared.assert_no_leak()
    finally:
        plain.close()
        prepared.close()


def test_a_prepared_message_the_agent_cannot_anchor_is_refused_and_forgotten() -> None:
    alg = Alg(clock=Clock(), prepare=True)
    alg.down.add("gw1")
    try:
        sent = alg.forward_request(request("INVITE", body=sdp()), ALICE, BOB)
        assert sent == Reject(0, "still parked")
        assert alg.core.stats["prepared"] == 1
        # the deadlines and retries run out: 503, and nothing of the call is kept
        for _ in range(40):
            alg.advance(1.0)
        [refused] = [r for r in alg.resolutions if getattr(r, "status", None) == 503]
        assert refused.status == 503  # type: ignore[attr-defined]
        assert alg.outside_wire == []
        alg.advance(3600)
        alg.core.take_records()  # the release that could not reach the agent, for the CDR
        assert set(alg.core.footprint().values()) == {0}
    finally:
        alg.close()


# --- the asyncio shell ------------------------------------------------------------------


class _Recording(asyncio.DatagramTransport):
    def __init__(self, sink: list[Send], side: str) -> None:
        super().__init__()
        self.sink, self.side = sink, side

    def sendto(self, data: bytes, addr: Any = None) -> None:
        host, port = addr
        self.sink.append(Send(Endpoint(self.side, "UDP", host, port), data))  # type: ignore[arg-type]

    def close(self) -> None:
        pass


class _HeldAgent(OwnedBackend):
    """Answers a reservation only once `release` is set (an RPC in flight); notes what the
    ALG had sent when it was asked."""

    def __init__(self, sent: list[Send], *args: Any) -> None:
        super().__init__(*args)
        self.sent = sent
        self.sent_when_asked: list[Send] | None = None
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def reserve_binding(self, request: BindingRequest) -> Binding:
        self.sent_when_asked = list(self.sent)
        self.asked.set()
        await self.release.wait()
        return await super().reserve_binding(request)


def _config() -> Any:
    raw = {
        "inside": {"address": "10.77.0.1", "port": 5060, "transports": ["udp"]},
        "outside": {"address": "203.0.113.1", "port": 5060, "transports": ["udp"]},
        "proxy": {"inside_networks": ["10.77.0.0/16"]},
        "media": {"enabled": True, "agents": [{"name": "gw1", "address": "127.0.0.1:7700"}]},
    }
    config = parse_config(raw)
    return dataclasses.replace(config)


def test_the_shell_sends_the_reserve_first_and_prepares_the_invite_while_it_is_out() -> None:
    async def scenario() -> None:
        config = _config()
        services = assemble(config)
        media = services.core.media
        assert media is not None
        sent: list[Send] = []
        agent = _HeldAgent(sent, backend(time.time), OWNER)  # type: ignore[arg-type]
        shell = AlgShell(config, services.core, agents={"gw1": agent})
        shell.udp = {"inside": _Recording(sent, "inside"), "outside": _Recording(sent, "outside")}
        try:
            shell.deliver(request("INVITE", body=sdp()), ALICE)
            assert media.stats["prepared"] == 0  # the reservation is not even sent yet
            assert sent == []  # nor the 100 Trying: the Reserve goes first
            await asyncio.wait_for(agent.asked.wait(), 5)
            assert agent.sent_when_asked == []
            await until("the parked INVITE prepared", lambda: media.stats["prepared"] == 1)
            assert [s.to.side for s in sent] == ["inside"]  # 100 Trying; the INVITE waits
            agent.release.set()
            await until("the INVITE sent outside", lambda: len(sent) == 2)
            invite = sent[1]
            assert invite.to.side == "outside" and invite.data.startswith(b"INVITE ")
            assert b"10.77." not in invite.data
            [binding] = await agent.backend.list_bindings(OWNER)
            assert f"m=audio {binding.external_ports[0]} ".encode() in invite.data
        finally:
            await shell.close()
            services.close()

    asyncio.run(scenario())


def test_what_the_shell_holds_for_a_reserve_leaves_before_what_it_sends_next() -> None:
    async def scenario() -> None:
        config = _config()
        services = assemble(config)
        sent: list[Send] = []
        agent = _HeldAgent(sent, backend(time.time), OWNER)  # type: ignore[arg-type]
        shell = AlgShell(config, services.core, agents={"gw1": agent})
        shell.udp = {"inside": _Recording(sent, "inside"), "outside": _Recording(sent, "outside")}
        malformed = (
            b"OPTIONS sip:bob@203.0.113.20 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 10.77.0.11:5060;branch=z9hG4bKq\r\nContent-Length: 0\r\n\r\n"
        )
        try:
            shell.deliver(request("INVITE", body=sdp()), ALICE)  # its 100 Trying is held
            shell.deliver(malformed, ALICE)  # answered at once, statelessly
            assert [s.data.split(b"\r\n", 1)[0][:11] for s in sent] == [
                b"SIP/2.0 100",
                b"SIP/2.0 400",
            ]
            agent.release.set()
            await until("the INVITE sent outside", lambda: len(sent) == 3)
        finally:
            await shell.close()
            services.close()

    asyncio.run(scenario())


def test_an_answer_whose_pinholes_are_being_enabled_leaves_at_once() -> None:
    """Only a parked message's sends wait for its RPCs: a 2xx is forwarded while the
    pinholes its answer needs are enabled, and must not wait for that RPC's write."""

    async def scenario() -> None:
        config = _config()
        services = assemble(config)
        sent: list[Send] = []
        agent = _HeldAgent(sent, backend(time.time), OWNER)  # type: ignore[arg-type]
        agent.release.set()  # reservations answer at once
        shell = AlgShell(config, services.core, agents={"gw1": agent})
        shell.udp = {"inside": _Recording(sent, "inside"), "outside": _Recording(sent, "outside")}
        try:
            shell.deliver(request("INVITE", body=sdp()), ALICE)
            await until("the INVITE sent outside", lambda: len(sent) == 2)
            ok = response(sent[1].data, 200, body=sdp("203.0.113.20", 50000))
            shell.deliver(ok, BOB)
            assert [s.data[:11] for s in sent[2:]] == [b"SIP/2.0 200"]  # before the loop turns
            await until("the answer's pinhole enabled", lambda: agent.backend.list_rules(OWNER))
        finally:
            await shell.close()
            services.close()

    asyncio.run(scenario())
