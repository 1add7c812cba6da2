"""An in-memory network for the proxy core: phones are built from alg.builders."""

from __future__ import annotations

from collections.abc import Sequence

from alg.proxy import ProxyCore
from alg.proxy_model import Answer, Endpoint, Interface, ProxyConfig, Send, Target
from alg.sip import SipMessage, SipUri, parse_message

INSIDE = Interface("inside", "10.77.0.1", 5060)
OUTSIDE = Interface("outside", "203.0.113.1", 5060)
ALICE = Endpoint("inside", "UDP", "10.77.0.10", 5060)
BOB = Endpoint("outside", "UDP", "203.0.113.20", 5060)
CAROL = Endpoint("outside", "UDP", "203.0.113.30", 5060)


def config(**changes: object) -> ProxyConfig:
    base = {"interfaces": {"inside": INSIDE, "outside": OUTSIDE}}
    base.update(changes)
    return ProxyConfig(**base)  # type: ignore[arg-type]


class StaticRouter:
    """user part of the Request-URI -> endpoints (each one a fork branch)."""

    def __init__(self, table: dict[str, Sequence[Endpoint]]) -> None:
        self.table = table
        self.calls = 0

    def route(self, request: SipMessage, source: Endpoint, now: float) -> list[Target] | Answer:
        self.calls += 1
        uri = request.request_uri
        user = uri.user if isinstance(uri, SipUri) else None
        endpoints = self.table.get(user or "")
        if not endpoints:
            return Answer(404)
        return [Target(ep, f"sip:{user}@{ep.host}:{ep.port}") for ep in endpoints]


def invite(
    call_id: str = "call-1@10.77.0.10",
    branch: str = "z9hG4bKalice1",
    to_user: str = "bob",
    extra: bytes = b"",
    max_forwards: int = 70,
) -> bytes:
    sdp = (
        b"v=0\r\no=alice 1 1 IN IP4 10.77.0.10\r\ns=-\r\nc=IN IP4 10.77.0.10\r\n"
        b"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
    )
    return (
        (
            f"INVITE sip:{to_user}@example.net SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.77.0.10:5060;branch={branch};rport\r\n"
            f"Max-Forwards: {max_forwards}\r\n"
            f"To: <sip:{to_user}@example.net>\r\n"
            f"From: Alice <sip:alice@example.com>;tag=a1\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 INVITE\r\n"
            f"Contact: <sip:alice@10.77.0.10:5060>\r\n"
        ).encode()
        + extra
        + (
            b"Content-Type: application/sdp\r\nContent-Length: "
            + str(len(sdp)).encode()
            + b"\r\n\r\n"
            + sdp
        )
    )


def sent_to(out: Sequence[Send], endpoint: Endpoint) -> list[SipMessage]:
    return [parse_message(send.data) for send in out if send.to == endpoint]


def run_timers(core: ProxyCore, until: float) -> list[tuple[float, list[Send]]]:
    fired = []
    while (deadline := core.get_timer()) is not None and deadline <= until:
        fired.append((deadline, core.handle_timer(deadline)))
    return fired
