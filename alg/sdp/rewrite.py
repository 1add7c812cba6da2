"""Rewrites an ALG applies to a session description, and `anchor`, the one it calls.

Every function takes a `SessionDescription` and returns a new one; only the lines named by
the rewrite change (whole lines are replaced, inserted or deleted), every other byte is
kept, and the number and order of `m=` lines never change. Impossible requests (bad media
index, port out of range, an IPv6 scope id, layered multicast) raise `SdpRewriteError`.

Addresses are `ipaddress` objects, so what reaches an SDP line is always a valid literal,
and the address type written next to it follows its family (RFC 8866 §5.7: IP4 or IP6).

Theory of `anchor`: the ALG replaces each offered or answered transport by a public
binding. For each stream in the plan it writes the binding's address, RTP port (and port
count) and RTCP port; a stream's address is its media-level `c=` if it has one, else the
session-level `c=` (RFC 8866 §5.7), so:

* a media-level `c=` is rewritten in place;
* the session-level `c=` is rewritten when the plan names a session address, or when all
  anchored streams share one address and every enabled stream relying on the session
  `c=` is anchored (the common case: no new lines at all);
* a stream whose address then differs from the session `c=` gets its own `c=` line,
  including a stream outside the plan whose old address must be kept ("pinned").

What `anchor` never does (RFC 3264 §6, §8.4): touch a disabled stream (port 0 stays 0) or
replace a hold address (`c=0.0.0.0` or `::`) by a real one; a held stream still gets its
ports rewritten. The explicit primitives (`set_media_transport`, ...) do what they are told.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from types import MappingProxyType

from alg.errors import SdpRewriteError
from alg.sdp.edits import LineEdits
from alg.sdp.fields import (
    Connection,
    MediaLine,
    addrtype_of,
    render_connection,
    render_media_line,
    render_origin,
    render_rtcp_attribute,
)
from alg.sdp.layout import Layout, SectionLayout, line_value
from alg.sdp.model import SessionDescription

IPAddress = IPv4Address | IPv6Address

_MAX_PORT = 0xFFFF


@dataclass(frozen=True, slots=True)
class MediaAnchor:
    """The public transport one stream is moved to.

    `rtcp_port` None means RTCP needs no port of its own: it is muxed (RFC 5761) or sits at
    the default RTP port + 1 (RFC 3550 §11). `port_count` None keeps the stream's count.
    """

    address: IPAddress
    rtp_port: int
    rtcp_port: int | None = None
    port_count: int | None = None
    address_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_port(self.rtp_port, "RTP port", minimum=1)
        if self.rtcp_port is not None:
            _check_port(self.rtcp_port, "RTCP port", minimum=1)
        if self.port_count is not None and self.port_count < 1:
            raise SdpRewriteError(f"port count {self.port_count} must be at least 1")
        # Formatted once here: str() of an ipaddress object costs as much as a line rewrite.
        object.__setattr__(self, "address_text", _address_text(self.address))


@dataclass(frozen=True, slots=True)
class AnchorPlan:
    """What `anchor` does: per media index (0-based, m-line order) a new transport; streams
    not listed keep their transport. `origin_address` rewrites `o=`, `session_address`
    forces the session-level `c=`, `strip_ice` removes every ICE attribute (RFC 8839)."""

    media: Mapping[int, MediaAnchor] = field(default_factory=dict)
    origin_address: IPAddress | None = None
    session_address: IPAddress | None = None
    strip_ice: bool = False
    origin_text: str | None = field(init=False, repr=False, compare=False)
    session_text: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A read-only copy: the plan must not change under a caller that keeps the dict.
        object.__setattr__(self, "media", MappingProxyType(dict(self.media)))
        for name, address in (
            ("origin_text", self.origin_address),
            ("session_text", self.session_address),
        ):
            object.__setattr__(self, name, None if address is None else _address_text(address))


def _check_port(port: int, what: str, *, minimum: int) -> None:
    if not minimum <= port <= _MAX_PORT:
        raise SdpRewriteError(f"{what} {port} out of range {minimum}..{_MAX_PORT}")


def _address_text(address: IPAddress) -> str:
    text = str(address)
    if "%" in text:
        # RFC 4007 zone ids mean nothing to the far end and are not SDP syntax.
        raise SdpRewriteError(f"address {text} has a zone id")
    return text


def _media_section(layout: Layout, index: int) -> SectionLayout:
    if not 0 <= index < len(layout.media_lines):
        raise SdpRewriteError(f"no media description {index}")
    return layout.sections[index + 1]


def _connection_insert_point(lines: tuple[bytes, ...], section: SectionLayout) -> int:
    """The line after which a media-level c= goes: after m= and its i= (RFC 8866 §5 order)."""
    position = section.start
    while position + 1 < section.end and lines[position + 1][:2] == b"i=":
        position += 1
    return position


def _attribute_insert_point(lines: tuple[bytes, ...], section: SectionLayout) -> int:
    """The line after which a new attribute goes: before the section's first a= line, or
    after its last non-blank line."""
    last = section.start
    for position in range(section.start + 1, section.end):
        kind = lines[position][:2]
        if kind == b"a=":
            return position - 1
        if kind not in (b"\r\n", b"\n"):
            last = position
    return last


def _session_insert_point(lines: tuple[bytes, ...], section: SectionLayout) -> int:
    """After the last of v= o= s= i= u= e= p=, where a session c= belongs (RFC 8866 §5)."""
    position = 0
    for index in range(section.start, section.end):
        if lines[index][:2] in (b"v=", b"o=", b"s=", b"i=", b"u=", b"e=", b"p="):
            position = index
    return position


def _write_media_connection(
    edits: LineEdits,
    lines: tuple[bytes, ...],
    section: SectionLayout,
    address: str,
    session_address: str | None,
) -> None:
    """Make the stream's effective address `address`, given the final session c= address."""
    if len(section.connections) > 1:
        raise SdpRewriteError("cannot anchor a stream with layered multicast c= lines")
    if section.connections:
        current = section.connections[0]
        if current.address == address and current.ttl is None and current.count is None:
            return
        edits.replace(
            section.connection_lines[0], b"c=", render_connection(current.nettype, address)
        )
    elif address != session_address:
        edits.insert_after(
            _connection_insert_point(lines, section), b"c=", render_connection("IN", address)
        )


