"""`MediaCore`: the ALG's media anchoring, sans-I/O — the seam the proxy core calls.

Theory of operation
-------------------
The proxy hands over every message that crosses sides (`crossing`), and every datagram
from the outside before parsing it (`inbound`). For each message the core

1. tracks the call (`alg.media.placement` over the `alg.media.session` tables): phase
   events (2xx, failure, CANCEL, BYE, 408/481), the leg's offer/answer, RFC 4028;
2. for an SDP from the inside: checks it is not forged (`antiforgery`, else 488), and
   makes sure every stream has its binding (`alg.media.anchoring`). Missing bindings
   become `Reserve` actions and the message is *parked*; it comes back from
   `on_result`/`handle_timer` as `Ready` (rewritten) or `Refused` (503: no agent could
   provide). The event loop never waits;
3. after an answer, enables the rules that restrict each pinhole to the peer (one per
   early dialog), removes superseded ones once the new ones are in (make before break),
   frees bindings nobody uses (e.g. the rtcp-mux fallback), and releases the whole group
   when the call ends (`alg.media.ledger`; its counters go to the CDR, `record`);
4. rewrites what goes out (`alg.media.rewrite`): SDP anchored, topology hidden, and a
   final scan guarantees no inside address leaves (else 500, nothing forwarded);
5. when a 2xx to an INVITE cannot be forwarded, or a confirmed call cannot get its
   pinholes or the agent says its media is gone (`bindings_gone`: idle, expired,
   removed by an operator), ends the dialogs the ALG itself (`alg.media.teardown`): ACK
   and BYE to the 2xx's sender, BYE to a party that already has the dialog;
   `take_requests()` hands them to the proxy, and `take_endings()` tells the CDR of an
   answered call it ended when and why (no party's BYE will).

Every parked message is resolved exactly once: `on_result` and `handle_timer` return
what they let go or refused, and whatever a crossing refused (a BYE, CANCEL or failure
ends the call with messages of it still parked) waits in `take_resolutions()`. Nothing
the core keeps outlives its call: `footprint()` counts it, and it returns to zero once
every call is over and `now` is past `get_timer()`.

Agent operations retry with the same idempotency key, time out at their deadline, feed
the agent's circuit breaker, and a new call fails over to another agent
(`alg.media.agents`). Everything takes `now`; `get_timer()` says when to call
`handle_timer(now)`.
"""

from __future__ import annotations

import logging

from alg.errors import AlgError, SdpParseError, SipParseError
from alg.media.actions import (
    AgentAction,
    AgentResult,
    Failed,
    Forward,
    MediaRecord,
    Outcome,
    OwnRequest,
    Parked,
    Reject,
    Release,
    ReleaseReport,
    Resolution,
)
from alg.media.agents import AgentPool, GroupGone, counts_against_agent, retryable
from alg.media.antiforgery import check_media_source, registered_sources
from alg.media.ledger import MediaConfig, Op, ParkedMessage
from alg.media.placement import Placement
from alg.media.record import failed_release_record, media_record
from alg.media.rewrite import TopologyLeak, restore_inbound, sdp_of
from alg.media.session import BindingSlot, Call, CallEvent, NeedMap, Phase, Side, Slot
from alg.media.streams import Need
from alg.media.teardown import (
    MEDIA_GONE,
    DialogEnds,
    EndedByAlg,
    ack_and_bye,
    bye,
    reason_header,
)
from alg.sip import SipMessage, parse_message
from fcp.errors import FcpError, Reason
from fcp.types import Binding, Rule

__all__ = ["MediaConfig", "MediaCore"]

log = logging.getLogger("sipwall.alg.media")


