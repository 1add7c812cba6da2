"""Per-call media state: the call's phase, each (early) dialog's offer/answer state, and
the bindings and rules they use. Literal tables; no I/O, no clock (callers pass `now`).

Theory of operation
-------------------
A *call* is what one initial INVITE starts (Call-ID + the caller's From tag); it owns one
FCP group on one agent (RFC 5189 §2.1.9 "policy rule group": released as a whole). Its
*legs* are the dialogs the INVITE creates, one per To tag (RFC 3261 §12.1; a forking proxy
downstream makes several early dialogs, §16.7 step 5, and possibly several 2xx,
§13.2.2.4). Leg `None` holds the INVITE's offer until responses bring tags; a new tag
copies it. Every leg runs its own offer/answer (RFC 3264) on `OA_TABLE`:

* `classify` places each SDP per RFC 6337 §2 / RFC 3261 §13.2.1, RFC 3262 §5, RFC 3311
  §5.1: INVITE/UPDATE/PRACK requests offer, the responses to the offering transaction
  answer (a reliable or unreliable 1xx and the 2xx: RFC 6337 §3.1 says they repeat one
  answer), an INVITE without SDP gets its offer in the 2xx (or a reliable 1xx) and the
  answer in the ACK (or PRACK).
* An answer makes the exchange *tentative* (answer in a 1xx, early media) or *agreed*
  (answer in the final success of its transaction, or in ACK/PRACK). Rules follow the
  answer at once — early media needs them — but rules of the previous exchange are only
  removed when the new one is agreed and all its rules are enabled (make before break).
* A failed offering transaction (re-INVITE/UPDATE answered >= 300) rolls the leg back to
  its last agreed exchange (RFC 3261 §14.1: the session is unchanged); bindings and rules
  made for the failed offer are released.

Bindings are per inside endpoint (`Need`, endpoint-independent mapping, RFC 4787 REQ-1):
legs share them; a binding no leg still references is freed.

The call's phase follows `CALL_TABLE`; `ENDED` releases the group (RFC 5189 GLC with
lifetime 0): BYE, CANCEL, a final failure of the INVITE, 408/481 to an in-dialog request
(RFC 5057 §5.1), or session-timer expiry (RFC 4028 §10).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from alg.media.streams import Need, StreamNeeds, all_needs, peer_of
from alg.sdp import SessionDescription
from alg.sip import SipMessage
from fcp.types import Binding, IPAddress

Side = Literal["inside", "outside"]


class Phase(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    ENDED = "ended"


class CallEvent(enum.Enum):
    PROVISIONAL = "provisional"  # 1xx to the initial INVITE
    ANSWERED = "answered"  # 2xx to the initial INVITE (any leg)
    FAILED = "failed"  # final >= 300 to the initial INVITE
    CANCELLED = "cancelled"  # CANCEL crossed (RFC 3261 §9)
    BYE_LAST = "bye_last"  # BYE of the last live dialog
    BYE_OTHER = "bye_other"  # BYE of one of several dialogs (a second 2xx, §13.2.2.4)
    GONE = "gone"  # 408/481 to an in-dialog request (RFC 5057 §5.1)
    REFRESHED = "refreshed"  # 2xx to a re-INVITE/UPDATE (RFC 4028 §10)
    EXPIRED = "expired"  # no refresh in time, or never answered


CALL_TABLE: Final[dict[tuple[Phase, CallEvent], Phase]] = {
    (Phase.EARLY, CallEvent.PROVISIONAL): Phase.EARLY,
    (Phase.EARLY, CallEvent.ANSWERED): Phase.CONFIRMED,
    (Phase.EARLY, CallEvent.FAILED): Phase.ENDED,
    (Phase.EARLY, CallEvent.CANCELLED): Phase.ENDED,
    (Phase.EARLY, CallEvent.BYE_LAST): Phase.ENDED,  # RFC 3261 §15: BYE in an early dialog
    (Phase.EARLY, CallEvent.BYE_OTHER): Phase.EARLY,
    (Phase.EARLY, CallEvent.GONE): Phase.ENDED,
    (Phase.EARLY, CallEvent.EXPIRED): Phase.ENDED,
    (Phase.EARLY, CallEvent.REFRESHED): Phase.EARLY,
    (Phase.CONFIRMED, CallEvent.PROVISIONAL): Phase.CONFIRMED,
    (Phase.CONFIRMED, CallEvent.ANSWERED): Phase.CONFIRMED,  # another fork's 2xx
    (Phase.CONFIRMED, CallEvent.FAILED): Phase.CONFIRMED,  # late final of a lost branch
    (Phase.CONFIRMED, CallEvent.CANCELLED): Phase.CONFIRMED,  # §9.1: too late to cancel
    (Phase.CONFIRMED, CallEvent.BYE_LAST): Phase.ENDED,
    (Phase.CONFIRMED, CallEvent.BYE_OTHER): Phase.CONFIRMED,
    (Phase.CONFIRMED, CallEvent.GONE): Phase.ENDED,
    (Phase.CONFIRMED, CallEvent.EXPIRED): Phase.ENDED,
    (Phase.CONFIRMED, CallEvent.REFRESHED): Phase.CONFIRMED,
}


class OfferState(enum.Enum):
    STABLE = "stable"  # no offer outstanding
    OFFERED_IN_REQUEST = "offered_in_request"  # INVITE/UPDATE/PRACK carried the offer
    OFFERED_IN_RESPONSE = "offered_in_response"  # 2xx/reliable 1xx carried it (late offer)


class SdpRole(enum.Enum):
    OFFER_IN_REQUEST = "offer_in_request"
    OFFER_IN_RESPONSE = "offer_in_response"
    ANSWER = "answer"
    REPEAT = "repeat"  # the same answer or offer again (1xx then 2xx, retransmission)
    FAILED = "failed"  # the offering transaction failed: roll back
    NONE = "none"  # SDP that is no offer/answer (OPTIONS 200, MESSAGE ...)


OA_TABLE: Final[dict[tuple[OfferState, SdpRole], OfferState]] = {
    (OfferState.STABLE, SdpRole.OFFER_IN_REQUEST): OfferState.OFFERED_IN_REQUEST,
    (OfferState.STABLE, SdpRole.OFFER_IN_RESPONSE): OfferState.OFFERED_IN_RESPONSE,
    (OfferState.STABLE, SdpRole.REPEAT): OfferState.STABLE,
    (OfferState.OFFERED_IN_REQUEST, SdpRole.ANSWER): OfferState.STABLE,
    (OfferState.OFFERED_IN_REQUEST, SdpRole.REPEAT): OfferState.OFFERED_IN_REQUEST,
    (OfferState.OFFERED_IN_REQUEST, SdpRole.FAILED): OfferState.STABLE,
    # glare (RFC 3261 §14.2): the UAs answer 491; the newer offer replaces ours
    (OfferState.OFFERED_IN_REQUEST, SdpRole.OFFER_IN_REQUEST): OfferState.OFFERED_IN_REQUEST,
    (OfferState.OFFERED_IN_RESPONSE, SdpRole.ANSWER): OfferState.STABLE,
    (OfferState.OFFERED_IN_RESPONSE, SdpRole.REPEAT): OfferState.OFFERED_IN_RESPONSE,
    (OfferState.OFFERED_IN_RESPONSE, SdpRole.FAILED): OfferState.STABLE,
    (OfferState.OFFERED_IN_RESPONSE, SdpRole.OFFER_IN_REQUEST): OfferState.OFFERED_IN_REQUEST,
}

OFFERING_METHODS: Final = frozenset({"INVITE", "UPDATE", "PRACK"})


NeedMap = Mapping[int, StreamNeeds]


@dataclass(frozen=True, slots=True)
class Offer:
    side: Side
    sdp: SessionDescription
    method: str
    cseq: int
    in_response: bool
    needs: NeedMap  # an inside offer's bindings (held streams keep theirs); else empty


@dataclass(frozen=True, slots=True)
class Exchange:
    """One completed offer/answer: the inside party's SDP, the outside party's, and the
    bindings the inside streams use (computed once: held streams carry theirs over)."""

    inside: SessionDescription
    outside: SessionDescription
    needs: NeedMap

    def peer(self, index: int) -> IPAddress | None:
        return peer_of(self.outside, index)


def needs_with_hold(
    sdp: SessionDescription,
    *,
    offer: bool,
    agreed_with: SessionDescription | None,
    previous: NeedMap | None,
) -> dict[int, StreamNeeds]:
    """`all_needs`, plus: a stream put on the hold address (RFC 3264 §8.4) keeps the
    bindings it had — hold keeps bindings and opens nothing new."""
    needs = all_needs(sdp, offer=offer, agreed_with=agreed_with)
    if previous:
        for index, kept in previous.items():
            if index in needs or index >= len(sdp.media) or sdp.is_disabled(index):
                continue
            connection = sdp.effective_connection(index)
            if connection is not None and connection.is_hold_address:
                needs[index] = kept
    return needs


@dataclass(frozen=True, slots=True)
class RuleKey:
    index: int  # m-line
    need: Need
    peer: IPAddress

    def __hash__(self) -> int:
        # see Need.__hash__: consistent with __eq__, without ipaddress's interpreted hash
        return hash((self.index, self.need.port, self.need.block_size))


class Slot(enum.Enum):
    PENDING = "pending"
    READY = "ready"


@dataclass(slots=True)
class BindingSlot:
    need: Need
    state: Slot = Slot.PENDING
    binding: Binding | None = None


@dataclass(slots=True)
class RuleSlot:
    state: Slot = Slot.PENDING
    rule_id: str | None = None


@dataclass(slots=True)
class Leg:
    tag: str | None
    oa: OfferState = OfferState.STABLE
    offer: Offer | None = None
    agreed: Exchange | None = None
    tentative: Exchange | None = None
    answered: tuple[str, int] | None = None  # (method, cseq) whose offer was answered
    rules: dict[RuleKey, RuleSlot] = field(default_factory=dict)
    confirmed: bool = False

    def copy_as(self, tag: str) -> Leg:
        return Leg(tag, self.oa, self.offer, self.agreed, self.tentative, self.answered)

    @property
    def current(self) -> Exchange | None:
        return self.tentative or self.agreed


@dataclass(slots=True)
class Call:
    call_id: str
    caller_tag: str
    caller_side: Side
    group_id: str
    agent: str
    invite_cseq: int
    expires_at: float
    phase: Phase = Phase.EARLY
    legs: dict[str | None, Leg] = field(default_factory=dict)
    bindings: dict[Need, BindingSlot] = field(default_factory=dict)
    tried_agents: set[str] = field(default_factory=set)
    interval: int | None = None  # RFC 4028 session interval, once agreed
    timer_requests: dict[int, tuple[bool, int | None]] = field(default_factory=dict)
    ops: int = 0  # idempotency key sequence
    challenged: bool = False  # a 401/407 answered it: waiting for the retry (placement)

    def leg_tag(self, msg: SipMessage) -> str | None:
        """The callee-side tag of the dialog `msg` belongs to."""
        from_tag = msg.from_.tag
        return msg.to.tag if from_tag == self.caller_tag else from_tag

    def leg(self, tag: str | None) -> Leg:
        leg = self.legs.get(tag)
        if leg is None:
            template = self.legs.get(None)
            leg = template.copy_as(tag) if template is not None and tag is not None else Leg(tag)
            self.legs[tag] = leg
        return leg

    def move(self, event: CallEvent) -> Phase:
        self.phase = CALL_TABLE[(self.phase, event)]
        return self.phase

    def live_confirmed(self) -> list[Leg]:
        return [leg for leg in self.legs.values() if leg.confirmed]

    def referenced_needs(self) -> set[Need]:
        """Needs some leg still uses: its agreed or tentative exchange, or its pending
        inside offer."""
        used: set[Need] = set()
        for leg in self.legs.values():
            maps = [ex.needs for ex in (leg.agreed, leg.tentative) if ex is not None]
            if leg.offer is not None:
                maps.append(leg.offer.needs)
            for need_map in maps:
                for needs in need_map.values():
                    used.update(needs)
            for key in leg.rules:
                used.add(key.need)
        return used


def classify(leg: Leg, msg: SipMessage, from_side: Side) -> SdpRole:
    """Where this SDP stands in the leg's offer/answer (RFC 6337 §2, table 1)."""
    offer = leg.offer
    if msg.is_request:
        method = msg.method
        if method == "ACK":
            if offer is not None and offer.in_response and offer.side != from_side:
                return SdpRole.ANSWER  # late offer in the 2xx, answer in ACK (§13.2.1)
            return SdpRole.NONE
        if method == "PRACK" and offer is not None and offer.in_response:
            return SdpRole.ANSWER if offer.side != from_side else SdpRole.REPEAT
        if method in OFFERING_METHODS:
            if offer is not None and offer.side == from_side and offer.cseq == msg.cseq.number:
                return SdpRole.REPEAT  # a retransmission
            return SdpRole.OFFER_IN_REQUEST
        return SdpRole.NONE
    cseq = msg.cseq
    if cseq.method not in OFFERING_METHODS:
        return SdpRole.NONE
    if (
        offer is not None
        and not offer.in_response
        and (offer.method, offer.cseq)
        == (
            cseq.method,
            cseq.number,
        )
    ):
        return SdpRole.ANSWER if offer.side != from_side else SdpRole.NONE
    if leg.answered == (cseq.method, cseq.number):
        return SdpRole.REPEAT  # RFC 6337 §3.1: the 2xx repeats the 1xx's answer
    if offer is not None and offer.in_response and offer.side == from_side:
        return SdpRole.REPEAT  # the late offer again (reliable 1xx then 2xx)
    if cseq.method == "INVITE":
        return SdpRole.OFFER_IN_RESPONSE  # INVITE without SDP: offer in 1xx/2xx
    return SdpRole.NONE


def step(leg: Leg, role: SdpRole) -> bool:
    """Move the leg's offer/answer state; False if the role is not allowed now (the SDP
    is then treated as no offer/answer: rewritten, never acted upon)."""
    following = OA_TABLE.get((leg.oa, role))
    if following is None:
        return False
    leg.oa = following
    return True
