"""Finding and replacing the SDP inside a SIP body (RFC 3261 §7.4, RFC 5621, RFC 2046).

A body is either `application/sdp` itself or a `multipart/*` body (e.g. SDP next to an
ISUP or PIDF-LO part, RFC 4475 §3.1.1.11 mpart01). For the multipart case the SDP part is
located by its boundaries and replaced in place: the preamble, the other parts, every
boundary delimiter and the part headers stay byte-identical (RFC 5621 §3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from alg.errors import SipParseError
from alg.sip.headers import parse_media_type
from alg.sip.message import SipMessage, decode_text

SDP_MIME = "application/sdp"


@dataclass(frozen=True, slots=True)
class SdpLocation:
    """Where the SDP is within a message body: `body[start:end]`."""

    start: int
    end: int

    def extract(self, body: bytes) -> bytes:
        return body[self.start : self.end]

    def replace(self, body: bytes, sdp: bytes) -> bytes:
        return body[: self.start] + sdp + body[self.end :]


def find_sdp(msg: SipMessage) -> SdpLocation | None:
    """Locate the SDP in `msg`'s body, or None if it carries none."""
    body = msg.body
    if not body:
        return None
    content_type = msg.content_type
    if content_type is None:
        return None
    mime = content_type.mime
    if mime == SDP_MIME:
        return SdpLocation(0, len(body))
    if content_type.type.lower() == "multipart":
        boundary = content_type.param("boundary")
        if not boundary:
            raise SipParseError(400, "Multipart body without boundary")
        return _find_in_multipart(body, boundary.encode("utf-8", "surrogateescape"))
    return None


def _find_in_multipart(body: bytes, boundary: bytes, depth: int = 0) -> SdpLocation | None:
    if depth > 3:
        return None  # nested multiparts deeper than this are not worth chasing
    delimiter = b"--" + boundary
    # RFC 2046 §5.1.1: a delimiter is CRLF "--" boundary; the first may start the body.
    pos = 0 if body.startswith(delimiter) else body.find(b"\r\n" + delimiter)
    if pos < 0:
        raise SipParseError(400, "Multipart body without its boundary")
    if pos:
        pos += 2
    while True:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            return None
        after = body[pos + len(delimiter) : pos + len(delimiter) + 2]
        if after == b"--":
            return None  # close-delimiter: no SDP part
        part_start = line_end + 2
        next_delim = body.find(b"\r\n" + delimiter, part_start - 2)
        if next_delim < 0:
            raise SipParseError(400, "Multipart body not terminated")
        part = body[part_start:next_delim] if next_delim >= part_start else b""
        head_end = part.find(b"\r\n\r\n")
        if part.startswith(b"\r\n"):
            headers, content_offset = b"", 2  # a part with no headers is text/plain
        elif head_end >= 0:
            headers, content_offset = part[:head_end], head_end + 4
        else:
            headers, content_offset = part, len(part)
        part_type = _part_content_type(headers)
        if part_type is not None:
            mime, inner_boundary = part_type
            start = part_start + content_offset
            if mime == SDP_MIME:
                return SdpLocation(start, next_delim)
            if mime.startswith("multipart/") and inner_boundary:
                inner = _find_in_multipart(
                    body[start:next_delim], inner_boundary.encode(), depth + 1
                )
                if inner is not None:
                    return SdpLocation(start + inner.start, start + inner.end)
        pos = next_delim + 2


def _part_content_type(headers: bytes) -> tuple[str, str | None] | None:
    for line in headers.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-type", b"c"):
            media = parse_media_type(decode_text(value.strip()))
            return media.mime, media.param("boundary")
    return None
