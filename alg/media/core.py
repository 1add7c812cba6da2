"""`MediaCore`: the ALG's media anchoring, sans-I/O — the seam the proxy core calls.

Theory of operation
-------------------
The proxy hands over every message that crosses sides (`crossing`), and every datagram
from the outside before parsing it (`inbound`). For each message the core

1. tracks the call (`alg.media.session`): phase events (2xx, failure, CANCEL, BYE,
   408/481), the leg's offer/answer, RFC 4028 bookkeeping;
2. for an SDP from the inside: checks it is not forged (`antiforgery`, else 488), and
   makes sure every stream has its binding. Missing bindings become `Reserve` actions and
   the message is *parked*; it comes back from `on_result`/`handle_timer` as `Ready`
   (rewritten) or `Refused` (503: no agent could provide). The event loop never waits;
3. after an answer, enables the rules that restrict each pinhole to the peer (one per
   early dialog), removes superseded ones once the new ones are in (make before break),
   frees bindings nobody uses (e.g. the rtcp-mux fallback), and releases the whole group
   when the call ends;
4. rewrites what goes out (`alg.media.rewrite`): SDP anchored, topology hidden, and a
   final scan guarantees no inside address leaves (else 500, nothing forwarded).

Agent operations retry with the same idempotency key, time out at their deadline, feed
the agent's circuit breaker, and a new call fails over to another agent
(`alg.media.agents`). Everything takes `now`; `get_timer()` says when to call
`handle_timer(now)`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from alg.errors import AlgError, SdpParseError, SipParseError
from alg.media.actions import (
    AgentAction,
    AgentResult,
    ChangeGroup,
    ChangeLifetime,
    Enable,
    Failed,
    Forward,
    MediaRecord,
    Outcome,
    Parked,
    Ready,
    Refused,
    Reject,
    Release,
    ReleaseReport,
    Reserve,
    Resolution,
)
from alg.media.agents import AgentPool, counts_against_agent, retryable
from alg.media.antiforgery import TrustedPeer, check_media_source
from alg.media.masking import TokenTable, ViaStash
from alg.media.record import media_record
from alg.media.rewrite import (
    Hiding,
    TopologyLeak,
    anchored_sdp,
    check_no_leak,
    hide_outbound,
    restore_inbound,
    sdp_of,
    set_sdp,
)
from alg.media.session import (
    BindingSlot,
    Call,
    CallEvent,
    Exchange,
    Leg,
    NeedMap,
    Offer,
    Phase,
    RuleKey,
    RuleSlot,
    SdpRole,
    Side,
    Slot,
    classify,
    needs_with_hold,
    step,
)
from alg.media.session_timer import (
    TimerSettings,
    insert_request,
    insert_response,
    min_se,
    session_expires,
    supports_timer,
)
from alg.media.streams import Need, anchor_plan
from alg.sdp import SessionDescription
from alg.sip import MessageEditor, SipMessage, parse_message
from fcp.errors import FcpError, Reason
from fcp.types import (
    Binding,
    BindingKind,
    BindingRequest,
    Direction,
    GroupLifetimeChange,
    IPAddress,
    LifetimeChange,
    LifetimeTarget,
    Rule,
    RuleRequest,
    TransportProtocol,
)

log = logging.getLogger("sipwall.alg.media")

RegisteredSources = Callable[[str], Iterable[str]]


@dataclass(frozen=True, slots=True)
class MediaConfig:
    hiding: Hiding
    secret: bytes  # >= 16 bytes: keys the tokens and group ids
    timers: TimerSettings = field(default_factory=TimerSettings)
    trusted: tuple[TrustedPeer, ...] = ()
    registered: RegisteredSources | None = None  # Contact URI -> registered-from addresses
    max_idle: int | None = None  # rule idle timeout (None: lifetime only)


@dataclass(slots=True)
class _Op:
    call_id: str
    action: AgentAction
    purpose: tuple[object, ...]  # ("reserve", need) | ("enable", tag, key) | ("other",)
    attempts: int = 1
    retry_at: float | None = None
    done: bool = False


@dataclass(slots=True)
class _Parked:
    ticket: int
    call_id: str
    msg: SipMessage
    sdp: SessionDescription
    needs: NeedMap
    from_side: Side
    to_side: Side


class MediaCore:
    def __init__(self, config: MediaConfig, pool: AgentPool) -> None:
        self.config = config
        self.pool = pool
        self.tokens = TokenTable(config.secret)
        self.vias = ViaStash()
        self.stats: Counter[str] = Counter()
        self._calls: dict[str, Call] = {}
        self._ops: dict[int, _Op] = {}
        self._parked: dict[int, _Parked] = {}
        self._actions: list[AgentAction] = []
        self._records: list[MediaRecord] = []
        self._released: dict[int, str] = {}  # release token -> call id (for the CDR)
        self._numbers = itertools.count(1)

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
                return self._reject(msg, 488, "Not Acceptable Here (unreadable SDP)")
            sdp = None
        call = self._calls.get(msg.call_id)
        if call is None and (_is_initial_invite(msg) or (outward and sdp is not None)):
            call = self._new_call(msg, from_side, now)
            if call is None:
                self.stats["reject.no_agent"] += 1
                return self._reject(msg, 503, "Service Unavailable (no media agent)")
        needs: NeedMap = {}
        if call is not None:
            if sdp is not None and from_side == "inside":
                forged = check_media_source(
                    sdp,
                    source_host,
                    trusted=self.config.trusted,
                    registered=self._registered(msg),
                )
                if forged is not None:
                    self.stats["reject.forged"] += 1
                    if _is_initial_invite(msg) and not call.bindings:
                        self._calls.pop(call.call_id, None)
                    return self._reject(msg, 488, forged.reason)
            needs = self._track(call, msg, sdp, from_side, to_side, now)
            if outward and sdp is not None:
                missing = self._ensure_bindings(call, needs, now)
                if missing:
                    ticket = next(self._numbers)
                    self._parked[ticket] = _Parked(
                        ticket, call.call_id, msg, sdp, needs, from_side, to_side
                    )
                    self.stats["parked"] += 1
                    return Parked(ticket)
        try:
            return Forward(self._render(msg, call, sdp, needs, from_side, to_side, now))
        except (TopologyLeak, AlgError) as exc:
            self.stats["reject.leak"] += 1
            log.warning("refusing to forward: %s", exc)
            return self._reject(msg, 500, "Server Internal Error (topology)")

    def on_result(self, result: AgentResult, now: float) -> list[Resolution]:
        out: list[Resolution] = []
        op = self._ops.pop(result.token, None)
        if op is None or op.done:
            return out
        if isinstance(result, Failed):
            self._op_failed(op, result.error, now, out)
            return out
        op.done = True
        self.pool.succeeded(op.action.agent)
        value = result.value
        if isinstance(value, ReleaseReport):
            self._records.append(
                media_record(self._released.pop(result.token, op.call_id), op.action.agent, value)
            )
            return out
        call = self._calls.get(op.call_id)
        if isinstance(value, Binding):
            self._reserved(call, op, value, now, out)
        elif isinstance(value, Rule):
            self._enabled(call, op, value, now)
        return out

    def get_timer(self) -> float | None:
        times = [call.expires_at for call in self._calls.values()]
        times.extend(
            op.retry_at if op.retry_at is not None else op.action.deadline
            for op in self._ops.values()
            if not op.done
        )
        return min(times, default=None)

    def handle_timer(self, now: float) -> list[Resolution]:
        out: list[Resolution] = []
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
                self._op_failed(op, error, now, out)
        for call in list(self._calls.values()):
            if call.expires_at <= now:
                self.stats["expired"] += 1
                call.move(CallEvent.EXPIRED)
                self._end(call, now, out)
        return out

    def take_actions(self) -> list[AgentAction]:
        actions, self._actions = self._actions, []
        return actions

    def take_records(self) -> list[MediaRecord]:
        records, self._records = self._records, []
        return records

    def call(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    @property
    def call_count(self) -> int:
        return len(self._calls)

    # ---- call tracking ---------------------------------------------------------------

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
            group_id="g-" + key[:12].hex(),
            agent=agent,
            invite_cseq=msg.cseq.number,
            expires_at=now + self.config.timers.setup,
        )
        call.tried_agents.add(agent)
        self._calls[call_id] = call
        self.stats["calls"] += 1
        return call

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
        if cseq.method == "INVITE" and cseq.number == call.invite_cseq and tag is not None:
            if 100 < status < 200:
                self._event(call, CallEvent.PROVISIONAL, now)
            elif status < 300:
                self._answered(call, leg, msg, now)
            elif status >= 300:
                self._event(call, CallEvent.FAILED, now)
        elif cseq.method == "INVITE" and cseq.number == call.invite_cseq and status >= 300:
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
        self._refuse_parked(call, 500, "re-INVITE failed", [])
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
        call.expires_at = now + (interval if interval is not None else timers.untimed)
        if call.phase is not Phase.EARLY:
            self._event(call, CallEvent.REFRESHED, now)
        request = GroupLifetimeChange(call.group_id, lifetime, self._key(call))
        self._emit(call, ChangeGroup(call.agent, request, 0, 0.0), ("other",), now)

    def _interval_for(self, msg: SipMessage) -> int:
        return max(self.config.timers.interval, min_se(msg))

    def _event(self, call: Call, event: CallEvent, now: float) -> None:
        if call.move(event) is Phase.ENDED:
            self._end(call, now, [])

    def _end(self, call: Call, now: float, out: list[Resolution]) -> None:
        if self._calls.pop(call.call_id, None) is None:
            return
        call.phase = Phase.ENDED
        self._refuse_parked(call, 503, "call ended", out)
        token = next(self._numbers)
        action = Release(
            call.agent, call.group_id, token, now + self.pool.settings.deadline, self._key(call)
        )
        self._ops[token] = _Op(call.call_id, action, ("release",))
        self._released[token] = call.call_id
        self._actions.append(action)

    def _drop_leg(self, call: Call, tag: str | None, now: float) -> None:
        leg = call.legs.pop(tag, None)
        if leg is None:
            return
        for slot in leg.rules.values():
            if slot.state is Slot.READY and slot.rule_id is not None:
                self._remove_rule(call, slot.rule_id, now)
        self.stats["legs.dropped"] += 1
        self._reconcile(call, now)

    # ---- bindings and rules ----------------------------------------------------------

    def _ensure_bindings(self, call: Call, needs: NeedMap, now: float) -> bool:
        """Reserve what is missing; True while any need of `needs` is not ready."""
        missing = False
        for stream_needs in needs.values():
            for need in stream_needs:
                slot = call.bindings.get(need)
                if slot is None:
                    slot = call.bindings[need] = BindingSlot(need)
                    self._reserve(call, need, now)
                missing = missing or slot.state is not Slot.READY
        return missing

    def _reserve(self, call: Call, need: Need, now: float) -> None:
        lifetime = (
            self.config.timers.setup
            if call.interval is None and call.phase is Phase.EARLY
            else (call.interval or self.config.timers.untimed) + self.config.timers.slack
        )
        request = BindingRequest(
            group_id=call.group_id,
            internal=need.internal,
            protocol=TransportProtocol.UDP,
            kind=need.kind,
            lifetime_seconds=lifetime,
            block_size=need.block_size if need.kind is BindingKind.BLOCK else 0,
            idempotency_key=self._key(call),
        )
        self._emit(call, Reserve(call.agent, request, 0, 0.0), ("reserve", need), now)

    def _reconcile(self, call: Call, now: float) -> None:
        """Rules to match each leg's current exchange; unused bindings freed."""
        for tag, leg in call.legs.items():
            exchange = leg.current
            if exchange is None:
                continue
            wanted: set[RuleKey] = set()
            for index, needs in exchange.needs.items():
                peer = exchange.peer(index)
                if peer is None:  # held by the outside party: keep what is there
                    wanted.update(key for key in leg.rules if key.index == index)
                    continue
                wanted.update(RuleKey(index, need, peer) for need in needs)
            for key in wanted:
                slot = call.bindings.get(key.need)
                if key in leg.rules or slot is None or slot.binding is None:
                    continue
                if slot.binding.external_address.version != key.peer.version:
                    continue
                leg.rules[key] = RuleSlot()
                self._enable(call, tag, key, slot.binding, now)
            settled = leg.tentative is None and all(
                key in leg.rules and leg.rules[key].state is Slot.READY for key in wanted
            )
            if settled:  # make before break: the new rules are in, the old ones go
                for key in [k for k in leg.rules if k not in wanted]:
                    slot_ = leg.rules[key]
                    if slot_.state is Slot.READY and slot_.rule_id is not None:
                        del leg.rules[key]
                        self._remove_rule(call, slot_.rule_id, now)
        used = call.referenced_needs()
        for parked in self._parked.values():
            if parked.call_id == call.call_id:
                for needs in parked.needs.values():
                    used.update(needs)
        for need in [n for n, s in call.bindings.items() if n not in used]:
            slot = call.bindings[need]
            if slot.state is Slot.READY and slot.binding is not None:
                del call.bindings[need]
                change = LifetimeChange(
                    LifetimeTarget.BINDING, slot.binding.binding_id, 0, self._key(call)
                )
                self._emit(call, ChangeLifetime(call.agent, change, 0, 0.0), ("other",), now)

    def _enable(
        self, call: Call, tag: str | None, key: RuleKey, binding: Binding, now: float
    ) -> None:
        timers = self.config.timers
        lifetime = (call.interval or timers.untimed) + timers.slack
        if call.phase is Phase.EARLY and call.interval is None:
            lifetime = timers.setup
        request = RuleRequest(
            binding_id=binding.binding_id,
            direction=Direction.BIDIRECTIONAL,
            remote_address=key.peer,
            lifetime_seconds=lifetime,
            remote_port=None,  # latch within the peer's address (RFC 7362)
            max_idle_seconds=self.config.max_idle,
            idempotency_key=self._key(call),
        )
        self._emit(call, Enable(call.agent, request, 0, 0.0), ("enable", tag, key), now)

    def _remove_rule(self, call: Call, rule_id: str, now: float) -> None:
        change = LifetimeChange(LifetimeTarget.RULE, rule_id, 0, self._key(call))
        self._emit(call, ChangeLifetime(call.agent, change, 0, 0.0), ("other",), now)

    def _reserved(
        self, call: Call | None, op: _Op, binding: Binding, now: float, out: list[Resolution]
    ) -> None:
        need = op.purpose[1]
        slot = call.bindings.get(need) if call is not None and isinstance(need, Need) else None
        if call is None or slot is None or op.action.agent != call.agent:
            # the call ended or moved meanwhile: give the port back
            change = LifetimeChange(LifetimeTarget.BINDING, binding.binding_id, 0)
            token = next(self._numbers)
            self._actions.append(
                ChangeLifetime(op.action.agent, change, token, now + self.pool.settings.deadline)
            )
            return
        slot.state, slot.binding = Slot.READY, binding
        for parked in [p for p in self._parked.values() if p.call_id == call.call_id]:
            if all(
                call.bindings.get(n) is not None and call.bindings[n].state is Slot.READY
                for needs in parked.needs.values()
                for n in needs
            ):
                del self._parked[parked.ticket]
                out.append(self._resolve(call, parked, now))
        self._reconcile(call, now)

    def _resolve(self, call: Call, parked: _Parked, now: float) -> Resolution:
        try:
            data = self._render(
                parked.msg, call, parked.sdp, parked.needs, parked.from_side, parked.to_side, now
            )
        except AlgError as exc:
            log.warning("refusing to forward: %s", exc)
            return Refused(parked.ticket, 500, "Server Internal Error (topology)")
        return Ready(parked.ticket, data)

    def _enabled(self, call: Call | None, op: _Op, rule: Rule, now: float) -> None:
        _, tag, key = op.purpose
        leg = call.legs.get(tag) if call is not None and isinstance(tag, str | None) else None
        slot = leg.rules.get(key) if leg is not None and isinstance(key, RuleKey) else None
        if call is None or slot is None:
            if call is not None:
                self._remove_rule(call, rule.rule_id, now)  # its leg lost meanwhile
            return
        slot.state, slot.rule_id = Slot.READY, rule.rule_id
        self._reconcile(call, now)

    # ---- operations --------------------------------------------------------------------

    def _key(self, call: Call) -> str:
        call.ops += 1
        return f"{call.group_id}-{call.ops}"

    def _emit(
        self, call: Call, action: AgentAction, purpose: tuple[object, ...], now: float
    ) -> None:
        token = next(self._numbers)
        action = dataclasses.replace(
            action, token=token, deadline=now + self.pool.settings.deadline
        )
        self._ops[token] = _Op(call.call_id, action, purpose)
        self._actions.append(action)

    def _retry(self, op: _Op, now: float) -> None:
        token = next(self._numbers)
        op.action = dataclasses.replace(
            op.action, token=token, deadline=now + self.pool.settings.deadline
        )
        op.retry_at = None
        op.attempts += 1
        self._ops[token] = op
        self._actions.append(op.action)
        self.stats["agent.retry"] += 1

    def _op_failed(self, op: _Op, error: FcpError, now: float, out: list[Resolution]) -> None:
        agent = op.action.agent
        if counts_against_agent(error):
            self.pool.failed(agent, now)
        if retryable(error) and op.attempts < self.pool.settings.attempts:
            op.retry_at = now + self.pool.retry_delay(op.attempts + 1)
            self._ops[op.action.token] = op
            return
        op.done = True
        self.stats[f"agent.failed.{op.purpose[0]}"] += 1
        call = self._calls.get(op.call_id)
        if call is None or op.purpose[0] != "reserve" or agent != call.agent:
            return
        fresh = not any(slot.state is Slot.READY for slot in call.bindings.values())
        if fresh and self._fail_over(call, now):
            return
        need = op.purpose[1]
        self._refuse_parked(call, 503, "Service Unavailable (media)", out, need)
        if call.phase is Phase.EARLY and all(leg.current is None for leg in call.legs.values()):
            call.move(CallEvent.FAILED)
            self._end(call, now, out)
            return
        for leg in call.legs.values():
            if leg.offer is not None and leg.offer.side == "inside":
                self._rollback(call, leg, leg.offer.method, leg.offer.cseq, now)
        if isinstance(need, Need):
            call.bindings.pop(need, None)

    def _fail_over(self, call: Call, now: float) -> bool:
        """A new call with nothing reserved yet moves to another healthy agent."""
        agent = self.pool.choose(
            self.tokens.key(call.call_id, call.caller_tag), now, frozenset(call.tried_agents)
        )
        if agent is None:
            return False
        self.stats["agent.failover"] += 1
        for op in self._ops.values():
            if op.call_id == call.call_id:
                op.done = True
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

    def _refuse_parked(
        self, call: Call, status: int, reason: str, out: list[Resolution], need: object = None
    ) -> None:
        for parked in [p for p in self._parked.values() if p.call_id == call.call_id]:
            if need is None or any(need in needs for needs in parked.needs.values()):
                del self._parked[parked.ticket]
                out.append(Refused(parked.ticket, status, reason))

    # ---- output ------------------------------------------------------------------------

    def _registered(self, msg: SipMessage) -> tuple[str, ...]:
        lookup = self.config.registered
        if lookup is None:
            return ()
        try:
            contacts = msg.contact.contacts
        except SipParseError:
            return ()
        return tuple(addr for c in contacts for addr in lookup(str(c.uri)))

    def _reject(self, msg: SipMessage, status: int, reason: str) -> Reject:
        return Reject(status, reason)

    def _render(  # noqa: PLR0917
        self,
        msg: SipMessage,
        call: Call | None,
        sdp: SessionDescription | None,
        needs: NeedMap,
        from_side: Side,
        to_side: Side,
        now: float,
    ) -> bytes:
        edit = MessageEditor(msg)
        if call is not None and from_side != to_side:
            self._timer_edits(edit, call)
        outward = from_side == "inside" and to_side == "outside"
        if outward and sdp is not None and call is not None:
            bound = {
                index: (stream_needs, [call.bindings[n].binding for n in stream_needs])
                for index, stream_needs in needs.items()
                if all(call.bindings.get(n) and call.bindings[n].binding for n in stream_needs)
            }
            public = self._public(call)
            plan = anchor_plan(sdp, bound, public, strip_ice=self.config.hiding.strip_ice)  # type: ignore[arg-type]
            set_sdp(edit, anchored_sdp(sdp, plan, self.config.hiding.inside, public))
        if outward:
            hide_outbound(edit, self.tokens, self.vias, self.config.hiding, now)
        data = edit.apply()
        if to_side == "outside":
            check_no_leak(data, self.config.hiding.inside)
        return data

    def _timer_edits(self, edit: MessageEditor, call: Call) -> None:
        msg = edit.message
        if msg.is_request:
            if msg.method in ("INVITE", "UPDATE"):
                inserted = call.timer_requests.get(msg.cseq.number, (False, None))[1]
                if inserted is not None:
                    insert_request(edit, dataclasses.replace(self.config.timers, interval=inserted))
            return
        cseq = msg.cseq
        if 200 <= msg.status < 300 and cseq.method in ("INVITE", "UPDATE"):
            supported, inserted = call.timer_requests.get(cseq.number, (False, None))
            if inserted is not None:
                insert_response(edit, supported, inserted)

    def _public(self, call: Call) -> IPAddress:
        for slot in call.bindings.values():
            if slot.binding is not None:
                return slot.binding.external_address
        return ipaddress.ip_address(self.config.hiding.outside_host)


def _is_initial_invite(msg: SipMessage) -> bool:
    return msg.is_request and msg.method == "INVITE" and msg.to.tag is None
