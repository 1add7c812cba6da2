"""Typed values of the SDP lines the ALG reads and rewrites, and how each is read and written.

Each parser takes the raw value of one line (the bytes after `x=`, terminator removed) and
its 1-based line number, and raises only `SdpParseError`. Each renderer builds the value
bytes of a replacement line; untouched lines are never re-rendered (the model keeps them
raw), so a renderer only has to be right, not faithful to the sender's spacing.

Grammar references are RFC 8866 §9 unless said otherwise.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from alg.errors import SdpParseError

# Longest decimal fields we accept before calling int(): ports are 16 bits (5 digits), the
# RFC 8866 TTL is 0..255 and multicast counts are small. Bounding the length also keeps
# int() away from CPython's 4300-digit limit, whose ValueError would otherwise escape.
_MAX_PORT_DIGITS = 5
_MAX_TTL_DIGITS = 3


class Direction(StrEnum):
    """Media direction attributes (RFC 8866 §6.7, RFC 3264 §5.1); sendrecv is the default."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


DIRECTIONS: dict[str, Direction] = {d.value: d for d in Direction}


@dataclass(frozen=True, slots=True)
class Origin:
    """`o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>` (§5.2).

    Session id and version stay strings: they are opaque numeric strings that may exceed
    64 bits in the wild, and the ALG never does arithmetic on them.
    """

    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str


@dataclass(frozen=True, slots=True)
class Connection:
    """`c=<nettype> <addrtype> <connection-address>` (§5.7).

    `ttl` is only present on IP4 multicast (`224.2.1.1/127`), `count` on multicast address
    blocks (`224.2.1.1/127/3`, `FF15::101/3`).
    """

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    count: int | None = None

    @property
    def is_hold_address(self) -> bool:
        """True for the RFC 2543 hold address 0.0.0.0 (RFC 3264 §8.4) or its IPv6 twin `::`."""
        return is_unspecified_address(self.address)


@dataclass(frozen=True, slots=True)
class MediaLine:
    """`m=<media> <port>[/<number of ports>] <proto> <fmt> ...` (§5.14)."""

    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RtcpAttribute:
    """`a=rtcp:<port> [<nettype> <addrtype> <connection-address>]` (RFC 3605 §2.1)."""

    port: int
    nettype: str | None = None
    addrtype: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Attribute:
    """`a=<name>[:<value>]` (§5.13): `value` is None for a property attribute."""

    name: str
    value: str | None


def is_unspecified_address(address: str) -> bool:
    """Whether `address` is 0.0.0.0 or an IPv6 unspecified address (`::`, `0:0::0`, ...)."""
    if address in {"0.0.0.0", "::"}:  # noqa: S104 - compared, never bound
        return True
    if ":" not in address:
        return False
    try:
        return ipaddress.IPv6Address(address).is_unspecified
    except ValueError:
        return False


def addrtype_of(address: str) -> str:
    """The SDP addrtype of an IP literal already known to be valid: IP6 if it has a colon."""
    return "IP6" if ":" in address else "IP4"


def _ascii_tokens(value: bytes, what: str, line_number: int) -> list[str]:
    try:
        return value.decode("ascii").split()
    except UnicodeDecodeError:
        raise SdpParseError(f"non-ASCII byte in {what}", line_number) from None


def parse_port(text: str, what: str, line_number: int) -> int:
    """A decimal port 0..65535 (ASCII digits only: int() would also take '+1', ' 1', '1_0')."""
    if not text.isdigit() or len(text) > _MAX_PORT_DIGITS:
        raise SdpParseError(f"bad {what} {text!r}", line_number)
    port = int(text)
    if port > 0xFFFF:
        raise SdpParseError(f"{what} {port} out of range", line_number)
    return port


def check_origin(value: bytes, line_number: int) -> None:
    """Validate an o= value without building the view (the ALG rarely reads it)."""
    if len(value.split()) != 6:
        raise SdpParseError("o= line needs 6 fields", line_number)


def parse_origin(value: bytes, line_number: int) -> Origin:
    # The username is a non-ws-string, which allows %x80-FF (§9): decode losslessly.
    fields = value.decode("utf-8", "surrogateescape").split()
    if len(fields) != 6:
        raise SdpParseError("o= line needs 6 fields", line_number)
    return Origin(*fields)