def _write_media_port(
    edits: LineEdits,
    lines: tuple[bytes, ...],
    section: SectionLayout,
    current: MediaLine,
    *,
    port: int,
    count: int | None,
) -> None:
    if current.port == port and current.port_count == count:
        return
    value = render_media_line(line_value(lines[section.start]), port, count)
    edits.replace(section.start, b"m=", value)


def _write_rtcp(
    edits: LineEdits,
    lines: tuple[bytes, ...],
    section: SectionLayout,
    *,
    rtp_port: int,
    rtcp_port: int | None,
    address: str | None,
) -> None:
    """Point RTCP at `rtcp_port` on the stream's (new) address `address`.

    An existing a=rtcp is always rewritten, so an inside port or address cannot survive in
    it; its address part is kept (with the new address) when it had one. A new a=rtcp is
    only added when RTCP is not where the receiver would look anyway (RFC 3605 §2.1).
    """
    default_port = rtp_port if section.rtcp_mux else rtp_port + 1
    port = default_port if rtcp_port is None else rtcp_port
    old = section.rtcp
    if old is not None:
        nettype, rtcp_address = (old.nettype, address) if old.address is not None else (None, None)
        edits.replace(section.rtcp_line, b"a=", render_rtcp_attribute(port, nettype, rtcp_address))
    elif port not in (rtp_port + 1, default_port):
        edits.insert_after(
            _attribute_insert_point(lines, section), b"a=", render_rtcp_attribute(port, None, None)
        )


def _delete_ice(edits: LineEdits, layout: Layout) -> None:
    for index in layout.ice_lines:
        edits.delete(index)


def _effective(layout: Layout, section: SectionLayout) -> Connection | None:
    if section.connections:
        return section.connections[0]
    session = layout.sections[0].connections
    return session[0] if session else None


def _derive_session_address(
    layout: Layout, media: Mapping[int, MediaAnchor], addresses: dict[int, str]
) -> str | None:
    """The one address all anchored streams share, if every enabled stream that relies on
    the session c= is anchored; else None (keep the session c=)."""
    shared = set(addresses.values())
    if len(shared) != 1:
        return None
    for index, section in enumerate(layout.sections[1:]):
        relies = not section.connections and layout.media_lines[index].port != 0
        if relies and index not in media:
            return None
    return shared.pop()


def anchor(sdp: SessionDescription, plan: AnchorPlan) -> SessionDescription:
    """Move the streams in `plan` to their public transports (see the module docstring)."""
    layout = sdp.layout
    lines = sdp.lines
    for index in plan.media:
        _media_section(layout, index)
    edits = LineEdits(lines, layout.eol)
    if plan.origin_text is not None:
        _write_origin(edits, sdp, plan.origin_text)

    session_connection = _effective(layout, layout.sections[0])
    # Anchored, enabled streams that do not sit on a hold address, with their new address.
    moved: dict[int, str] = {}
    for index, media_anchor in plan.media.items():
        if layout.media_lines[index].port == 0:
            continue
        current = _effective(layout, layout.sections[index + 1])
        if current is None or not current.is_hold_address:
            moved[index] = media_anchor.address_text

    session_address = session_connection.address if session_connection else None
    if session_connection is not None and not session_connection.is_hold_address:
        if plan.session_text is not None:
            wanted: str | None = plan.session_text
        else:
            wanted = _derive_session_address(layout, plan.media, moved)
        if wanted is not None and wanted != session_address:
            edits.replace(
                layout.sections[0].connection_lines[0],
                b"c=",
                render_connection(session_connection.nettype, wanted),
            )
            session_address = wanted

    for index, section in enumerate(layout.sections[1:]):
        media_line = layout.media_lines[index]
        if media_line.port == 0:
            continue
        target = plan.media.get(index)
        if target is None:
            pinned = session_connection
            if not section.connections and pinned and session_address != pinned.address:
                # Pin the old session address so this stream does not move with it.
                edits.insert_after(
                    _connection_insert_point(lines, section),
                    b"c=",
                    line_value(lines[layout.sections[0].connection_lines[0]]),
                )
            continue
        address = moved.get(index)
        if address is not None:
            _write_media_connection(edits, lines, section, address, session_address)
        else:
            held = _effective(layout, section)
            address = held.address if held is not None else None
        count = target.port_count or media_line.port_count
        _write_media_port(edits, lines, section, media_line, port=target.rtp_port, count=count)
        _write_rtcp(
            edits,
            lines,
            section,
            rtp_port=target.rtp_port,
            rtcp_port=target.rtcp_port,
            address=address,
        )

    if plan.strip_ice:
        _delete_ice(edits, layout)
    return SessionDescription(edits.apply())


