"""Where things are in a session description: the line index behind views and rewrites.

Theory of operation: a session description is kept as a tuple of raw lines, each with its
own terminator (CRLF, or LF when the sender used bare LF; the last line may have none).
`build_layout` checks the line grammar (RFC 8866 §5: `<type>=<value>`, `v=0` first),
splits sections at `m=` (§5.14) and parses eagerly only the lines the ALG rewrites: `o=`,
`c=`, `m=`, media-level `a=rtcp` (RFC 3605) and `a=rtcp-mux` (RFC 5761). Everything else
stays opaque bytes, read lazily by the section views. The layout records line indices, so
a rewrite can replace, insert and delete whole lines and leave every other byte alone.

It runs on every SIP message with a body, so the per-line work is kept to a slice and a
comparison: line kinds are checked as one set operation, and an attribute is only looked
at when its first four bytes could be one the layout records.

Tolerance (RFC 8866 §5 asks parsers to accept bare LF): line order beyond `v=` first is not
enforced, `s=`/`t=` are not required, trailing blank lines are kept. Rejected: a first line
other than `v=0`, a line that is not `<lower-case letter>=`, a bare CR, NUL, a missing or
repeated `o=`, two session-level `c=`, two `a=rtcp` in one media section, and malformed
`o=`/`c=`/`m=`/`a=rtcp` values.
"""

from __future__ import annotations

from typing import NamedTuple

from alg.errors import SdpParseError
from alg.sdp.fields import (
    Connection,
    MediaLine,
    RtcpAttribute,
    check_origin,
    parse_connection,
    parse_media_line,
    parse_rtcp_attribute,
)
from alg.sdp.ice import ICE_ATTRIBUTE_NAMES

CRLF = b"\r\n"
LF = b"\n"
NO_LINE = -1


class SectionLayout(NamedTuple):
    """One section: the session part (index 0 of `Layout.sections`) or a media section."""

    start: int  # index of the first line (0, or the m= line)
    end: int  # index one past the last line
    connection_lines: tuple[int, ...]
    connections: tuple[Connection, ...]
    rtcp_line: int  # NO_LINE when absent; the session level never records one
    rtcp: RtcpAttribute | None
    rtcp_mux: bool  # a=rtcp-mux (RFC 5761 §5.1.1); always False at session level


class Layout(NamedTuple):
    eol: bytes  # terminator for inserted lines: the first line's
    origin_line: int
    sections: tuple[SectionLayout, ...]  # [0] is the session part, [1:] the media sections
    media_lines: tuple[MediaLine, ...]
    ice_lines: tuple[int, ...]  # every ICE attribute line (RFC 8839 §5), any level


# `<type>=` for every lower-case type letter (RFC 8866 §5), plus the blank trailing line.
_LINE_KINDS = frozenset(bytes((letter, 0x3D)) for letter in range(0x61, 0x7B)) | {CRLF, LF}
_BLANK_KINDS = (CRLF, LF)
# First four bytes of the attribute names the layout records; rtpmap ("rtpm") is not one.
_RECORDED_ATTRIBUTE_HEADS = frozenset({b"rtcp", b"cand", b"ice-", b"remo", b"end-"})
_ICE_NAMES = frozenset(name.encode() for name in ICE_ATTRIBUTE_NAMES)


def line_value(line: bytes) -> bytes:
    """The value of a raw line: after `x=`, without its terminator."""
    if line[-1:] == b"\n":
        return line[2:-2] if line[-2:-1] == b"\r" else line[2:-1]
    return line[2:]


