"""The agent's objects: bindings, rules (pinholes), groups and counters.

All frozen and self-validating: an object that exists is well formed, so the planner and
the engine never re-check. Only the lifetime changes after creation (FCP rule, after PCP
RFC 6887 §15 where a mapping's lifetime is the one thing a renewal changes); a changed
lifetime is a new object built with `dataclasses.replace`.

Times (`expires_at`, `last_seen`) are seconds on the caller's monotonic clock; the model
never reads a clock.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass

from filter_agent.errors import malformed


class Protocol(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"


class BindingKind(enum.StrEnum):
    SINGLE = "single"  # one port
    RTP_PAIR = "rtp_pair"  # RTP on even P, RTCP on P+1 (RFC 3550 §11)
    BLOCK = "block"  # n consecutive ports


class Direction(enum.StrEnum):
    """Which packets a pinhole lets through (MIDCOM RFC 5189 §2.2 policy rule direction)."""

    INBOUND = "inbound"  # remote -> inside
    OUTBOUND = "outbound"  # inside -> remote
    BOTH = "both"

    @property
    def inbound(self) -> bool:
        return self is not Direction.OUTBOUND

    @property
    def outbound(self) -> bool:
        return self is not Direction.INBOUND


@functools.lru_cache(maxsize=8192)  # pure, and the same addresses recur in every call
def check_ipv4(addr: str, what: str) -> str:
    """Canonical text of an IPv4 address, or MALFORMED. (IPv6 is a later step.)"""
    try:
        parsed = ipaddress.ip_address(addr)
    except ValueError:
        raise malformed(f"{what} {addr!r} is not an IP address") from None
    if parsed.version != 4:
        raise malformed(f"{what} {addr!r}: only IPv4 is supported")
    return str(parsed)


def check_port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise malformed(f"{what} {port!r} is not a port number")
    return port


def port_count(kind: BindingKind, block_size: int) -> int:
    if kind is BindingKind.SINGLE:
        return 1
    if kind is BindingKind.RTP_PAIR:
        return 2
    return block_size


@dataclass(frozen=True)
class Binding:
    """A NAT binding: inside addr:port(s) <-> public addr:port(s), endpoint independent."""

    id: str
    owner: str
    group: str
    protocol: Protocol
    internal_addr: str
    internal_port: int  # first inside port; the binding covers len(external_ports)
    external_addr: str
    external_ports: tuple[int, ...]
    kind: BindingKind
    expires_at: float

    def __post_init__(self) -> None:
        check_ipv4(self.internal_addr, "internal address")
        check_ipv4(self.external_addr, "external address")
        if not self.external_ports:
            raise malformed("a binding needs at least one port")
        for offset, port in enumerate(self.external_ports):
            check_port(port, "external port")
            if port != self.external_ports[0] + offset:
                raise malformed("external ports of a binding are consecutive")
        check_port(self.internal_port + len(self.external_ports) - 1, "internal port")
        if self.kind is BindingKind.SINGLE and len(self.external_ports) != 1:
            raise malformed("a single binding has one port")
        if self.kind is BindingKind.RTP_PAIR and (
            len(self.external_ports) != 2 or self.external_ports[0] % 2
        ):
            raise malformed("an RTP pair is an even port and the next one")

    @property
    def internal_ports(self) -> tuple[int, ...]:
        return tuple(self.internal_port + i for i in range(len(self.external_ports)))

    @property
    def external_port(self) -> int:
        return self.external_ports[0]

    def port_pairs(self) -> tuple[tuple[int, int], ...]:
        """(inside port, public port) for every port of the binding."""
        return tuple(zip(self.internal_ports, self.external_ports, strict=True))


@dataclass(frozen=True)
class Rule:
    """A pinhole on a binding, restricted to one remote address (and port, once known).

    `remote_port` None means "port not known yet" (latching, RFC 4787 §4.3 behaviour for
    symmetric RTP): the kernel element matches the remote address only until the latch
    narrows it. On a multi-port binding the rule applies port by port: inside port i
    talks to remote port `remote_port + i` (RTP to RTP, RTCP to RTCP).
    """

    id: str
    owner: str
    binding_id: str
    group: str
    direction: Direction
    remote_addr: str
    remote_port: int | None
    max_idle: float | None
    expires_at: float

    def __post_init__(self) -> None:
        check_ipv4(self.remote_addr, "remote address")
        if self.remote_port is not None:
            check_port(self.remote_port, "remote port")
        if self.max_idle is not None and self.max_idle <= 0:
            raise malformed("max_idle must be positive")


@dataclass(frozen=True)
class Group:
    """All the bindings and rules of one call; released together."""

    id: str
    owner: str
    expires_at: float


@dataclass(frozen=True)
class Counters:
    packets: int = 0
    bytes: int = 0
    last_seen: float | None = None

    def __add__(self, other: Counters) -> Counters:
        seen = [t for t in (self.last_seen, other.last_seen) if t is not None]
        return Counters(
            self.packets + other.packets, self.bytes + other.bytes, max(seen) if seen else None
        )
