"""The media core's state and bookkeeping, shared by its layers (`alg.media.core`).

`Ledger` holds what a `MediaCore` knows — calls, the agent operations in flight, parked
messages, the actions and records the shell collects, the requests the proxy sends for
it — and the plumbing every layer uses: emitting an FCP action with its token, deadline
and idempotency key (a retry keeps the key: the agent answers it with the first result,
PCP RFC 6887 §11.2), ending a call (release the group, RFC 5189 GLC with lifetime 0) and
rendering what leaves the ALG. The layers above add placement of offers and answers
(`alg.media.placement`), bindings and rules (`alg.media.anchoring`) and the seam itself
(`alg.media.core`); each stays one idea, under ~600 lines.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field

from alg.media.actions import (
    AgentAction,
    ChangeLifetime,
    MediaRecord,
    OwnRequest,
    Refused,
    Release,
    Resolution,
    stamped,
)
from alg.media.agents import AgentPool
from alg.media.antiforgery import Registrations, TrustedPeer
from alg.media.deadlines import Deadlines
from alg.media.masking import TokenTable, ViaStash
from alg.media.rewrite import (
    Hiding,
    anchored_sdp,
    check_no_leak,
    hide_outbound,
    set_sdp,
)
from alg.media.session import Call, NeedMap, Phase, Side
from alg.media.session_timer import TimerSettings, insert_request, insert_response
from alg.media.streams import anchor_plan
from alg.media.teardown import DialogEnds, EndedByAlg
from alg.sdp import SessionDescription
from alg.sip import MessageEditor, SipMessage
from fcp.types import IPAddress, LifetimeChange, LifetimeTarget

log = logging.getLogger("sipwall.alg.media")

# RFC 3261 §17.1.1.2 / RFC 6026 §8.4: a 2xx may be retransmitted for 64*T1; a call the
# ALG ended itself is remembered that long, so a late copy does not start a new one.
ENDED_MEMORY = 32.0


@dataclass(frozen=True, slots=True)
class MediaConfig:
    hiding: Hiding
    secret: bytes  # >= 16 bytes: keys the tokens and group ids
    timers: TimerSettings = field(default_factory=TimerSettings)
    trusted: tuple[TrustedPeer, ...] = ()
    # the location service (read only): where a sender's contact registered from
    registrations: Registrations | None = None
    max_idle: int | None = None  # rule idle timeout (None: lifetime only)


@dataclass(slots=True)
class Op:
    call_id: str
    action: AgentAction
    purpose: tuple[object, ...]  # ("reserve", need) | ("enable", tag, key) | ("other",)
    attempts: int = 1
    retry_at: float | None = None
    done: bool = False


@dataclass(slots=True)
class ParkedMessage:
    ticket: int
    call_id: str
    msg: SipMessage
    sdp: SessionDescription
    needs: NeedMap
    from_side: Side
    to_side: Side
    # its header edits, made while the agent is asked (`MediaCore.prepare_parked`)
    prepared: MessageEditor | None = None


class Ledger:
    def __init__(self, config: MediaConfig, pool: AgentPool) -> None:
        self.config = config
        self.pool = pool
        self.tokens = TokenTable(config.secret)
        self.vias = ViaStash()
        self.stats: Counter[str] = Counter()
        self._calls: dict[str, Call] = {}
        self._expiries: Deadlines[str] = Deadlines()  # call id -> its expires_at
        self._ends: dict[str, DialogEnds] = {}  # call id -> what teardown needs
        self._ended: dict[str, float] = {}  # call id -> until when (calls we ended)
        self._ops: dict[int, Op] = {}
        self._parked: dict[int, ParkedMessage] = {}
        # outboxes, emptied by the shell (`take_*`); nothing else here outlives its call:
        # a call ends at the latest at `expires_at`, an op at its deadline, a parked
        # message with its call, and `_ended` after ENDED_MEMORY (`_forget_ended`)
        self._actions: list[AgentAction] = []
        self._records: list[MediaRecord] = []
        self._requests: list[OwnRequest] = []
        self._resolutions: list[Resolution] = []  # parked messages let go or refused
        self._endings: list[EndedByAlg] = []  # calls the ALG ended itself (their CDRs)
        self._numbers = itertools.count(1)

    def footprint(self) -> dict[str, int]:
        """How many entries each structure holds that grows with the calls: all of them
        return to 0 once every call is over and `now` is past every timer (`get_timer`)
        and the shell took what the outboxes hold."""
        return {
            "calls": len(self._calls),
            "expiries": len(self._expiries),
            "ends": len(self._ends),
            "ended": len(self._ended),
            "ops": len(self._ops),
            "parked": len(self._parked),
            "actions": len(self._actions),
            "records": len(self._records),
            "requests": len(self._requests),
            "resolutions": len(self._resolutions),
            "endings": len(self._endings),
        }

    def _answer_refused(  # noqa: PLR0917
        self, call: Call, msg: SipMessage, from_side: Side, status: int, reason: str, now: float
    ) -> None:
        """A 2xx to an INVITE was refused (never forwarded): end its dialog
        (`alg.media.teardown`). Implemented by `MediaCore`."""
        raise NotImplementedError

    def _key(self, call: Call) -> str:
        call.ops += 1
        return f"{call.group_id}-{call.ops}"

    def _emit(
        self, call: Call, action: AgentAction, purpose: tuple[object, ...], now: float
    ) -> None:
        token = next(self._numbers)
        action = stamped(action, token, now + self.pool.settings.deadline)
        self._ops[token] = Op(call.call_id, action, purpose)
        self._actions.append(action)

    def _retry(self, op: Op, now: float) -> None:
        token = next(self._numbers)
        op.action = stamped(op.action, token, now + self.pool.settings.deadline)
        op.retry_at = None
        op.attempts += 1
        self._ops[token] = op
        self._actions.append(op.action)
        self.stats["agent.retry"] += 1

    def _expire_at(self, call: Call, when: float) -> None:
        """The only way a call's `expires_at` changes: `handle_timer` finds it by
        `_expiries` (alg.media.deadlines), never by scanning every call."""
        call.expires_at = when
        self._expiries.set(call.call_id, when)

    def _end(self, call: Call, now: float) -> None:
        """The call is over: whatever of it is still parked is refused, and its group is
        released (its counters come back in the `ReleaseReport`, for the CDR)."""
        if self._calls.pop(call.call_id, None) is None:
            return
        self._expiries.discard(call.call_id)
        call.phase = Phase.ENDED
        self._refuse_parked(call, 503, "call ended", now)
        self._ends.pop(call.call_id, None)
        token = next(self._numbers)
        action = Release(
            call.agent, call.group_id, token, now + self.pool.settings.deadline, self._key(call)
        )
        self._ops[token] = Op(call.call_id, action, ("release",))
        self._actions.append(action)

    def _ended_by_us(self, call: Call, status: int, reason: str, now: float) -> None:
        """The ALG ends the whole call itself (`alg.media.teardown`: its BYEs carry
        `status` and `reason` in a Reason header, RFC 3326): nobody else will send a BYE
        the proxy could bill the call by, so the CDR is told here (`take_endings`)."""
        self._endings.append(EndedByAlg(call.call_id, now, status, reason))
        self._end(call, now)

    def _remember_ended(self, call_id: str, now: float) -> None:
        # popped first: the dict's order stays the order of the deadlines (all are now +
        # the same ENDED_MEMORY), so `_forget_ended` only looks at its front
        self._ended.pop(call_id, None)
        self._ended[call_id] = now + ENDED_MEMORY

    def _forget_ended(self, now: float) -> None:
        ended = self._ended
        while ended:
            call_id, until = next(iter(ended.items()))
            if until > now:
                return
            del ended[call_id]

    def _next_forgetting(self) -> float | None:
        return next(iter(self._ended.values()), None)

    def _refuse_parked(
        self, call: Call, status: int, reason: str, now: float, need: object = None
    ) -> None:
        refused = [
            p
            for p in self._parked.values()
            if p.call_id == call.call_id
            and (need is None or any(need in needs for needs in p.needs.values()))
        ]
        # all of them first: tearing a 2xx's dialog down ends the call, which refuses
        # what is still parked (a retransmitted copy of that 2xx, RFC 3261 §13.3.1.4, or
        # a 183 whose binding is fine) with "call ended" instead of this status. Every
        # refusal goes to the outbox the gate empties after each call into the core:
        # each parked ticket gets exactly one resolution, its sender an answer
        for parked in refused:
            del self._parked[parked.ticket]
            self._resolutions.append(Refused(parked.ticket, status, reason))
        for parked in refused:
            if _is_invite_2xx(parked.msg):
                self._answer_refused(call, parked.msg, parked.from_side, status, reason, now)

    def _remove_rule(self, call: Call, rule_id: str, now: float) -> None:
        change = LifetimeChange(LifetimeTarget.RULE, rule_id, 0, self._key(call))
        self._emit(call, ChangeLifetime(call.agent, change, 0, 0.0), ("other",), now)

    def _render(  # noqa: PLR0917
        self,
        msg: SipMessage,
        call: Call | None,
        sdp: SessionDescription | None,
        needs: NeedMap,
        from_side: Side,
        to_side: Side,
        now: float,
        prepared: MessageEditor | None = None,
    ) -> bytes:
        """`msg` as it leaves: `prepared` holds its header edits when they were made
        beforehand (`_edit_headers`); the SDP is anchored here, then the leak scan."""
        edit = prepared
        if edit is None:
            edit = self._edit_headers(msg, call, from_side, to_side, now)
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
        data = edit.apply()
        if to_side == "outside":
            check_no_leak(data, self.config.hiding.inside)
        return data

    def _edit_headers(
        self, msg: SipMessage, call: Call | None, from_side: Side, to_side: Side, now: float
    ) -> MessageEditor:
        """The header edits of `msg` (RFC 4028 fields; topology hiding when it goes
        outside): none depends on the bindings, so a parked message gets them while the
        agent is being asked. Span edits do not depend on their order, nor on the body."""
        edit = MessageEditor(msg)
        if call is not None and from_side != to_side:
            self._timer_edits(edit, call)
        if from_side == "inside" and to_side == "outside":
            hide_outbound(edit, self.tokens, self.vias, self.config.hiding, now)
        return edit

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


def _is_invite_2xx(msg: SipMessage) -> bool:
    return not msg.is_request and 200 <= msg.status < 300 and msg.cseq.method == "INVITE"