def _check_line_grammar(lines: tuple[bytes, ...], kinds: list[bytes], body: bytes) -> None:
    if kinds[0] != b"v=" or line_value(lines[0]) != b"0":
        raise SdpParseError("session description must start with v=0", 1)
    if body[-1:] == b"\r" or len(lines) != body.count(b"\n") + (body[-1:] != b"\n"):
        # splitlines() also ends a line at a bare CR, so there are more lines than LFs.
        bad = next(i for i, line in enumerate(lines) if line[-1:] == b"\r")
        raise SdpParseError("bare CR line terminator", bad + 1)
    if not _LINE_KINDS.issuperset(kinds):
        bad = next(i for i, kind in enumerate(kinds) if kind not in _LINE_KINDS)
        raise SdpParseError("line is not <type>=<value>", bad + 1)
    if kinds.count(b"v=") != 1:
        raise SdpParseError("v= must appear once, first", kinds.index(b"v=", 1) + 1)
    if CRLF in kinds or LF in kinds:
        # Some stacks end the body with extra empty lines; keep them, accept nothing after.
        first_blank = min(kinds.index(k) if k in kinds else len(kinds) for k in _BLANK_KINDS)
        for index in range(first_blank, len(kinds)):
            if kinds[index] not in _BLANK_KINDS:
                raise SdpParseError("blank line inside the session description", first_blank + 1)


def build_layout(lines: tuple[bytes, ...], body: bytes | None = None) -> Layout:
    """Index and validate `lines` (from `split_lines`); `body` is their join if known."""
    if not lines:
        raise SdpParseError("empty session description", None)
    kinds = [line[:2] for line in lines]
    _check_line_grammar(lines, kinds, b"".join(lines) if body is None else body)
    first = lines[0]
    eol = LF if first[-1:] == b"\n" and first[-2:-1] != b"\r" else CRLF

    origin_line = NO_LINE
    sections: list[SectionLayout] = []
    media_lines: list[MediaLine] = []
    ice_lines: list[int] = []
    start = 0
    connection_lines: list[int] = []
    connections: list[Connection] = []
    rtcp_line = NO_LINE
    rtcp: RtcpAttribute | None = None
    rtcp_mux = False

    for index, kind in enumerate(kinds):
        if kind == b"a=":
            line = lines[index]
            if line[2:6] not in _RECORDED_ATTRIBUTE_HEADS:
                continue
            name, _, value = line_value(line).partition(b":")
            if name in _ICE_NAMES:
                ice_lines.append(index)
            elif not media_lines:
                pass  # RFC 3605 and RFC 5761 define a=rtcp and a=rtcp-mux per media only
            elif name == b"rtcp" and _:
                if rtcp is not None:
                    raise SdpParseError("more than one a=rtcp in a media section", index + 1)
                rtcp = parse_rtcp_attribute(value, index + 1)
                rtcp_line = index
            elif name == b"rtcp-mux" and not _:
                rtcp_mux = True
        elif kind == b"m=":
            sections.append(
                SectionLayout(
                    start,
                    index,
                    tuple(connection_lines),
                    tuple(connections),
                    rtcp_line,
                    rtcp,
                    rtcp_mux,
                )
            )
            media_lines.append(parse_media_line(line_value(lines[index]), index + 1))
            start = index
            connection_lines = []
            connections = []
            rtcp_line = NO_LINE
            rtcp = None
            rtcp_mux = False
        elif kind == b"c=":
            if connections and not media_lines:
                raise SdpParseError("more than one session-level c= line", index + 1)
            connection_lines.append(index)
            connections.append(parse_connection(line_value(lines[index]), index + 1))
        elif kind == b"o=":
            if media_lines or origin_line != NO_LINE:
                raise SdpParseError("o= must appear once, at session level", index + 1)
            check_origin(line_value(lines[index]), index + 1)
            origin_line = index

    if origin_line == NO_LINE:
        raise SdpParseError("missing o= line", None)
    sections.append(
        SectionLayout(
            start,
            len(lines),
            tuple(connection_lines),
            tuple(connections),
            rtcp_line,
            rtcp,
            rtcp_mux,
        )
    )
    return Layout(eol, origin_line, tuple(sections), tuple(media_lines), tuple(ice_lines))


def split_lines(body: bytes) -> tuple[bytes, ...]:
    """Split a body into raw lines, each keeping its terminator (the last may have none)."""
    if b"\x00" in body:
        raise SdpParseError("NUL byte in session description", None)
    return tuple(body.splitlines(keepends=True))