class MediaCore(Placement):
    def __init__(self, config: MediaConfig, pool: AgentPool) -> None:
        super().__init__(config, pool)

    # ---- the seam ----------------------------------------------------------------------

    def inbound(self, data: bytes, now: float) -> bytes:
        """A datagram from the outside, before the proxy parses it: masks undone."""
        try:
            return restore_inbound(data, self.tokens, self.vias, now)
        except SipParseError:
            return data  # the proxy answers or drops it as it would anyway

    def crossing(
        self, data: bytes, *, from_side: Side, to_side: Side, source_host: str, now: float
    ) -> Outcome:
        """A message the proxy is about to send to `to_side` whose content came from
        `from_side` (equal sides: the proxy made it, e.g. 487 or 408: state only)."""
        msg = parse_message(data)
        outward = from_side == "inside" and to_side == "outside"
        try:
            sdp = sdp_of(msg) if from_side != to_side else None
        except SdpParseError:
            if outward:
                return self._refuse(
                    None, msg, from_side, 488, "Not Acceptable Here (unreadable SDP)", now
                )
            sdp = None
        call = self._calls.get(msg.call_id)
        if call is not None and _is_initial_invite(msg):
            self._retried(call, msg, now)
        if call is None and self._was_ended(msg.call_id, now):
            if not msg.is_request and sdp is not None:
                self.stats["reject.ended"] += 1  # a late copy of a 2xx we refused
                return Reject(500, "Server Internal Error (call ended)")
        elif call is None and (_is_initial_invite(msg) or (outward and sdp is not None)):
            call = self._new_call(msg, from_side, now)
            if call is None:
                self.stats["reject.no_agent"] += 1
                return Reject(503, "Service Unavailable (no media agent)")
            self._ends[call.call_id] = DialogEnds(from_side)
        needs: NeedMap = {}
        if call is not None:
            ends = self._ends.get(call.call_id)
            if ends is not None and from_side != to_side:
                ends.saw(msg, from_side, to_side, call.leg_tag(msg))
            if sdp is not None and from_side == "inside":
                forged = check_media_source(
                    sdp,
                    source_host,
                    trusted=self.config.trusted,
                    registered=lambda: self._registered(msg, now),
                )
                if forged is not None:
                    self.stats["reject.forged"] += 1
                    if _is_initial_invite(msg) and not call.bindings:
                        self._calls.pop(call.call_id, None)
                        self._expiries.discard(call.call_id)
                        self._ends.pop(call.call_id, None)
                    return self._refuse(call, msg, from_side, 488, forged.reason, now)
            needs = self._track(call, msg, sdp, from_side, to_side, now)
            if outward and sdp is not None:
                missing = self._ensure_bindings(call, needs, now)
                if missing:
                    ticket = next(self._numbers)
                    self._parked[ticket] = ParkedMessage(
                        ticket, call.call_id, msg, sdp, needs, from_side, to_side
                    )
                    self.stats["parked"] += 1
                    return Parked(ticket)
        try:
            return Forward(self._render(msg, call, sdp, needs, from_side, to_side, now))
        except (TopologyLeak, AlgError) as exc:
            self.stats["reject.leak"] += 1
            log.warning("refusing to forward: %s", exc)
            return self._refuse(call, msg, from_side, 500, "Server Internal Error (topology)", now)

    def prepare_parked(self, now: float) -> None:
        """Make the header edits of every parked message now (`Ledger._edit_headers`),
        so that only its SDP is left to do when the agent answers. The shell calls this
        once it has sent the agent the actions (an RPC takes ~1 ms, during which the event
        loop would otherwise wait): the parked INVITE then leaves sooner after the answer,
        which shortens the setup delay anchoring adds. A message whose edits fail is left
        as it was: its resolution makes them again, and refuses it as before."""
        for parked in self._parked.values():
            if parked.prepared is not None:
                continue
            try:
                parked.prepared = self._edit_headers(
                    parked.msg,
                    self._calls.get(parked.call_id),
                    parked.from_side,
                    parked.to_side,
                    now,
                )
            except AlgError:
                continue
            self.stats["prepared"] += 1

    def on_result(self, result: AgentResult, now: float) -> list[Resolution]:
        """An agent's answer; the parked messages it lets go or refuses (with those a
        crossing left in the outbox, `take_resolutions`)."""
        op = self._ops.pop(result.token, None)
        if op is None or op.done:
            return self.take_resolutions()
        if isinstance(result, Failed):
            self._op_failed(op, result.error, now)
            return self.take_resolutions()
        op.done = True
        self.pool.succeeded(op.action.agent)
        value = result.value
        if isinstance(value, ReleaseReport):
            self._records.append(media_record(op.call_id, op.action.agent, value))
            return self.take_resolutions()
        call = self._calls.get(op.call_id)
        if isinstance(value, Binding):
            self._reserved(call, op, value, now)
        elif isinstance(value, Rule):
            self._enabled(call, op, value, now)
        return self.take_resolutions()

    def get_timer(self) -> float | None:
        # Asked after every message: the calls' expiries come from a heap (O(1)); the
        # operations in flight are few (an RPC each, for its deadline).
        expiry = self._expiries.next()
        times = [] if expiry is None else [expiry]
        times.extend(
            op.retry_at if op.retry_at is not None else op.action.deadline
            for op in self._ops.values()
            if not op.done
        )
        forgetting = self._next_forgetting()
        if forgetting is not None:
            times.append(forgetting)
        return min(times, default=None)

    def handle_timer(self, now: float) -> list[Resolution]:
        self._forget_ended(now)
        for token, op in list(self._ops.items()):
            if op.done:
                self._ops.pop(token, None)
            elif op.retry_at is not None and op.retry_at <= now:
                self._ops.pop(token, None)
                self._retry(op, now)
            elif op.retry_at is None and op.action.deadline <= now:
                self._ops.pop(token, None)
                self.stats["agent.timeout"] += 1
                error = FcpError(Reason.NETWORK_FAILURE, "deadline exceeded")
                self._op_failed(op, error, now)
        for call_id in self._expiries.due(now):
            call = self._calls.get(call_id)
            if call is None:
                continue
            self.stats["expired"] += 1
            call.move(CallEvent.EXPIRED)
            self._end(call, now)
        return self.take_resolutions()

    def take_actions(self) -> list[AgentAction]:
        actions, self._actions = self._actions, []
        return actions

    def take_records(self) -> list[MediaRecord]:
        records, self._records = self._records, []
        return records

    def take_resolutions(self) -> list[Resolution]:
        """Parked messages let go or refused and not yet handed out: `on_result` and
        `handle_timer` return them; after `crossing` the caller takes them here (a BYE,
        CANCEL or failure crossing ends its call, refusing whatever of it was parked)."""
        resolutions, self._resolutions = self._resolutions, []
        return resolutions

    def take_endings(self) -> list[EndedByAlg]:
        """Calls the ALG ended itself since the last call (for their CDRs): each one's
        release is then pending, and its record follows (`take_records`)."""
        endings, self._endings = self._endings, []
        return endings

    def release_pending(self, call_id: str) -> bool:
        """A record of `call_id` is still to come (`take_records`): the call is going on,
        or the release of its group is in flight (its CDR waits, `alg.call_events`). A
        call waiting for the retry of its challenged INVITE has no record to come for the
        attempt that was challenged: its bindings go to the retry's record, or are
        released unbilled when no retry comes."""
        call = self._calls.get(call_id)
        if call is not None and not call.challenged:
            return True
        return any(
            op.call_id == call_id and op.purpose[0] == "release" and not op.done
            for op in self._ops.values()
        )

    def take_requests(self) -> list[OwnRequest]:
        """ACKs and BYEs the proxy must send for the core (`alg.media.teardown`)."""
        requests, self._requests = self._requests, []
        return requests

    def call(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def bindings_gone(self, gone: GroupGone, now: float) -> Call | None:
        """The agent removed part of a call's group (FCP WatchEvents: EXPIRED, IDLE,
        REMOVED_BY_ADMIN; RFC 5189 §2.2.3): that media no longer flows. The call it
        belongs to, if any; the BYEs it causes wait in `take_requests()`.

        * A group the ALG no longer knows (released, or an attempt it replaced) and a
          binding or rule the call no longer holds (superseded by make before break, a
          freed binding, a lost fork's rule: an expiry racing our own removal) change
          nothing: counted only.
        * A confirmed call ends as when its pinholes cannot be opened (`_tear_down`):
          BYE to both parties of each dialog that used what is gone — a binding is every
          dialog's, a rule its dialog's — with `Reason: SIP;cause=...` (RFC 3326 §2) as
          `MEDIA_GONE` says: 408 "media timeout" (IDLE), 408 "media lifetime expired"
          (EXPIRED), 503 "media removed by operator". The CDR says the ALG ended it and
          why, and the group is released (the agent answers NOT_FOUND for what it already
          removed: an empty report, `alg.media.perform`).
        * Before the 2xx nothing is ended (counted `agent.gone.kept`): an early dialog
          is the caller's to CANCEL (RFC 3261 §9.1), and ending it for them needs the
          proxy's INVITE server transaction (a final to the caller, CANCEL downstream,
          §16.10), which this core does not hold. A pinhole of it that went idle (no
          early media while it rang) is opened again (`_reopen`); anything else goes on
          without that media until its signalling or its timers end the call."""
        call = next(
            (
                c
                for c in self._calls.values()
                if c.group_id == gone.group_id and c.agent == gone.agent
            ),
            None,
        )
        if call is None:
            self.stats["agent.gone.no_call"] += 1  # e.g. a lifetime ending after the hangup
            return None
        self.stats[f"agent.gone.{gone.kind.value}"] += 1
        log.warning("call %s: agent %s: %s", call.call_id, gone.agent, gone)
        tags = _legs_using(call, gone)
        if tags is None:
            self.stats["agent.gone.stale"] += 1
            return call
        cause = MEDIA_GONE.get(gone.kind)
        confirmed = [tag for tag in tags if call.legs[tag].confirmed]
        if cause is None or call.phase is not Phase.CONFIRMED or not confirmed:
            self.stats["agent.gone.kept"] += 1
            if gone.rule_id is not None and call.phase is Phase.EARLY:
                self._reopen(call, gone.rule_id, now)
            return call
        self.stats["teardown.media_gone"] += 1
        self._tear_down(call, confirmed, *cause, now)
        return call

    @property
    def call_count(self) -> int:
        return len(self._calls)

    @property
    def parked_count(self) -> int:
        """Messages waiting for the agent's answers."""
        return len(self._parked)

    # ---- agent failures ----------------------------------------------------------------

    def _op_failed(self, op: Op, error: FcpError, now: float) -> None:
        agent = op.action.agent
        if counts_against_agent(error):
            self.pool.failed(agent, now)
        if retryable(error) and op.attempts < self.pool.settings.attempts:
            op.retry_at = now + self.pool.retry_delay(op.attempts + 1)
            self._ops[op.action.token] = op
            return
        op.done = True
        self.stats[f"agent.failed.{op.purpose[0]}"] += 1
        if op.purpose[0] == "release":  # the CDR waiting for it says why it has no counters
            self._records.append(failed_release_record(op.call_id, agent, error))
            return
        call = self._calls.get(op.call_id)
        if call is None or agent != call.agent:
            return
        if op.purpose[0] == "enable":
            self._enable_failed(call, op, now)
            return
        if op.purpose[0] != "reserve":
            return
        fresh = not any(slot.state is Slot.READY for slot in call.bindings.values())
        if fresh and self._fail_over(call, now):
            return
        need = op.purpose[1]
        self._refuse_parked(call, 503, "Service Unavailable (media)", now, need)
        if call.call_id not in self._calls:
            return  # a refused 2xx ended the call
        if call.phase is Phase.EARLY and all(leg.current is None for leg in call.legs.values()):
            call.move(CallEvent.FAILED)
            self._end(call, now)
            return
        for leg in call.legs.values():
            if leg.offer is not None and leg.offer.side == "inside":
                self._rollback(call, leg, leg.offer.method, leg.offer.cseq, now)
        if isinstance(need, Need):
            call.bindings.pop(need, None)

    def _enable_failed(self, call: Call, op: Op, now: float) -> None:
        """A pinhole of a confirmed dialog could not be opened: that call has no media and
        never will, so the ALG ends it (BYE both ways, RFC 5057 §5.1 spirit). Before the 2xx
        (early media) nothing is ended: the 2xx enables the rules again."""
        tag = op.purpose[1]
        if not isinstance(tag, str):
            return
        leg = call.legs.get(tag)
        if leg is None or not leg.confirmed or call.phase is not Phase.CONFIRMED:
            return
        self.stats["teardown.no_pinhole"] += 1
        self._tear_down(call, [tag], 503, "media anchoring failed", now)

    def _reopen(self, call: Call, rule_id: str, now: float) -> None:
        """An early dialog's pinhole is gone (idle while it rang with no early media,
        `[media] media_timeout`): forget it and open it again at once, so that early
        media starting later, and the answer, still get through; the agent removed it, so
        nothing is left to release."""
        for leg in call.legs.values():
            for key in [k for k, slot in leg.rules.items() if slot.rule_id == rule_id]:
                del leg.rules[key]
        self.stats["agent.gone.reopened"] += 1
        self._reconcile(call, now)

    def _tear_down(
        self, call: Call, tags: list[str | None], status: int, text: str, now: float
    ) -> None:
        """End the confirmed dialogs `tags` of `call` (`alg.media.teardown`): a BYE to
        each party, with `Reason: SIP;cause=<status>;text="<text>"` (RFC 3326 §2). The
        call ends with its last dialog (its CDR says the ALG ended it, `take_endings`);
        while another 2xx's dialog lives (RFC 3261 §13.2.2.4) only these are dropped."""
        ends = self._ends.get(call.call_id)
        reason = reason_header(status, text)
        for tag in tags:
            answer = ends.answers.get(tag) if ends is not None else None
            if ends is None or answer is None or tag in ends.torn:
                continue
            ends.torn.add(tag)
            for side in ("inside", "outside"):
                request = bye(ends, answer, side, tag, reason)
                if request is not None:
                    self._send(request, now)
        self._remember_ended(call.call_id, now)
        if any(leg.tag not in tags for leg in call.live_confirmed()):
            for tag in tags:
                self._drop_leg(call, tag, now)
        else:
            call.move(CallEvent.BYE_LAST)
            self._ended_by_us(call, status, text, now)

    def _fail_over(self, call: Call, now: float) -> bool:
        """A new call with nothing reserved yet moves to another healthy agent."""
        agent = self.pool.choose(
            self.tokens.key(call.call_id, call.caller_tag), now, frozenset(call.tried_agents)
        )
        if agent is None:
            return False
        self.stats["agent.failover"] += 1
        # forgotten, not kept as done: an answer to one of them is then ignored like any
        # unknown token, and nothing is left behind if the old agent never answers
        for token in [t for t, op in self._ops.items() if op.call_id == call.call_id]:
            del self._ops[token]
        old = call.agent
        token = next(self._numbers)  # whatever the old agent did reserve: let it go
        self._actions.append(
            Release(old, call.group_id, token, now + self.pool.settings.deadline, self._key(call))
        )
        call.agent = agent
        call.tried_agents.add(agent)
        for need in list(call.bindings):
            call.bindings[need] = BindingSlot(need)
            self._reserve(call, need, now)
        return True

    # ---- refusing, and ending dialogs ----------------------------------------------------

    def _refuse(  # noqa: PLR0917
        self,
        call: Call | None,
        msg: SipMessage,
        from_side: Side,
        status: int,
        reason: str,
        now: float,
    ) -> Reject:
        """Refuse `msg`; a refused 2xx to an INVITE also ends its dialog."""
        if call is not None and _is_invite_2xx(msg):
            self._answer_refused(call, msg, from_side, status, reason, now)
        return Reject(status, reason)

    def _answer_refused(  # noqa: PLR0917
        self, call: Call, msg: SipMessage, from_side: Side, status: int, reason: str, now: float
    ) -> None:
        """The 2xx `msg` from `from_side` is not forwarded (see `alg.media.teardown`): ACK
        it and BYE its sender; its caller gets the failure final from the proxy; a party
        that already has the dialog (a re-INVITE) gets a BYE too."""
        ends = self._ends.get(call.call_id)
        tag = call.leg_tag(msg)
        if ends is None or tag in ends.torn:
            return
        ends.torn.add(tag)
        ends.answers.setdefault(tag, msg)
        header = reason_header(status, reason)
        for request in ack_and_bye(ends, msg, from_side, tag, header):
            self._send(request, now)
        initial = msg.cseq.number == call.invite_cseq and msg.to.tag is not None
        dialog = ends.answers.get(tag)
        if not initial and dialog is not None:  # a re-INVITE: the other side has it too
            other: Side = "inside" if from_side == "outside" else "outside"
            farewell = bye(ends, dialog, other, tag, header)
            if farewell is not None:
                self._send(farewell, now)
        self.stats["teardown.refused_2xx"] += 1
        self._remember_ended(call.call_id, now)
        others = [leg for leg in call.live_confirmed() if leg.tag != tag]
        if others and initial:
            self._drop_leg(call, tag, now)  # another fork's dialog goes on (§13.2.2.4)
        else:
            # an answered call's CDR ends here; an unanswered one's ends at the failure
            # final its caller gets instead of this 2xx (the recorder tells them apart)
            call.move(CallEvent.BYE_LAST)
            self._ended_by_us(call, status, reason, now)

    def _send(self, request: OwnRequest, now: float) -> None:
        """Queue one of our requests; what goes outside is masked like everything else."""
        data = request.data
        if request.side == "outside":
            try:
                data = self._render(parse_message(data), None, None, {}, "inside", "outside", now)
            except (TopologyLeak, AlgError) as exc:
                log.warning("not sending our %s: %s", request.method, exc)
                return
        self._requests.append(OwnRequest(request.side, request.method, data, request.next_hop))
        self.stats[f"teardown.{request.method.lower()}"] += 1

    def _was_ended(self, call_id: str, now: float) -> bool:
        until = self._ended.get(call_id)
        if until is None:
            return False
        if until <= now:
            del self._ended[call_id]
            return False
        return True

    def _registered(self, msg: SipMessage, now: float) -> set[str]:
        registrations = self.config.registrations
        if registrations is None:
            return set()
        return registered_sources(registrations, msg, now)


def _legs_using(call: Call, gone: GroupGone) -> list[str | None] | None:
    """The dialogs of `call` that used what `gone` names (a rule: its leg; a binding, or
    the whole group: every leg); None if the call no longer holds it."""
    if gone.rule_id is not None:
        tags = [
            tag
            for tag, leg in call.legs.items()
            if any(slot.rule_id == gone.rule_id for slot in leg.rules.values())
        ]
        return tags or None
    if gone.binding_id is not None and not any(
        slot.binding is not None and slot.binding.binding_id == gone.binding_id
        for slot in call.bindings.values()
    ):
        return None
    return list(call.legs)


def _is_initial_invite(msg: SipMessage) -> bool:
    return msg.is_request and msg.method == "INVITE" and msg.to.tag is None


def _is_invite_2xx(msg: SipMessage) -> bool:
    return not msg.is_request and 200 <= msg.status < 300 and msg.cseq.method == "INVITE"
