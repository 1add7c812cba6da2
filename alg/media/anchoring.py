"""Bindings and rules of a call (ARCHITECTURE §3 steps 2-5), the `Anchoring` layer.

Every inside stream gets its binding before the message that names it leaves (the
message waits, parked); each leg's current exchange gets one rule per binding and peer
(RFC 5189 PER), enabled as soon as the answer is known — early media needs it — while the
rules of the previous exchange are removed only once the new ones are in (make before
break); a binding no leg references any more is freed (RFC 5189 PLC with lifetime 0).
"""

from __future__ import annotations

import logging

from alg.errors import AlgError
from alg.media.actions import ChangeLifetime, Enable, Ready, Refused, Reserve, Resolution
from alg.media.ledger import Ledger, Op, ParkedMessage
from alg.media.session import BindingSlot, Call, NeedMap, Phase, RuleKey, RuleSlot, Slot
from alg.media.streams import Need
from fcp.types import (
    Binding,
    BindingKind,
    BindingRequest,
    Direction,
    LifetimeChange,
    LifetimeTarget,
    Rule,
    RuleRequest,
    TransportProtocol,
)

log = logging.getLogger("sipwall.alg.media")


class Anchoring(Ledger):
    def _drop_leg(self, call: Call, tag: str | None, now: float) -> None:
        leg = call.legs.pop(tag, None)
        if leg is None:
            return
        for slot in leg.rules.values():
            if slot.state is Slot.READY and slot.rule_id is not None:
                self._remove_rule(call, slot.rule_id, now)
        self.stats["legs.dropped"] += 1
        self._reconcile(call, now)

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

    def _reserved(self, call: Call | None, op: Op, binding: Binding, now: float) -> None:
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
                self._resolutions.append(self._resolve(call, parked, now))
        self._reconcile(call, now)

    def _resolve(self, call: Call, parked: ParkedMessage, now: float) -> Resolution:
        try:
            data = self._render(
                parked.msg,
                call,
                parked.sdp,
                parked.needs,
                parked.from_side,
                parked.to_side,
                now,
                parked.prepared,
            )
        except AlgError as exc:
            log.warning("refusing to forward: %s", exc)
            return Refused(parked.ticket, 500, "Server Internal Error (topology)")
        return Ready(parked.ticket, data)

    def _enabled(self, call: Call | None, op: Op, rule: Rule, now: float) -> None:
        _, tag, key = op.purpose
        leg = call.legs.get(tag) if call is not None and isinstance(tag, str | None) else None
        slot = leg.rules.get(key) if leg is not None and isinstance(key, RuleKey) else None
        if call is None or slot is None:
            if call is not None:
                self._remove_rule(call, rule.rule_id, now)  # its leg lost meanwhile
            return
        slot.state, slot.rule_id = Slot.READY, rule.rule_id
        self._reconcile(call, now)
