"""Ending a dialog the ALG cannot anchor: the ACK and BYE it sends itself.

Why
---
Once a UAS has sent a 2xx to an INVITE its dialog exists (RFC 3261 §12.1.1): it
retransmits the 2xx until an ACK comes, and after 64*T1 without one it sends BYE
(§13.3.1.4). When the ALG refuses such a 2xx — no binding because the agent failed after
the 2xx arrived, forged or leaking SDP — the caller never sees it, so nobody would ACK.
The ALG then does what an SBC does (cf. RFC 5057 §5.1: a dialog that cannot be used is
ended with BYE): it ACKs the 2xx itself, standing in for the caller (§13.2.2.4: the ACK of
a 2xx is end-to-end, a new transaction along the route set), and BYEs that dialog. The
caller gets a failure final instead of the 2xx (the proxy's refusal path, §16.7 step 6);
a party that already has the dialog (a re-INVITE's sender, or both parties of a confirmed
call whose pinholes could not be opened) gets a BYE. Every BYE carries a Reason header
(RFC 3326 §2) with the SIP cause.

The same BYEs end a confirmed call whose media the agent removed behind the ALG's back
(FCP WatchEvents, RFC 5189 §2.2.3 asynchronous notification; `MediaCore.bindings_gone`),
as rtpengine with Kamailio's dialog module and commercial SBCs do on a media timeout or
an operator's kill: the dialog would otherwise live on without media until a party hangs
up or the RFC 4028 session timer runs out. `MEDIA_GONE` names the Reason of each kind.

Dialog state (`DialogEnds`, per call): the route set comes from the Record-Route of the
initial 2xx (§12.1.2), split at our own double entry (RFC 5658 §4): the entries above it
lead to the callee (reversed), those below it to the caller. Remote targets are the
latest Contacts each side sent (target refresh, §12.2). A BYE takes the next CSeq in
the space of the party it stands in for (§12.2.1.1) — the highest number that party used,
plus one, as Kamailio's dialog module does when it ends a call. Our Via on each side is
the one the proxy put on the last request it sent there, so the responses come back to
a client transaction of ours and are absorbed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Final

from alg.builders import build_dialog_request
from alg.errors import SipParseError
from alg.media.actions import OwnRequest
from alg.sip import NameAddress, SipMessage, SipUri, Via
from fcp.types import EventKind

# Why the ALG ends a confirmed call whose media the agent removed: the RFC 3326 cause (a
# SIP status) and text of its BYEs. A timer of the agent's ran out — no packet at all,
# RTP nor RTCP, within the rule's max-idle (RFC 3550 §6.2: a live endpoint keeps sending
# RTCP even while on hold), or the lifetime the ALG asked for was cut short — is a
# timeout, 408 (RFC 3261 §21.4.9), as SBCs report an RTP timeout; an operator's removal
# is the service refusing that call any longer, 503 (§21.5.4).
MEDIA_GONE: Final[dict[EventKind, tuple[int, str]]] = {
    EventKind.IDLE: (408, "media timeout"),
    EventKind.EXPIRED: (408, "media lifetime expired"),
    EventKind.REMOVED_BY_ADMIN: (503, "media removed by operator"),
}


@dataclass(frozen=True, slots=True)
class EndedByAlg:
    """The ALG ended a whole call itself, `at`: BYE to each party that has the dialog,
    with `Reason: SIP;cause=<status>;text="<reason>"` (RFC 3326 §2). The call's CDR ends
    here and says so (`alg.cdr.CallRecorder.alg_ended`): no party sends a BYE the proxy
    could see, so without this notice the record would stay open until its
    `max_duration` and be billed up to it."""

    call_id: str
    at: float
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class OurVia:
    transport: str
    sent_by: str  # host:port (IPv6 bracketed)


@dataclass(slots=True)
class DialogEnds:
    """What the ALG needs to send in-dialog requests of a call itself."""

    caller_side: str
    answers: dict[str | None, SipMessage] = field(default_factory=dict)  # leg -> 2xx
    vias: dict[str, OurVia] = field(default_factory=dict)  # side -> our Via there
    targets: dict[str, str] = field(default_factory=dict)  # side -> remote target URI
    cseq: dict[str, int] = field(default_factory=dict)  # side -> highest CSeq it sent
    torn: set[str | None] = field(default_factory=set)  # legs already ended by us

    def saw(self, msg: SipMessage, from_side: str, to_side: str, tag: str | None) -> None:
        """A message crossed sides (requests carry our Via on top)."""
        try:
            if msg.is_request:
                self.cseq[from_side] = max(self.cseq.get(from_side, 0), msg.cseq.number)
                top = msg.top_via
                self.vias[to_side] = OurVia(top.transport, _sent_by(top))
                if msg.method == "INVITE":
                    self._target(msg, from_side)
                    if msg.to.tag is None:
                        self._facing(msg, from_side, to_side)
            elif 200 <= msg.status < 300 and msg.cseq.method == "INVITE":
                self._target(msg, from_side)
                if from_side != self.caller_side:
                    self.answers.setdefault(tag, msg)
        except SipParseError:
            return

    def _facing(self, msg: SipMessage, side: str, to_side: str) -> None:
        """Our Record-Route entry facing `side`, from the initial INVITE as it crosses
        (RFC 5658 §4: the top one of our double entry faces where the request goes, the
        next one the side it came from): the Via of a request we send to `side` before
        the proxy sent any there. The 2xx's copy cannot tell: our entry facing the
        inside leaves masked, and comes back so."""
        record = msg.record_routes
        top = self.vias.get(to_side)
        if len(record) < 2 or top is None or _hostport(record[0]) != top.sent_by:
            return
        uri, hostport = record[1].sip_uri, _hostport(record[1])
        if uri is not None and hostport is not None:
            transport = (uri.param("transport") or "udp").upper()
            self.vias.setdefault(side, OurVia(transport, hostport))

    def _target(self, msg: SipMessage, side: str) -> None:
        contacts = msg.contact.contacts
        if contacts:
            self.targets[side] = str(contacts[0].uri)

    def _ours(self, tag: str | None) -> tuple[tuple[NameAddress, ...], int, int] | None:
        """The leg's Record-Route, where our entries start and how many (RFC 5658: two,
        the first facing the callee, the second, marked `r2=on`, facing the caller)."""
        answer = self.answers.get(tag)
        if answer is None:
            return None
        try:
            record = answer.record_routes
        except SipParseError:
            return None
        ours = {via.sent_by for via in self.vias.values()}
        index = next((i for i, entry in enumerate(record) if _hostport(entry) in ours), None)
        if index is None:
            return (record, -1, 0)
        width = 1
        if index + 1 < len(record):
            following = record[index + 1]
            uri = following.sip_uri
            if _hostport(following) in ours or (uri is not None and uri.has_param("r2")):
                width = 2
        return (record, index, width)

    def via(self, tag: str | None, side: str) -> OurVia | None:
        """Our Via on `side`: the one the proxy put on a request sent there, else our
        Record-Route entry that faces that side."""
        known = self.vias.get(side)
        if known is not None:
            return known
        found = self._ours(tag)
        if found is None or found[2] < 2:
            return None
        record, index, _ = found
        uri = record[index + 1 if side == self.caller_side else index].sip_uri
        if uri is None:
            return None
        transport = (uri.param("transport") or "udp").upper()
        host = f"[{uri.host}]" if uri.host_kind == "ipv6" else uri.host
        return OurVia(transport, f"{host}:{uri.port or 5060}")

    def routes(self, tag: str | None, toward: str) -> list[str] | None:
        """The route set from us toward `toward` on leg `tag`; None if unknown."""
        found = self._ours(tag)
        if found is None:
            return None
        record, index, width = found
        if index < 0:
            return None if record else []  # no Record-Route: straight to the target
        if toward == self.caller_side:
            return [entry.serialize() for entry in record[index + width :]]
        return [entry.serialize() for entry in reversed(record[:index])]


def reason_header(status: int, text: str) -> tuple[str, bytes]:
    """RFC 3326 §2: why the ALG ended the call."""
    quoted = text.replace("\\", "").replace('"', "")
    return ("Reason", f'SIP;cause={status};text="{quoted}"'.encode())


def ack_and_bye(
    ends: DialogEnds,
    answer: SipMessage,
    sender_side: str,
    tag: str | None,
    reason: tuple[str, bytes],
) -> list[OwnRequest]:
    """ACK the refused 2xx `answer` (sent from `sender_side`), then BYE its dialog —
    both as the party that sent the INVITE (From and To as in the 2xx)."""
    via = ends.via(tag, sender_side)
    target = _first_contact(answer) or ends.targets.get(sender_side)
    routes = ends.routes(tag, sender_side)
    if via is None or target is None or routes is None:
        return []
    from_, to = answer.field_value(answer.fields_named("from")[0]), _to(answer)
    call_id = answer.field_value(answer.fields_named("call-id")[0])
    inviter = "inside" if sender_side == "outside" else "outside"
    number = answer.cseq.number
    bye_cseq = max(ends.cseq.get(inviter, 0), number) + 1
    ends.cseq[inviter] = bye_cseq
    out = []
    for method, cseq, extra in (("ACK", number, ()), ("BYE", bye_cseq, (reason,))):
        data = build_dialog_request(
            method,
            request_uri=target,
            via=_via(via),
            routes=routes,
            from_=from_,
            to=to,
            call_id=call_id,
            cseq=cseq,
            extra_headers=extra,
        )
        out.append(OwnRequest(sender_side, method, data, _next_hop(routes, target)))
    return out


def bye(
    ends: DialogEnds,
    dialog: SipMessage,
    toward: str,
    tag: str | None,
    reason: tuple[str, bytes],
) -> OwnRequest | None:
    """A BYE to the party on `toward`, standing in for the other one. `dialog` is a 2xx
    of the dialog (its From and To carry the tags); None if the route is unknown."""
    via = ends.via(tag, toward)
    target = ends.targets.get(toward)
    routes = ends.routes(tag, toward)
    if via is None or target is None or routes is None:
        return None
    other = "inside" if toward == "outside" else "outside"
    from_field = dialog.field_value(dialog.fields_named("from")[0])
    to_field = _to(dialog)
    # `dialog` answers the initial INVITE: its From is the caller. Our From is the party
    # we stand in for (§12.2.1.1).
    from_, to = (from_field, to_field) if other == ends.caller_side else (to_field, from_field)
    cseq = ends.cseq.get(other, 0) + 1
    ends.cseq[other] = cseq
    data = build_dialog_request(
        "BYE",
        request_uri=target,
        via=_via(via),
        routes=routes,
        from_=from_,
        to=to,
        call_id=dialog.field_value(dialog.fields_named("call-id")[0]),
        cseq=cseq,
        extra_headers=(reason,),
    )
    return OwnRequest(toward, "BYE", data, _next_hop(routes, target))


def _to(msg: SipMessage) -> bytes:
    return msg.field_value(msg.fields_named("to")[0])


def _first_contact(msg: SipMessage) -> str | None:
    try:
        contacts = msg.contact.contacts
    except SipParseError:
        return None
    return str(contacts[0].uri) if contacts else None


def _via(via: OurVia) -> str:
    return f"SIP/2.0/{via.transport} {via.sent_by};branch=z9hG4bK{secrets.token_hex(8)};rport"


def _next_hop(routes: list[str], target: str) -> str:
    if not routes:
        return target
    first = routes[0]
    start, end = first.find("<"), first.find(">")
    return first[start + 1 : end] if 0 <= start < end else first


def _sent_by(via: Via) -> str:
    host = f"[{via.host}]" if via.host_kind == "ipv6" else via.host
    return f"{host}:{via.port or 5060}"


def _hostport(entry: NameAddress) -> str | None:
    uri = entry.uri
    if not isinstance(uri, SipUri):
        return None
    host = f"[{uri.host}]" if uri.host_kind == "ipv6" else uri.host
    return f"{host}:{uri.port or 5060}"