def parse_connection(value: bytes, line_number: int) -> Connection:
    fields = _ascii_tokens(value, "c= line", line_number)
    if len(fields) != 3:
        raise SdpParseError("c= line needs 3 fields", line_number)
    nettype, addrtype, address = fields
    if addrtype not in ("IP4", "IP6"):
        # Other address types (e.g. for non-IN nettypes) are kept verbatim, unparsed.
        return Connection(nettype, addrtype, address)
    if "/" not in address:
        return Connection(nettype, addrtype, address)
    parts = address.split("/")
    # IP4 multicast is addr/ttl[/count]; IP6 multicast has no TTL, only addr[/count] (§5.7).
    max_parts = 3 if addrtype == "IP4" else 2
    if len(parts) > max_parts or not parts[0]:
        raise SdpParseError("bad connection address", line_number)
    numbers: list[int] = []
    for part in parts[1:]:
        if not part.isdigit() or len(part) > _MAX_TTL_DIGITS:
            raise SdpParseError("bad TTL or address count in c= line", line_number)
        numbers.append(int(part))
    if addrtype == "IP4":
        if numbers[0] > 255:
            raise SdpParseError("TTL out of range in c= line", line_number)
        count = numbers[1] if len(numbers) == 2 else None
        return Connection(nettype, addrtype, parts[0], numbers[0], count)
    return Connection(nettype, addrtype, parts[0], None, numbers[0])


def parse_media_line(value: bytes, line_number: int) -> MediaLine:
    fields = _ascii_tokens(value, "m= line", line_number)
    # RFC 8866 wants at least one fmt, but rejected streams (port 0) are seen without one.
    if len(fields) < 3:
        raise SdpParseError("m= line needs media, port and proto", line_number)
    port_text, slash, count_text = fields[1].partition("/")
    port = parse_port(port_text, "media port", line_number)
    port_count = None
    if slash:
        if not count_text.isdigit() or len(count_text) > _MAX_PORT_DIGITS or count_text[0] == "0":
            raise SdpParseError("bad port count in m= line", line_number)
        port_count = int(count_text)
    return MediaLine(fields[0], port, port_count, fields[2], tuple(fields[3:]))


def parse_rtcp_attribute(value: bytes, line_number: int) -> RtcpAttribute:
    """`value` is what follows `a=rtcp:`."""
    fields = _ascii_tokens(value, "a=rtcp", line_number)
    if len(fields) == 1:
        return RtcpAttribute(parse_port(fields[0], "RTCP port", line_number))
    if len(fields) == 4:
        port = parse_port(fields[0], "RTCP port", line_number)
        return RtcpAttribute(port, fields[1], fields[2], fields[3])
    raise SdpParseError("a=rtcp needs a port and optionally nettype addrtype address", line_number)


def parse_attribute(value: bytes) -> Attribute:
    text = value.decode("utf-8", "surrogateescape")
    name, colon, attribute_value = text.partition(":")
    return Attribute(name, attribute_value if colon else None)


def render_origin(original_value: bytes, addrtype: str, address: str) -> bytes:
    """The o= value with a new addrtype and address, the first four fields copied as sent."""
    head, _, _ = original_value.rstrip().rsplit(None, 2)
    return b"%s %s %s" % (head, addrtype.encode(), address.encode())


def render_connection(nettype: str, address: str) -> bytes:
    return f"{nettype} {addrtype_of(address)} {address}".encode()


def render_media_line(original_value: bytes, port: int, port_count: int | None) -> bytes:
    """The m= value with a new port (and count); media, proto and formats copied as sent."""
    media, _, tail = original_value.split(None, 2)
    if port_count is None:
        return b"%s %d %s" % (media, port, tail)
    return b"%s %d/%d %s" % (media, port, port_count, tail)


def render_rtcp_attribute(port: int, nettype: str | None, address: str | None) -> bytes:
    """The a= value `rtcp:<port>[ <nettype> <addrtype> <address>]`."""
    if address is None:
        return b"rtcp:%d" % port
    return f"rtcp:{port} {nettype or 'IN'} {addrtype_of(address)} {address}".encode()
