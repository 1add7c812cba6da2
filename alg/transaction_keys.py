"""Matching messages to transactions (RFC 3261 §17.1.3 and §17.2.3).

A response belongs to the client transaction whose request carried the same top Via
branch and the same CSeq method (§17.1.3). A request belongs to a server transaction by
its top Via branch, sent-by and method, where ACK (for a non-2xx) and CANCEL look up the
INVITE they refer to (§17.2.3, §9.2). Requests from RFC 2543 elements, whose branch lacks
the magic cookie, fall back to the older rule: Request-URI, tags, Call-ID, CSeq number and
the top Via (§17.2.3, second half) — RFC 4475 §3.2.1 (badbranch) is such a case.
"""

from __future__ import annotations

from typing import NamedTuple

from alg.sip import SipMessage


class ClientKey(NamedTuple):
    branch: str
    method: str


class ServerKey(NamedTuple):
    """RFC 3261-style key; `method` is INVITE for an ACK to a non-2xx."""

    branch: str
    sent_by: str
    method: str


class LegacyServerKey(NamedTuple):
    """RFC 2543-style key (§17.2.3): no usable branch."""

    request_uri: str
    to_tag: str | None
    from_tag: str | None
    call_id: str
    cseq_number: int
    top_via: str
    method: str


def client_key(msg: SipMessage) -> ClientKey:
    """The key of the client transaction a response (or our own request) belongs to."""
    branch = msg.top_via.branch or ""
    return ClientKey(branch, msg.cseq.method)


def server_key(msg: SipMessage, *, for_method: str | None = None) -> ServerKey | LegacyServerKey:
    """The key of the server transaction a request belongs to.

    ACK maps to its INVITE. `for_method` looks up another transaction of the same branch:
    `server_key(cancel, for_method="INVITE")` finds the INVITE a CANCEL cancels (§9.2)."""
    method = for_method or msg.method
    if method == "ACK":
        method = "INVITE"
    via = msg.top_via
    if via.is_rfc3261_branch:
        return ServerKey(via.branch or "", via.sent_by.lower(), method)
    line = msg.start_line
    # §17.2.3: an INVITE and its ACK match on everything but the To tag (the ACK carries
    # the tag of our response; the caller compares it with the response it sent).
    return LegacyServerKey(
        request_uri=getattr(line, "uri_text", ""),
        to_tag=None if method == "INVITE" else msg.to.tag,
        from_tag=msg.from_.tag,
        call_id=msg.call_id,
        cseq_number=msg.cseq.number,
        top_via=f"{via.transport} {via.sent_by}".lower(),
        method=method,
    )
