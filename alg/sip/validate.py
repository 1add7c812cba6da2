"""Checks a proxy applies before it acts on a message (RFC 3261 §16.3, §8.2; RFC 4475).

`parse_message` only frames; these functions force the lazy parse of every field the
proxy will use and apply the rules that make a message unacceptable, raising
`SipParseError` with the status to answer (requests) or that means "drop" (responses,
which are never answered, §16.7). Application-level answers that depend on the proxy's
configuration (483 Too Many Hops, 420 Bad Extension, ...) belong to the proxy core.
"""

from __future__ import annotations

from typing import Final

from alg.errors import SipParseError
from alg.sip.message import SINGLE_VALUED, SipMessage
from alg.sip.uri import AbsoluteUri, SipUri

# Headers whose values are name-addr lists; parsed to be sure they are well formed.
_NAME_ADDR_LISTS: Final = (("route", "routes"), ("record-route", "record_routes"))
_DISPLAY: Final = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "from": "From",
    "to": "To",
    "max-forwards": "Max-Forwards",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
}


def _check_single_valued(msg: SipMessage) -> None:
    for name in SINGLE_VALUED:
        positions = msg.index.get(name)
        if positions is not None and len(positions) > 1:
            raise SipParseError(400, f"Multiple {_DISPLAY[name]} headers")  # RFC 4475 §3.3.8


def check_request(msg: SipMessage) -> None:
    """Raise `SipParseError(status, reason)` if a proxy must reject this request."""
    if not msg.is_request:
        raise SipParseError(400, "Not a request")
    for name in ("to", "from", "call-id", "cseq", "via"):
        if name not in msg.index:
            display = _DISPLAY.get(name, "Via")
            raise SipParseError(400, f"Missing {display} header")  # RFC 4475 §3.3.1 (insuf)
    _check_single_valued(msg)
    uri = msg.request_uri
    if isinstance(uri, AbsoluteUri):
        raise SipParseError(416, "Unsupported URI Scheme")  # RFC 4475 §3.3.2 (unkscm)
    if isinstance(uri, SipUri) and uri.headers is not None:
        # §19.1.1 table: headers are "not allowed" in a Request-URI (RFC 4475 §3.1.2.11)
        raise SipParseError(400, "Request-URI must not contain headers")
    msg.vias  # noqa: B018  (forces parsing)
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
    msg.call_id  # noqa: B018
    if msg.cseq.method != msg.method:
        raise SipParseError(400, "CSeq method does not match request method")  # §8.2 / 4475
    msg.max_forwards  # noqa: B018
    msg.content_type  # noqa: B018
    if "contact" in msg.index:
        msg.contact  # noqa: B018
    for name, attribute in _NAME_ADDR_LISTS:
        if name in msg.index:
            getattr(msg, attribute)


def check_response(msg: SipMessage) -> None:
    """Raise `SipParseError` if a proxy must drop this response."""
    if msg.is_request:
        raise SipParseError(400, "Not a response")
    for name in ("to", "from", "call-id", "cseq", "via"):
        if name not in msg.index:
            raise SipParseError(400, f"Missing {_DISPLAY.get(name, 'Via')} header")
    _check_single_valued(msg)
    msg.vias  # noqa: B018
    msg.cseq  # noqa: B018  (RFC 4475 §3.1.2.5 scalarlg: overlarge CSeq → drop)
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
    msg.call_id  # noqa: B018
    if "contact" in msg.index:
        msg.contact  # noqa: B018
    if "record-route" in msg.index:
        msg.record_routes  # noqa: B018
