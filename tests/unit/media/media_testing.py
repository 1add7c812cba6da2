"""UAC - ALG - UAS in memory: the media core behind a miniature proxy, MemoryBackend as
the agent (driven synchronously: each action's coroutine runs to completion on a private
event loop, which MemoryBackend allows because it never really awaits)."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from alg.forwarding import build_forwarded, plan_routes, strip_top_via
from alg.media.actions import AgentAction, Forward, Parked, Ready, Refused, Reject, Resolution
from alg.media.agents import AgentConfig, AgentPool, AgentSettings
from alg.media.core import MediaConfig, MediaCore
from alg.media.masking import InsideNetworks
from alg.media.perform import OwnedBackend, perform
from alg.media.rewrite import Hiding
from alg.proxy_model import Endpoint, Interface, ProxyConfig
from alg.sip import parse_message
from fcp.memory_backend import MemoryBackend, MemoryBackendConfig
from fcp.types import IpVersion, Pool

START = 1_700_000_000.0
INSIDE_PREFIX = b"10.77."
INSIDE = Interface("inside", "10.77.0.1", 5060)
OUTSIDE = Interface("outside", "203.0.113.1", 5060)
ALICE = Endpoint("inside", "UDP", "10.77.0.10", 5060)
ALICE2 = Endpoint("inside", "UDP", "10.77.0.11", 5060)
BOB = Endpoint("outside", "UDP", "203.0.113.20", 5060)
CAROL = Endpoint("outside", "UDP", "203.0.113.30", 5060)
PUBLIC = ipaddress.IPv4Address("198.51.100.10")
PROXY = ProxyConfig(
    interfaces={"inside": INSIDE, "outside": OUTSIDE}, inside_networks=("10.77.0.0/16",)
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def backend(clock: Clock, address: str = "198.51.100.10") -> MemoryBackend:
    pool = Pool("v4", IpVersion.V4, (ipaddress.IPv4Address(address),), 20000, 20999)
    return MemoryBackend(MemoryBackendConfig(pools=(pool,)), epoch=7, clock=clock)


def sdp(
    address: str = "10.77.0.10",
    port: int = 40000,
    *,
    version: int = 1,
    extra: str = "",
    media_extra: str = "",
    streams: str = "",
) -> bytes:
    text = (
        f"v=0\r\no=u 1 {version} IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n{extra}"
        f"m=audio {port} RTP/AVP 0\r\n{media_extra}{streams}"
    )
    return text.encode()


def request(
    method: str,
    *,
    uri: str = "sip:bob@203.0.113.20",
    via: str = "SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bKa1;rport",
    from_: str = "<sip:alice@10.77.0.10>;tag=a1",
    to: str = "<sip:bob@203.0.113.20>",
    call_id: str = "c1@10.77.0.10",
    cseq: int = 1,
    contact: str = "<sip:alice@10.77.0.10:5060>",
    body: bytes = b"",
    extra: str = "",
    cseq_method: str | None = None,
) -> bytes:
    head = (
        f"{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from_}\r\n"
        f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {cseq_method or method}\r\n"
        f"Contact: {contact}\r\n{extra}"
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def incoming_invite(port: int = 50000) -> bytes:
    """Bob's INVITE to Alice from the outside, with his offer."""
    return request(
        "INVITE",
        uri="sip:alice@10.77.0.10",
        via="SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKb1",
        from_="<sip:bob@203.0.113.20>;tag=b1",
        to="<sip:alice@example.com>",
        call_id="in-1@203.0.113.20",
        contact="<sip:bob@203.0.113.20>",
        body=sdp("203.0.113.20", port),
    )


