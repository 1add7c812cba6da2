"""Data the proxy core and its shell exchange: endpoints, interfaces, targets, sends.

The ALG sits between two networks and has one SIP interface on each *side*: `inside`
(the private LAN) and `outside` (the public network). Every message is received on a
side and sent from a side, which is what lets the proxy Record-Route twice (RFC 5658)
and, in the ALG, decide which addresses must be hidden.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from alg.sip import SipMessage, address_port
from alg.transactions import TimerSettings

Side = Literal["inside", "outside"]
SIDES: tuple[Side, Side] = ("inside", "outside")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A peer address on a side. `connection` names the stream connection a message
    arrived on (TCP/TLS), so responses go back on it (RFC 3261 §18.2.2). `name` is the SIP
    domain the address was resolved from (RFC 3263), the identity a TLS server must prove
    (RFC 5922 §4: the domain of the URI, not a name DNS answered with); None for an
    address we were given. It names the peer, not where it is: equality ignores it."""

    side: Side
    transport: str  # "UDP", "TCP", "TLS"
    host: str
    port: int
    connection: int | None = None
    name: str | None = field(default=None, compare=False)

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


@dataclass(frozen=True, slots=True)
class Send:
    """Send `data` to `to` from our interface on `to.side`."""

    to: Endpoint
    data: bytes


@dataclass(frozen=True, slots=True)
class Interface:
    """Our SIP address on one side (what goes into Via and Record-Route). UDP and TCP
    share `port`; TLS listens on its own `tls_port` (RFC 3261 §26.2: 5061 by default),
    None when the side has no TLS."""

    side: Side
    host: str
    port: int = 5060
    tls_port: int | None = None

    def port_for(self, transport: str) -> int:
        if transport == "TLS" and self.tls_port is not None:
            return self.tls_port
        return self.port

    def uri(self, transport: str) -> str:
        return f"sip:{self.sent_by(transport)};transport={transport.lower()};lr;r2=on"

    def sent_by(self, transport: str = "UDP") -> str:
        return address_port(self.host, self.port_for(transport))


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    interfaces: dict[Side, Interface]
    # Networks on the inside; a destination outside them is reached from the outside.
    inside_networks: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    record_route: bool = True
    stateless: bool = False
    timer_c: float = 180.0  # §16.6 step 11: more than three minutes
    # serial forking: a target with no response at all after this long gives way to the
    # next one (0: wait for Timer B/F); alg.hop_health holds it down for hop_hold_down
    failover_timeout: float = 4.0
    hop_hold_down: float = 30.0
    hop_probe_interval: float = 10.0  # OPTIONS to a held-down hop this often; 0: none
    timers: TimerSettings = field(default_factory=TimerSettings)
    supported_extensions: frozenset[str] = frozenset()  # for Proxy-Require (§16.3 step 5)
    auth_realm: str | None = None  # our digest realm: consumed credentials are removed
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    _ours: frozenset[tuple[str, int]] = field(
        default=frozenset(), init=False, repr=False, compare=False
    )
    # side_of is asked for every message sent; a bounded memo saves parsing the address
    _sides: dict[str, Side] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks = tuple(ipaddress.ip_network(net, strict=False) for net in self.inside_networks)
        object.__setattr__(self, "_networks", networks)
        ours = frozenset(
            (iface.host, port)
            for iface in self.interfaces.values()
            for port in (iface.port, iface.tls_port)
            if port is not None
        )
        object.__setattr__(self, "_ours", ours)

    def side_of(self, host: str) -> Side:
        """The side an address is reached from; names (not literals) count as outside."""
        side = self._sides.get(host)
        if side is not None:
            return side
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            side = "outside"
        else:
            side = "inside" if any(address in net for net in self._networks) else "outside"
        if len(self._sides) >= 8192:
            self._sides.clear()
        self._sides[host] = side
        return side

    def is_ours(self, host: str, port: int | None) -> bool:
        return (host.strip("[]"), port or 5060) in self._ours


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send one branch: the Request-URI to use (None: unchanged), the next hop,
    and a Route set to put on the request (a registered Path, RFC 3327 §5.3)."""

    next_hop: Endpoint
    request_uri: str | None = None
    route_set: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """The proxy answers the request itself: a rejection, a challenge (401/407 with its
    WWW-/Proxy-Authenticate fields), or a registrar's 200 with the bindings."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Routed:
    """Targets for a request. `parallel`: fork to all at once (§16.6); otherwise try
    them in order, moving on when one fails with 408/500/503 or times out (failover)."""

    targets: tuple[Target, ...]
    parallel: bool = True


@dataclass(frozen=True, slots=True)
class Resolve:
    """The router needs RFC 3263 DNS resolution of `uri` first: the core parks the
    request, the shell resolves and then calls `ProxyCore.resume_lookup(uri, now)`."""

    uri: str


class Router(Protocol):
    """Decides what happens to a new, out-of-dialog request (§16.5). In-dialog and
    loose-routed requests are routed by the core from their Route set."""

    def route(
        self, request: SipMessage, source: Endpoint, now: float
    ) -> Sequence[Target] | Routed | Answer | Resolve: ...
