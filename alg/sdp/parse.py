"""Reading an SDP body: bytes in, a validated lossless `SessionDescription` out."""

from __future__ import annotations

from alg.sdp.layout import split_lines
from alg.sdp.model import SessionDescription


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse a SIP message body as SDP (RFC 8866). Raises only `SdpParseError`.

    Lines may end in CRLF or bare LF (RFC 8866 §5 asks for that tolerance); each line keeps
    its own terminator, so `parse_sdp(body).to_bytes() == body` always holds.
    """
    return SessionDescription.from_validated(split_lines(body), body)
