"""Framing SIP over a byte stream (TCP/TLS): RFC 3261 §18.3 and RFC 5626 §3.5.1.

On a stream, Content-Length is the only frame delimiter, so it is mandatory and a bad one
is unrecoverable: the connection must be closed (RFC 4475 §3.1.2.3 and §3.3.9). A message
that is framed correctly but otherwise malformed is reported as `BadMessage(fatal=False)`
so the shell can answer 400 and keep reading. Between messages, CRLF keep-alives are
skipped; a double CRLF ("ping") asks for a single CRLF back ("pong").

Sans-I/O: feed bytes in, take events out, in the manner of h11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from alg.errors import SipParseError
from alg.sip.message import DEFAULT_MAX_SIZE, SipMessage, parse_message

_CRLF: Final = b"\r\n"


@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: SipMessage


@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """A CRLFCRLF ping (RFC 5626 §3.5.1): answer with one CRLF."""


@dataclass(frozen=True, slots=True)
class BadMessage:
    """A message that could not be accepted. `fatal`: framing is lost, close the
    connection; otherwise the stream stays usable and `error.status` may be answered."""

    error: SipParseError
    fatal: bool
    raw: bytes


StreamEvent = MessageReceived | KeepAlivePing | BadMessage


def _content_length(head: bytes) -> int | None:
    """Content-Length from a header block (without parsing anything else)."""
    found: int | None = None
    for line in head.split(_CRLF)[1:]:
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].rstrip(b" \t").lower()
        if name in (b"content-length", b"l"):
            value = line[colon + 1 :].strip()
            if not value.isdigit() or len(value) > 10:
                raise SipParseError(400, "Malformed Content-Length header")
            length = int(value)
            if found is not None and found != length:
                raise SipParseError(400, "Multiple Content-Length values")
            found = length
    return found


class SipStreamReader:
    """Incremental framer for one stream connection."""

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        self._broken = False

    @property
    def broken(self) -> bool:
        """True once framing was lost: the caller must close the connection."""
        return self._broken

    def feed(self, data: bytes) -> list[StreamEvent]:
        if self._broken:
            return []
        self._buffer += data
        events: list[StreamEvent] = []
        buf = self._buffer
        while buf:
            # keep-alives between messages (RFC 5626 §3.5.1)
            if buf.startswith(b"\r\n\r\n"):
                del buf[:4]
                events.append(KeepAlivePing())
                continue
            if bytes(buf[:4]) in (b"\r", b"\r\n", b"\r\n\r"):
                break  # may still become a CRLFCRLF ping: wait for more bytes
            if buf.startswith(_CRLF):
                del buf[:2]  # a lone CRLF keep-alive ("pong" or padding)
                continue
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buf) > self._max_size:
                    return self._fail(events, SipParseError(413, "Message Too Large"))
                break
            try:
                length = _content_length(bytes(buf[:head_end]))
            except SipParseError as exc:
                return self._fail(events, exc)
            if length is None:
                return self._fail(events, SipParseError(400, "Missing Content-Length header"))
            total = head_end + 4 + length
            if total > self._max_size:
                return self._fail(events, SipParseError(413, "Message Too Large"))
            if len(buf) < total:
                break
            frame = bytes(buf[:total])
            del buf[:total]
            try:
                events.append(
                    MessageReceived(parse_message(frame, max_size=self._max_size, datagram=False))
                )
            except SipParseError as exc:
                events.append(BadMessage(exc, fatal=False, raw=frame))
        return events

    def _fail(self, events: list[StreamEvent], error: SipParseError) -> list[StreamEvent]:
        self._broken = True
        events.append(BadMessage(error, fatal=True, raw=bytes(self._buffer)))
        self._buffer.clear()
        return events
