"""The lossless session description: raw lines plus cheap, read-only views.

A `SessionDescription` *is* its tuple of raw lines (terminators included), so serializing
is one `b"".join` and an unedited model gives back the input byte for byte. The layout
(line index + parsed `o=`/`c=`/`m=`/`a=rtcp`) is computed on first use; `parse_sdp` forces
it, so parse errors surface at parse time. Rewrites (`alg.sdp.rewrite`) return a new model
whose layout is only computed if someone looks at it.

Views answer what an ALG asks of each media stream (RFC 8866 §5.7, §5.14, §6.7; RFC 3264;
RFC 3605; RFC 5761): the effective connection address, direction, hold, disabled, RTCP.

The description and its sections are read-only views whose derived values are computed on
first use and kept in private attributes, not frozen dataclasses with cached properties:
those need an instance `__dict__`, which mypyc's native classes do not have, and this
module is on the hot path of every anchored call (compiled, see `sipwall.compiled`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from alg.sdp.fields import (
    DIRECTIONS,
    Attribute,
    Connection,
    Direction,
    MediaLine,
    Origin,
    RtcpAttribute,
    parse_attribute,
    parse_origin,
)
from alg.sdp.ice import IceAttributes, collect_ice_attributes
from alg.sdp.layout import Layout, build_layout, line_value

_MAX_PORT = 0xFFFF


class _Section:
    """Lines shared by the session part and media sections: attributes, direction, ICE."""

    def __init__(self, first_line: int, lines: tuple[bytes, ...]) -> None:
        self.first_line = first_line  # 0-based index of the section's first line in the whole
        self.lines = lines
        self._attributes: tuple[Attribute, ...] | None = None
        self._ice: IceAttributes | None = None

    def _key(self) -> tuple[object, ...]:
        return (self.first_line, self.lines)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self) or not isinstance(other, _Section):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._key()!r}"

    def _attribute_lines(self) -> Iterator[tuple[int, Attribute]]:
        for offset, line in enumerate(self.lines):
            if line[:2] == b"a=":
                yield self.first_line + offset + 1, parse_attribute(line_value(line))

    @property
    def attributes(self) -> tuple[Attribute, ...]:
        """Every `a=` line of this section, in order (unknown ones included)."""
        attributes = self._attributes
        if attributes is None:
            attributes = self._attributes = tuple(a for _, a in self._attribute_lines())
        return attributes

    def attribute(self, name: str) -> Attribute | None:
        """The first attribute called `name` (names are case-sensitive, RFC 8866 §5.13)."""
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        return None

    @property
    def direction(self) -> Direction | None:
        """The direction attribute written at this level, if any (RFC 3264 §5.1)."""
        for attribute in self.attributes:
            if attribute.value is None and attribute.name in DIRECTIONS:
                return DIRECTIONS[attribute.name]
        return None

    @property
    def ice(self) -> IceAttributes:
        """ICE attributes at this level (RFC 8839); parsing a bad candidate raises here."""
        ice = self._ice
        if ice is None:
            ice = self._ice = collect_ice_attributes(
                (line_number, attribute.name, attribute.value)
                for line_number, attribute in self._attribute_lines()
            )
        return ice


class SessionSection(_Section):
    """Everything before the first `m=` line."""

    def __init__(
        self,
        first_line: int,
        lines: tuple[bytes, ...],
        origin: Origin,
        connection: Connection | None,
    ) -> None:
        super().__init__(first_line, lines)
        self.origin = origin
        self.connection = connection

    def _key(self) -> tuple[object, ...]:
        return (self.first_line, self.lines, self.origin, self.connection)


class MediaSection(_Section):
    """One media description: its `m=` line and the lines up to the next `m=`."""

    def __init__(
        self,
        first_line: int,
        lines: tuple[bytes, ...],
        *,
        index: int,
        media_line: MediaLine,
        connections: tuple[Connection, ...],
        rtcp: RtcpAttribute | None,
        rtcp_mux: bool,
    ) -> None:
        super().__init__(first_line, lines)
        self.index = index
        self.media_line = media_line
        self.connections = connections  # media-level c= lines (several only for multicast)
        self.rtcp = rtcp
        self.rtcp_mux = rtcp_mux  # a=rtcp-mux present (RFC 5761 §5.1.1)

    def _key(self) -> tuple[object, ...]:
        return (
            self.first_line,
            self.lines,
            self.index,
            self.media_line,
            self.connections,
            self.rtcp,
            self.rtcp_mux,
        )

    @property
    def connection(self) -> Connection | None:
        """The media-level `c=`, if any (the first one for layered multicast)."""
        return self.connections[0] if self.connections else None


@dataclass(frozen=True, slots=True)
class MediaStream:
    """What a media description means for the transport, defaults and overrides resolved."""

    index: int
    media: str
    connection: Connection | None  # media-level c= else session-level c= (RFC 8866 §5.7)
    rtp_port: int
    port_count: int
    rtcp_port: int | None  # None when disabled or not representable
    rtcp_address: str | None
    rtcp_mux: bool
    direction: Direction
    on_hold: bool
    disabled: bool


class SessionDescription:
    """A parsed SDP body. Build it with `parse_sdp`; `lines` are the raw lines, terminators
    included, and are the whole truth: two descriptions are equal when their bytes are."""

    def __init__(self, lines: tuple[bytes, ...]) -> None:
        self.lines = lines
        self._layout: Layout | None = None
        self._body: bytes | None = None
        self._origin: Origin | None = None
        self._session: SessionSection | None = None
        self._media: tuple[MediaSection, ...] | None = None
        self._streams: tuple[MediaStream, ...] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionDescription):
            return NotImplemented
        return self.lines == other.lines

    def __hash__(self) -> int:
        return hash(self.lines)

    def __repr__(self) -> str:
        return f"SessionDescription(lines={self.lines!r})"

    @classmethod
    def from_validated(cls, lines: tuple[bytes, ...], body: bytes) -> SessionDescription:
        """The description of `body` split into `lines`, its layout built (validated) now."""
        description = cls(lines)
        # The layout scan wants the body, and so does to_bytes.
        description._layout = build_layout(lines, body)
        description._body = body
        return description

    @property
    def layout(self) -> Layout:
        """The line index used by views and rewrites (raises SdpParseError if invalid)."""
        layout = self._layout
        if layout is None:
            layout = self._layout = build_layout(self.lines)
        return layout

    def to_bytes(self) -> bytes:
        body = self._body
        if body is None:
            body = self._body = b"".join(self.lines)
        return body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @property
    def line_ending(self) -> bytes:
        """CRLF, or LF if the first line used a bare LF; used for lines a rewrite inserts."""
        return self.layout.eol

    @property
    def origin(self) -> Origin:
        origin = self._origin
        if origin is None:
            origin_line = self.layout.origin_line
            origin = parse_origin(line_value(self.lines[origin_line]), origin_line + 1)
            self._origin = origin
        return origin

    @property
    def session(self) -> SessionSection:
        session = self._session
        if session is None:
            section = self.layout.sections[0]
            connection = section.connections[0] if section.connections else None
            lines = self.lines[section.start : section.end]
            session = self._session = SessionSection(0, lines, self.origin, connection)
        return session

    @property
    def media(self) -> tuple[MediaSection, ...]:
        media = self._media
        if media is None:
            media = self._media = self._media_sections()
        return media

    def _media_sections(self) -> tuple[MediaSection, ...]:
        layout = self.layout
        return tuple(
            MediaSection(
                section.start,
                self.lines[section.start : section.end],
                index=index,
                media_line=media_line,
                connections=section.connections,
                rtcp=section.rtcp,
                rtcp_mux=section.rtcp_mux,
            )
            for index, (section, media_line) in enumerate(
                zip(layout.sections[1:], layout.media_lines, strict=True)
            )
        )

    def effective_connection(self, index: int) -> Connection | None:
        """The media-level `c=` of stream `index`, else the session-level one (§5.7)."""
        own = self.layout.sections[index + 1].connections
        if own:
            return own[0]
        session = self.layout.sections[0].connections
        return session[0] if session else None

    def effective_direction(self, index: int) -> Direction:
        """Media-level direction, else session-level, else sendrecv (RFC 8866 §6.7)."""
        return self.media[index].direction or self.session.direction or Direction.SENDRECV

    def is_disabled(self, index: int) -> bool:
        """Port 0: the stream is rejected or removed (RFC 3264 §6, §8.2)."""
        return self.layout.media_lines[index].port == 0

    def is_on_hold(self, index: int) -> bool:
        """sendonly/inactive (RFC 3264 §8.4) or the legacy c= 0.0.0.0 / `::` hold."""
        if self.effective_direction(index) in (Direction.SENDONLY, Direction.INACTIVE):
            return True
        connection = self.effective_connection(index)
        return connection is not None and connection.is_hold_address

    def effective_rtcp_port(self, index: int) -> int | None:
        """Where RTCP goes: the RTP port with rtcp-mux (RFC 5761 §5.1.1), else a=rtcp
        (RFC 3605), else RTP port + 1 (RFC 3550 §11); None for a disabled stream."""
        port = self.layout.media_lines[index].port
        if port == 0:
            return None
        section = self.layout.sections[index + 1]
        if section.rtcp_mux:
            return port
        rtcp = section.rtcp
        if rtcp is not None:
            return rtcp.port
        return port + 1 if port < _MAX_PORT else None

    def stream(self, index: int) -> MediaStream:
        return self.streams[index]

    @property
    def streams(self) -> tuple[MediaStream, ...]:
        """Every stream, resolved once per description: the media core asks about the same
        offer and answer several times per call."""
        streams = self._streams
        if streams is None:
            count = len(self.layout.media_lines)
            streams = self._streams = tuple(self._stream(index) for index in range(count))
        return streams

    def _stream(self, index: int) -> MediaStream:
        media_line = self.layout.media_lines[index]
        connection = self.effective_connection(index)
        rtcp = self.layout.sections[index + 1].rtcp
        rtcp_address = rtcp.address if rtcp is not None and rtcp.address is not None else None
        if rtcp_address is None and connection is not None:
            rtcp_address = connection.address
        return MediaStream(
            index=index,
            media=media_line.media,
            connection=connection,
            rtp_port=media_line.port,
            port_count=media_line.port_count or 1,
            rtcp_port=self.effective_rtcp_port(index),
            rtcp_address=rtcp_address,
            rtcp_mux=self.layout.sections[index + 1].rtcp_mux,
            direction=self.effective_direction(index),
            on_hold=self.is_on_hold(index),
            disabled=media_line.port == 0,
        )