def _write_origin(edits: LineEdits, sdp: SessionDescription, address: str) -> None:
    origin_line = sdp.layout.origin_line
    value = line_value(sdp.lines[origin_line])
    edits.replace(origin_line, b"o=", render_origin(value, addrtype_of(address), address))


def set_origin_address(sdp: SessionDescription, address: IPAddress) -> SessionDescription:
    """Rewrite the `o=` address and its addrtype; username, ids and version are kept."""
    edits = LineEdits(sdp.lines, sdp.layout.eol)
    _write_origin(edits, sdp, _address_text(address))
    return SessionDescription(edits.apply())


def set_session_connection(sdp: SessionDescription, address: IPAddress) -> SessionDescription:
    """Rewrite the session-level `c=` (or add one). Streams without their own `c=` follow it;
    use `anchor` to keep them where they are."""
    layout = sdp.layout
    session = layout.sections[0]
    text = _address_text(address)
    edits = LineEdits(sdp.lines, layout.eol)
    if session.connections:
        nettype = session.connections[0].nettype
        edits.replace(session.connection_lines[0], b"c=", render_connection(nettype, text))
    else:
        edits.insert_after(
            _session_insert_point(sdp.lines, session), b"c=", render_connection("IN", text)
        )
    return SessionDescription(edits.apply())


def set_media_transport(
    sdp: SessionDescription,
    index: int,
    address: IPAddress,
    rtp_port: int,
    *,
    rtcp_port: int | None = None,
    port_count: int | None = None,
) -> SessionDescription:
    """Set stream `index`'s address, RTP port (and port count) and RTCP port, whatever its
    state (explicit: also on a held or disabled stream). A media-level `c=` is rewritten or,
    if the stream used the session `c=` and the address differs, added. `rtcp_port` None
    means the default place (RTP port with rtcp-mux, else RTP port + 1); an existing
    `a=rtcp` is rewritten to it. `port_count` None keeps the current count."""
    layout = sdp.layout
    section = _media_section(layout, index)
    _check_port(rtp_port, "RTP port", minimum=0)
    if rtcp_port is not None:
        _check_port(rtcp_port, "RTCP port", minimum=1)
    if port_count is not None and port_count < 1:
        raise SdpRewriteError(f"port count {port_count} must be at least 1")
    text = _address_text(address)
    session = layout.sections[0].connections
    edits = LineEdits(sdp.lines, layout.eol)
    _write_media_connection(
        edits, sdp.lines, section, text, session[0].address if session else None
    )
    media_line = layout.media_lines[index]
    count = port_count or media_line.port_count
    _write_media_port(edits, sdp.lines, section, media_line, port=rtp_port, count=count)
    _write_rtcp(
        edits,
        sdp.lines,
        section,
        rtp_port=rtp_port,
        rtcp_port=rtcp_port,
        address=text,
    )
    return SessionDescription(edits.apply())


def set_rtcp(
    sdp: SessionDescription, index: int, port: int, address: IPAddress | None = None
) -> SessionDescription:
    """Set or add `a=rtcp` on stream `index` (RFC 3605). The address part is written when
    `address` is given and is not the stream's connection address (RFC 3605 §2.1)."""
    layout = sdp.layout
    section = _media_section(layout, index)
    _check_port(port, "RTCP port", minimum=1)
    text = _address_text(address) if address is not None else None
    current = _effective(layout, section)
    if text is not None and current is not None and current.address == text:
        text = None
    edits = LineEdits(sdp.lines, layout.eol)
    value = render_rtcp_attribute(port, "IN", text)
    if section.rtcp is not None:
        edits.replace(section.rtcp_line, b"a=", value)
    else:
        edits.insert_after(_attribute_insert_point(sdp.lines, section), b"a=", value)
    return SessionDescription(edits.apply())


def strip_ice(sdp: SessionDescription) -> SessionDescription:
    """Remove every ICE attribute (RFC 8839 §5, RFC 8840 end-of-candidates), all levels."""
    edits = LineEdits(sdp.lines, sdp.layout.eol)
    _delete_ice(edits, sdp.layout)
    return SessionDescription(edits.apply())
