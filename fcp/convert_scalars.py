"""Protobuf ⇄ typed FCP values: the enums and scalars every message is made of.

Split from `fcp.convert` (the messages), which re-exports the public names here. The same
rules hold: `*_from_proto` raises `FcpError(MALFORMED)` naming the proto field path; an enum
field left at 0 (proto3's default, "UNSPECIFIED") is "must be set".
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable, Mapping
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from fcp.errors import FcpError, Reason, malformed
from fcp.types import BindingKind, Direction, EventKind, IPAddress, IpVersion, TransportProtocol
from fcp.v1 import fcp_pb2 as pb

T = TypeVar("T")
E = TypeVar("E")

# ---- enums ----------------------------------------------------------------------------

IP_VERSIONS: Mapping[IpVersion, pb.IpVersion.ValueType] = {
    IpVersion.V4: pb.IP_VERSION_V4,
    IpVersion.V6: pb.IP_VERSION_V6,
}
PROTOCOLS: Mapping[TransportProtocol, pb.TransportProtocol.ValueType] = {
    TransportProtocol.UDP: pb.TRANSPORT_PROTOCOL_UDP,
    TransportProtocol.TCP: pb.TRANSPORT_PROTOCOL_TCP,
}
KINDS: Mapping[BindingKind, pb.BindingKind.ValueType] = {
    BindingKind.SINGLE: pb.BINDING_KIND_SINGLE,
    BindingKind.RTP_PAIR: pb.BINDING_KIND_RTP_PAIR,
    BindingKind.BLOCK: pb.BINDING_KIND_BLOCK,
}
DIRECTIONS: Mapping[Direction, pb.Direction.ValueType] = {
    Direction.INBOUND: pb.DIRECTION_INBOUND,
    Direction.OUTBOUND: pb.DIRECTION_OUTBOUND,
    Direction.BIDIRECTIONAL: pb.DIRECTION_BIDIRECTIONAL,
}
EVENT_KINDS: Mapping[EventKind, pb.EventKind.ValueType] = {
    EventKind.WATCH_STARTED: pb.EVENT_KIND_WATCH_STARTED,
    EventKind.EXPIRED: pb.EVENT_KIND_EXPIRED,
    EventKind.IDLE: pb.EVENT_KIND_IDLE,
    EventKind.REMOVED_BY_ADMIN: pb.EVENT_KIND_REMOVED_BY_ADMIN,
    EventKind.EXTERNAL_ADDRESS_CHANGED: pb.EVENT_KIND_EXTERNAL_ADDRESS_CHANGED,
    EventKind.AGENT_DRAINING: pb.EVENT_KIND_AGENT_DRAINING,
}
REASONS: Mapping[Reason, pb.FcpErrorDetail.Reason.ValueType] = {
    reason: pb.FcpErrorDetail.Reason.Value(f"REASON_{reason.name}") for reason in Reason
}


def enum_from_proto(field: str, value: int, table: Mapping[E, int]) -> E:
    for typed, number in table.items():
        if number == value:
            return typed
    if value == 0:
        raise malformed(field, "must be set")
    raise malformed(field, f"unknown value {value}")


def reason_from_proto(value: int) -> Reason:
    for reason, number in REASONS.items():
        if number == value:
            return reason
    # An agent newer than this client: the most honest reading of an unknown reason.
    return Reason.INTERNAL


# ---- scalars --------------------------------------------------------------------------


# Parsing and printing addresses was a fifth of a bulk install (ipaddress is pure Python);
# the same few addresses recur in every call, and both directions are pure, so cached.
_parse_address = functools.lru_cache(maxsize=8192)(ipaddress.ip_address)
address_text = functools.lru_cache(maxsize=8192)(str)


def address_from_proto(field: str, text: str) -> IPAddress:
    if not text:
        raise malformed(field, "must be set")
    try:
        address = _parse_address(text)
    except ValueError:
        raise malformed(field, f"{text!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise malformed(field, "scoped IPv6 addresses are not routable beyond one host")
    return address


def optional_address(field: str, text: str) -> IPAddress | None:
    """proto3 strings have no presence: "" is "no address"."""
    return address_from_proto(field, text) if text else None


def timestamp_to_proto(seconds: float) -> Timestamp:
    # Split before scaling: float seconds near 1.7e9 cannot hold nanoseconds exactly.
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return Timestamp(seconds=whole, nanos=nanos)


def timestamp_from_proto(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def within(prefix: str, build: Callable[[], T]) -> T:
    """Run `build`, prefixing the field path of a MALFORMED error with `prefix`."""
    try:
        return build()
    except FcpError as exc:
        if exc.reason is not Reason.MALFORMED or exc.field is None:
            raise
        path = f"{prefix}.{exc.field}"
        raise malformed(path, exc.message.removeprefix(f"{exc.field}: ")) from None


def optional_str(text: str) -> str | None:
    """proto3 strings have no presence: "" is "not given" (no key, no filter, no pool)."""
    return text or None
