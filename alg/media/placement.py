"""Where each message stands in its call (`alg.media.session` tables), the `Placement` layer.

Phase events (2xx, failure, CANCEL, BYE, 408/481), each leg's offer/answer (RFC 3264,
RFC 6337), the rollback of a failed re-INVITE/UPDATE (RFC 3261 §14.1) and the RFC 4028
session-timer bookkeeping that sets the group's lifetime.
"""

from __future__ import annotations

from typing import Final

from alg.media.actions import ChangeGroup
from alg.media.anchoring import Anchoring
from alg.media.session import (
    Call,
    CallEvent,
    Exchange,
    Leg,
    NeedMap,
    Offer,
    OfferState,
    Phase,
    SdpRole,
    Side,
    classify,
    needs_with_hold,
    step,
)
from alg.media.session_timer import min_se, session_expires, supports_timer
from alg.sdp import SessionDescription
from alg.sip import SipMessage
from fcp.types import GroupLifetimeChange

# A challenged INVITE's call waits this long for the retry with credentials (Timer B).
CHALLENGE_GRACE: Final = 32.0
_CHALLENGES: Final = frozenset({401, 407})


class Placement(Anchoring):
    def _new_call(self, msg: SipMessage, from_side: Side, now: float) -> Call | None:
        call_id, tag = msg.call_id, msg.from_.tag or ""
        key = self.tokens.key(call_id, tag)
        agent = self.pool.choose(key, now)
        if agent is None:
            return None
        call = Call(
            call_id=call_id,
            caller_tag=tag,
            caller_side=from_side,
            # per attempt: a new INVITE after the call was released must not reuse its
            # group or idempotency keys (the agent would answer for the released one)
            group_id=f"g-{key[:12].hex()}-{msg.cseq.number}",
            agent=agent,
            invite_cseq=msg.cseq.number,
            expires_at=now + self.config.timers.setup,
        )
        call.tried_agents.add(agent)
        self._calls[call_id] = call
        self._expiries.set(call_id, call.expires_at)
        self.stats["calls"] += 1
        return call

    def _challenged(self, call: Call, now: float) -> None:
        """401/407 to the initial INVITE: the caller retries it with credentials, same
        Call-ID and From tag, higher CSeq (RFC 3261 §8.1.3.5, §22.2). The call and its
        bindings wait for that retry — as rtpengine's delete-delay does — for Timer B
        (64*T1, §17.1.1.2), then expire; the challenger's early dialog is gone."""
        for tag in [t for t in call.legs if t is not None]:
            self._drop_leg(call, tag, now)
        self._expire_at(call, min(call.expires_at, now + CHALLENGE_GRACE))
        call.challenged = True
        self.stats["challenged"] += 1

    def _retried(self, call: Call, msg: SipMessage, now: float) -> None:
        """A new attempt of a challenged INVITE (see `_challenged`) takes the call over:
        its offer replaces the unanswered one; bindings of the same inside endpoints are
        kept (no new reservation, nothing released in between)."""
        if not (
            call.phase is Phase.EARLY
            and msg.from_.tag == call.caller_tag
            and msg.cseq.number > call.invite_cseq
        ):
            return
        call.invite_cseq = msg.cseq.number
        call.challenged = False
        self._expire_at(call, now + self.config.timers.setup)
        leg = call.leg(None)
        leg.oa, leg.offer = OfferState.STABLE, None
        self.stats["retried"] += 1

    def _event(self, call: Call, event: CallEvent, now: float) -> None:
        if call.move(event) is Phase.ENDED:
            self._end(call, now)

    def _track(  # noqa: PLR0917
        self,
        call: Call,
        msg: SipMessage,
        sdp: SessionDescription | None,
        from_side: Side,
        to_side: Side,
        now: float,
    ) -> NeedMap:
        """Phase and offer/answer effects of `msg`; the needs of its inside SDP."""
        tag = call.leg_tag(msg)
        leg = call.leg(tag)
        method = msg.method
        needs: NeedMap = {}
        if msg.is_request and method in ("INVITE", "UPDATE") and from_side != to_side:
            inserted = None if msg.has("session-expires") else self._interval_for(msg)
            call.timer_requests[msg.cseq.number] = (supports_timer(msg), inserted)
        if sdp is not None:
            needs = self._offer_answer(call, leg, msg, sdp, from_side, now)
        if msg.is_request:
            if method == "CANCEL":
                self._event(call, CallEvent.CANCELLED, now)
            elif method == "BYE":
                others = [leg for leg in call.live_confirmed() if leg.tag != tag]
                if others and call.phase is not Phase.EARLY:
                    self._drop_leg(call, tag, now)  # a second 2xx's dialog (§13.2.2.4)
                    self._event(call, CallEvent.BYE_OTHER, now)
                else:  # released whole: the group's counters go to the CDR first
                    self._event(call, CallEvent.BYE_LAST, now)
            return needs
        status, cseq = msg.status, msg.cseq
        initial = cseq.method == "INVITE" and cseq.number == call.invite_cseq
        if initial and status in _CHALLENGES and to_side == call.caller_side:
            self._challenged(call, now)
        elif initial and tag is not None:
            if 100 < status < 200:
                self._event(call, CallEvent.PROVISIONAL, now)
            elif status < 300:
                self._answered(call, leg, msg, now)
            elif status >= 300:
                self._event(call, CallEvent.FAILED, now)
        elif initial and status >= 300:
            self._event(call, CallEvent.FAILED, now)
        elif status in (408, 481):
            self._event(call, CallEvent.GONE, now)
        elif status >= 300 and cseq.method in ("INVITE", "UPDATE", "PRACK"):
            self._rollback(call, leg, cseq.method, cseq.number, now)
        elif 200 <= status < 300 and cseq.method in ("INVITE", "UPDATE"):
            self._refresh(call, msg, now)
        return needs

    def _offer_answer(  # noqa: PLR0917
        self,
        call: Call,
        leg: Leg,
        msg: SipMessage,
        sdp: SessionDescription,
        side: Side,
        now: float,
    ) -> NeedMap:
        role = classify(leg, msg, side)
        current = leg.current
        previous = current.needs if current is not None else None
        if role in (SdpRole.OFFER_IN_REQUEST, SdpRole.OFFER_IN_RESPONSE) and step(leg, role):
            needs = (
                needs_with_hold(sdp, offer=True, agreed_with=None, previous=previous)
                if side == "inside"
                else {}
            )
            cseq = msg.cseq
            leg.offer = Offer(side, sdp, cseq.method, cseq.number, not msg.is_request, needs)
            self._reconcile(call, now)
            return needs
        offer = leg.offer
        if role is SdpRole.ANSWER and offer is not None and step(leg, role):
            if side == "inside":
                inside, outside, offered = sdp, offer.sdp, False
            else:
                inside, outside, offered = offer.sdp, sdp, True
            needs = needs_with_hold(inside, offer=offered, agreed_with=outside, previous=previous)
            exchange = Exchange(inside, outside, needs)
            final = msg.is_request or 200 <= msg.status < 300
            leg.answered = (offer.method, offer.cseq)
            leg.offer = None
            if final:
                leg.agreed, leg.tentative = exchange, None
            else:
                leg.tentative = exchange
            self._reconcile(call, now)
            return needs if side == "inside" else {}
        if side != "inside":
            return {}
        # a repeat, or SDP outside offer/answer: anchor it on what the leg uses
        if leg.offer is not None and leg.offer.side == "inside":
            return leg.offer.needs
        if current is not None:
            return needs_with_hold(
                sdp, offer=False, agreed_with=current.outside, previous=current.needs
            )
        return needs_with_hold(sdp, offer=True, agreed_with=None, previous=None)

    def _answered(self, call: Call, leg: Leg, msg: SipMessage, now: float) -> None:
        """2xx to the initial INVITE: this leg is a dialog; unanswered forks lose."""
        leg.confirmed = True
        if leg.tentative is not None:
            leg.agreed, leg.tentative = leg.tentative, None
        first = call.phase is Phase.EARLY
        self._event(call, CallEvent.ANSWERED, now)
        if first:
            for tag in [t for t, other in call.legs.items() if not other.confirmed]:
                self._drop_leg(call, tag, now)
            self._refresh(call, msg, now)
        self._reconcile(call, now)

    def _rollback(self, call: Call, leg: Leg, method: str, cseq: int, now: float) -> None:
        """RFC 3261 §14.1: a failed re-INVITE/UPDATE leaves the session as it was."""
        offer = leg.offer
        pending = offer is not None and (offer.method, offer.cseq) == (method, cseq)
        tentative = leg.tentative is not None and leg.answered == (method, cseq)
        if not (pending or tentative):
            return
        step(leg, SdpRole.FAILED)
        leg.oa = leg.oa.__class__("stable")
        leg.offer = None
        leg.tentative = None
        self.stats["rollback"] += 1
        self._refuse_parked(call, 500, "re-INVITE failed", now)
        self._reconcile(call, now)

    def _refresh(self, call: Call, msg: SipMessage, now: float) -> None:
        """A session (re)agreed by a 2xx: renew the group lifetime (RFC 4028 §10)."""
        timers = self.config.timers
        asked = session_expires(msg)
        inserted = call.timer_requests.get(msg.cseq.number, (False, None))
        if asked is not None:
            interval = asked[0]
        elif inserted[0] and inserted[1] is not None:
            interval = inserted[1]  # we insert it into this 2xx (RFC 4028 §8.2)
        else:
            interval = None
        call.interval = interval
        lifetime = (interval if interval is not None else timers.untimed) + timers.slack
        self._expire_at(call, now + (interval if interval is not None else timers.untimed))
        if call.phase is not Phase.EARLY:
            self._event(call, CallEvent.REFRESHED, now)
        request = GroupLifetimeChange(call.group_id, lifetime, self._key(call))
        self._emit(call, ChangeGroup(call.agent, request, 0, 0.0), ("other",), now)

    def _interval_for(self, msg: SipMessage) -> int:
        return max(self.config.timers.interval, min_se(msg))