async def until(what: str, probe: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait for `probe()` to be true (awaited first if it is awaitable), polling it; fail
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await _value(probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.001)  # polling the condition, bounded by the deadline


async def _value(got: object) -> object:
    return await got if inspect.isawaitable(got) else got


def response(
    req: bytes,
    status: int,
    *,
    to_tag: str | None = "b1",
    body: bytes = b"",
    contact: str = "<sip:bob@203.0.113.20:5060>",
    extra: str = "",
) -> bytes:
    """A response to `req` (as the UAS received it): Vias, From, To, Call-ID, CSeq copied."""
    msg = parse_message(req)
    vias = "".join(f"Via: {v}\r\n" for v in msg.header_values("via"))
    to = msg.header("to") or ""
    if to_tag is not None and ";tag=" not in to:
        to += f";tag={to_tag}"
    head = (
        f"SIP/2.0 {status} X\r\n{vias}From: {msg.header('from')}\r\nTo: {to}\r\n"
        f"Call-ID: {msg.header('call-id')}\r\nCSeq: {msg.header('cseq')}\r\n"
        f"Contact: {contact}\r\n{extra}"
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


@dataclass
class Alg:
    """A miniature proxy around MediaCore: what the lead's integration will do."""

    clock: Clock = field(default_factory=Clock)
    agents: dict[str, MemoryBackend] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)  # agents that do not answer (timeouts)
    weights: dict[str, float] = field(default_factory=dict)
    settings: AgentSettings = field(default_factory=AgentSettings)
    core: MediaCore = field(init=False)
    outside_wire: list[bytes] = field(default_factory=list)
    performed: list[AgentAction] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)
    branch_number: int = 0
    prepare: bool = False  # make parked messages' header edits before the agent answers

    def __post_init__(self) -> None:
        if not self.agents:
            self.agents = {"gw1": backend(self.clock)}
        pool = AgentPool(
            tuple(AgentConfig(n, self.weights.get(n, 1.0)) for n in self.agents), self.settings
        )
        hiding = Hiding("203.0.113.1", 5060, InsideNetworks.of("10.77.0.0/16"))
        self.core = MediaCore(MediaConfig(hiding, b"k" * 32), pool)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    @property
    def now(self) -> float:
        return self.clock.now

    def advance(self, seconds: float) -> list[Resolution]:
        self.clock.now += seconds
        out = self.core.handle_timer(self.now)
        self.resolutions += out
        return out + self.pump()

    def pump(self) -> list[Resolution]:
        """Run every pending action against its agent, feed results back, repeat."""
        out: list[Resolution] = []
        while actions := self.core.take_actions():
            for action in actions:
                self.performed.append(action)
                if action.agent in self.down:
                    continue  # no answer: the core's deadline fires
                api = OwnedBackend(self.agents[action.agent], "alg-1")
                result = self.loop.run_until_complete(perform(action, api))
                out += self.core.on_result(result, self.now)
        self.resolutions += out
        return out

    def cross(self, data: bytes, from_side: str, to_side: str, source: str) -> bytes | Reject:
        """`data` crossing the ALG; the bytes sent on, or the rejection."""
        outcome = self.core.crossing(
            data,
            from_side=from_side,
            to_side=to_side,
            source_host=source,
            now=self.now,  # type: ignore[arg-type]
        )
        self.resolutions += self.core.take_resolutions()  # what the crossing let go
        if isinstance(outcome, Parked) and self.prepare:
            self.core.prepare_parked(self.now)  # what the shell does while the RPC is out
        if isinstance(outcome, Parked):
            for res in self.pump():
                if res.ticket == outcome.ticket:
                    if isinstance(res, Refused):
                        return Reject(res.status, res.reason)
                    assert isinstance(res, Ready)
                    outcome = Forward(res.data)
                    break
            else:
                return Reject(0, "still parked")
        else:
            self.pump()
        if isinstance(outcome, Reject):
            return outcome
        assert isinstance(outcome, Forward)
        if to_side == "outside":
            self.outside_wire.append(outcome.data)
        return outcome.data

    # -- the proxy's part -----------------------------------------------------------------

    def forward_request(self, data: bytes, source: Endpoint, target: Endpoint) -> bytes | Reject:
        """Inbound restore (from outside), build_forwarded (Via, RR), then the media core."""
        if source.side == "outside":
            data = self.core.inbound(data, self.now)
        msg = parse_message(data)
        self.branch_number += 1
        forwarded = build_forwarded(
            msg,
            source=source,
            target=target,
            config=PROXY,
            routes=plan_routes(msg, PROXY),
            branch=f"z9hG4bKalg{self.branch_number}",
            request_uri=None,
            record_route=msg.method == "INVITE" and msg.to.tag is None,
        )
        return self.cross(forwarded, source.side, target.side, source.host)

    def forward_response(self, data: bytes, source: Endpoint, to: Endpoint) -> bytes | Reject:
        if source.side == "outside":
            data = self.core.inbound(data, self.now)
        return self.cross(strip_top_via(parse_message(data)), source.side, to.side, source.host)

    def bindings(self, agent: str = "gw1") -> list[object]:
        return list(self.loop.run_until_complete(self.agents[agent].list_bindings("alg-1")))

    def rules(self, agent: str = "gw1") -> list[object]:
        return list(self.loop.run_until_complete(self.agents[agent].list_rules("alg-1")))

    def assert_no_leak(self) -> None:
        for data in self.outside_wire:
            assert INSIDE_PREFIX not in data, data.decode()
