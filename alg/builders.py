"""Messages a proxy generates itself: responses, hop-by-hop ACKs and CANCELs.

They are built by copying the exact bytes of the header fields RFC 3261 says to copy
(§8.2.6.2 for responses, §17.1.1.3 for the ACK of a non-2xx, §9.1 for CANCEL), so tags,
branches and odd-but-valid syntax survive unchanged and transactions still match.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from alg.errors import SipParseError
from alg.sip import SipMessage, parse_message
from alg.sip.headers import split_commas

# RFC 3261 §21 reason phrases for the responses a proxy sends itself.
REASONS: dict[int, str] = {
    100: "Trying",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    505: "Version Not Supported",
}


class _RandomPool:
    """Cryptographically random bytes (os.urandom, as `secrets` uses) drawn 4 KiB at a
    time: tags and branches take a few bytes each (RFC 3261 §19.3 asks for 32 random
    bits or more), and one getrandom() per call instead of four is measurable at a few
    thousand calls/sec (issue #4). A forked child starts with a fresh pool, so no two
    processes hand out the same bytes."""

    __slots__ = ("_data", "_position")

    def __init__(self) -> None:
        self._data = b""
        self._position = 0

    def reset(self) -> None:
        self._data, self._position = b"", 0

    def hex(self, nbytes: int) -> str:
        start = self._position
        if start + nbytes > len(self._data):
            self._data, start = os.urandom(max(4096, nbytes)), 0
        self._position = start + nbytes
        return self._data[start : start + nbytes].hex()


_pool = _RandomPool()
os.register_at_fork(after_in_child=_pool.reset)


def random_hex(nbytes: int) -> str:
    """`nbytes` cryptographically random bytes as hex (like `secrets.token_hex`)."""
    return _pool.hex(nbytes)


def new_tag() -> str:
    return random_hex(6)


def _raw_fields(msg: SipMessage, name: str) -> list[bytes]:
    """The values of all fields `name`, exactly as received (folding undone)."""
    return [msg.field_value(field) for field in msg.fields_named(name)]


def _line(name: str, value: bytes) -> bytes:
    return name.encode("ascii") + b": " + value + b"\r\n"


def build_response(
    request: SipMessage,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra_headers: Iterable[tuple[str, bytes]] = (),
    body: bytes = b"",
    content_type: bytes | None = None,
) -> bytes:
    """A response to `request` (§8.2.6.2): Via, From, To, Call-ID and CSeq copied.

    A To tag is added to every response but 100 when the request's To has none
    (§8.2.6.2); pass `to_tag` to keep one tag across the responses of a transaction."""
    out = [f"SIP/2.0 {status} {reason or REASONS.get(status, 'Unknown')}\r\n".encode()]
    out += [_line("Via", value) for value in _raw_fields(request, "via")]
    out += [_line("From", value) for value in _raw_fields(request, "from")]
    to_values = _raw_fields(request, "to")
    to_value = to_values[0] if to_values else b""
    if status != 100 and not _has_tag(request, to_value):
        to_value += f";tag={to_tag or new_tag()}".encode()
    out.append(_line("To", to_value))
    out += [_line("Call-ID", value) for value in _raw_fields(request, "call-id")]
    out += [_line("CSeq", value) for value in _raw_fields(request, "cseq")]
    if status == 100:
        # §8.2.6.1: a 100 copies any Timestamp header
        out += [_line("Timestamp", value) for value in _raw_fields(request, "timestamp")]
    out += [_line(name, value) for name, value in extra_headers]
    if body:
        out.append(_line("Content-Type", content_type or b"application/sdp"))
    out.append(_line("Content-Length", str(len(body)).encode()))
    out.append(b"\r\n")
    out.append(body)
    return b"".join(out)


def _has_tag(request: SipMessage, to_value: bytes) -> bool:
    """Whether To has a tag; a 400 for a malformed To must still be buildable, so fall
    back to the raw text when it does not parse."""
    try:
        return request.to.tag is not None
    except SipParseError:
        return b";tag=" in to_value.lower().replace(b" ", b"")


def build_ack(request: SipMessage, response: SipMessage) -> bytes:
    """The ACK a client transaction sends for a non-2xx final response (§17.1.1.3):
    same R-URI, single top Via and Route set as the INVITE, To from the response."""
    return _same_transaction_request("ACK", request, _raw_fields(response, "to"))


def build_cancel(invite: SipMessage) -> bytes:
    """CANCEL for a forwarded INVITE (§9.1): same R-URI, top Via (branch), Route set,
    From, To, Call-ID and CSeq number; the CANCEL is its own transaction."""
    return _same_transaction_request("CANCEL", invite, _raw_fields(invite, "to"))


def _same_transaction_request(method: str, invite: SipMessage, to_values: list[bytes]) -> bytes:
    """A request that reuses an INVITE's branch (ACK for a non-2xx, CANCEL): R-URI, top
    Via, Route set, From, Call-ID and CSeq number copied; To as given."""
    uri = getattr(invite.start_line, "uri_text", "")
    out = [f"{method} {uri} SIP/2.0\r\n".encode()]
    vias = _raw_fields(invite, "via")
    out.append(_line("Via", _first_value(vias[0]) if vias else b""))
    out += [_line("Route", value) for value in _raw_fields(invite, "route")]
    out += [_line("From", value) for value in _raw_fields(invite, "from")]
    out += [_line("To", value) for value in to_values]
    out += [_line("Call-ID", value) for value in _raw_fields(invite, "call-id")]
    out.append(_line("CSeq", f"{invite.cseq.number} {method}".encode()))
    out.append(_line("Max-Forwards", b"70"))
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"".join(out)


def _first_value(via_field: bytes) -> bytes:
    """The first value of a Via field that may hold several comma-separated values."""
    text = via_field.decode("utf-8", "surrogateescape")
    return split_commas(text)[0].encode("utf-8", "surrogateescape")


def stand_in_request(data: bytes) -> SipMessage | None:
    """A request whose start line or framing is bad (505, or 400 for RFC 4475
    §3.1.2.2-3, 7-10, §3.3.9) still deserves an answer: re-read its header block behind a
    placeholder start line and without Content-Length, only to copy Via, From, To, Call-ID
    and CSeq (§8.2.6.2). None for responses and ACKs (never answered) and for anything
    whose header block cannot be read (dropped, §18.3)."""
    line_end = data.find(b"\r\n")
    head_end = data.find(b"\r\n\r\n")
    if line_end <= 0 or head_end < 0 or data[:4].upper() == b"SIP/":
        return None
    if data.startswith(b"ACK "):
        return None
    lines = [
        line
        for line in data[line_end + 2 : head_end].split(b"\r\n")
        if line.split(b":", 1)[0].strip().lower() not in (b"content-length", b"l")
    ]
    head = b"\r\n".join([b"OPTIONS sip:invalid SIP/2.0", *lines])
    try:
        return parse_message(head + b"\r\nContent-Length: 0\r\n\r\n")
    except SipParseError:
        return None


def build_dialog_request(
    method: str,
    *,
    request_uri: str,
    via: str,
    routes: Iterable[str],
    from_: bytes,
    to: bytes,
    call_id: bytes,
    cseq: int,
    extra_headers: Iterable[tuple[str, bytes]] = (),
) -> bytes:
    """A request within an existing dialog (§12.2.1.1), made by the proxy itself (the
    ACK and BYE that end a call it cannot anchor): Request-URI the remote target, Route
    the route set, From and To with the dialog's tags as given, one Via of ours."""
    out = [f"{method} {request_uri} SIP/2.0\r\n".encode(), _line("Via", via.encode())]
    route_values = list(routes)
    if route_values:
        out.append(_line("Route", ", ".join(route_values).encode("utf-8", "surrogateescape")))
    out += [_line("Max-Forwards", b"70"), _line("From", from_), _line("To", to)]
    out += [_line("Call-ID", call_id), _line("CSeq", f"{cseq} {method}".encode())]
    out += [_line(name, value) for name, value in extra_headers]
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"".join(out)
