"""State of the in-memory FCP test double (`fcp.memory_backend`) and its port allocator.

Kept apart from the backend's API so each module holds one idea: this one is plain data
(records are frozen; `State.copy()` is cheap because records are shared) plus the pure
allocation function. Nothing here is used by the real agent.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from fcp.errors import FcpError, Reason, not_found
from fcp.idempotency import IdempotencyCache
from fcp.types import (
    Binding,
    BindingKind,
    BindingRequest,
    Counters,
    EventKind,
    IPAddress,
    Pool,
    Rule,
    TransportProtocol,
)

PortKey = tuple[IPAddress, TransportProtocol, int]
RANDOM_PORT_TRIES = 64


@dataclass(frozen=True)
class BindingRecord:
    owner: str
    binding: Binding


@dataclass(frozen=True)
class RuleRecord:
    owner: str
    rule: Rule
    created_at: float


@dataclass(frozen=True)
class GroupRecord:
    external_address: IPAddress
    pool: str


@dataclass(frozen=True)
class PendingEvent:
    """An event waiting for its transaction to commit; owner None: every watcher."""

    owner: str | None
    kind: EventKind
    group_id: str | None = None
    binding_id: str | None = None
    rule_id: str | None = None
    pool: str | None = None
    old_address: IPAddress | None = None
    new_address: IPAddress | None = None
    message: str = ""


@dataclass
class State:
    bindings: dict[str, BindingRecord] = field(default_factory=dict)
    rules: dict[str, RuleRecord] = field(default_factory=dict)
    groups: dict[tuple[str, str], GroupRecord] = field(default_factory=dict)
    ports: dict[PortKey, str] = field(default_factory=dict)  # -> binding id
    quarantine: dict[PortKey, float] = field(default_factory=dict)  # -> free again at
    incarnations: dict[str, str] = field(default_factory=dict)
    idempotency: IdempotencyCache[object] = field(default_factory=IdempotencyCache)
    events: list[PendingEvent] = field(default_factory=list)

    def copy(self) -> State:
        return State(
            dict(self.bindings),
            dict(self.rules),
            dict(self.groups),
            dict(self.ports),
            dict(self.quarantine),
            dict(self.incarnations),
            self.idempotency.copy(),
            [],
        )

    def extend_binding(self, record: BindingRecord, granted: int, now: float) -> None:
        binding = dataclasses.replace(
            record.binding, lifetime_seconds=granted, expires_at=now + granted
        )
        self.bindings[binding.binding_id] = BindingRecord(record.owner, binding)
        for rrecord in list(self.rules.values()):
            if rrecord.rule.binding_id == binding.binding_id and (
                rrecord.rule.expires_at > binding.expires_at
            ):
                self.rules[rrecord.rule.rule_id] = with_lifetime(rrecord, granted, now)

    def release_binding(self, binding_id: str, now: float, reuse_delay: float) -> list[str]:
        record = self.bindings.pop(binding_id)
        binding = record.binding
        for port in binding.external_ports:
            key = (binding.external_address, binding.protocol, port)
            del self.ports[key]
            self.quarantine[key] = now + reuse_delay
        gone = [rid for rid, r in self.rules.items() if r.rule.binding_id == binding_id]
        for rule_id in gone:
            del self.rules[rule_id]
        if not any(
            b.owner == record.owner and b.binding.group_id == binding.group_id
            for b in self.bindings.values()
        ):
            del self.groups[(record.owner, binding.group_id)]
        return gone

    def release_group(self, owner: str, group_id: str, now: float, reuse_delay: float) -> None:
        for binding_id in [
            bid
            for bid, b in self.bindings.items()
            if b.owner == owner and b.binding.group_id == group_id
        ]:
            self.release_binding(binding_id, now, reuse_delay)
        self.groups.pop((owner, group_id), None)

    def expire(self, now: float, reuse_delay: float) -> None:
        for rule_id, record in list(self.rules.items()):
            rule = record.rule
            last = rule.counters.last_seen or record.created_at
            if rule.expires_at <= now:
                kind = EventKind.EXPIRED
            elif rule.max_idle_seconds is not None and last + rule.max_idle_seconds <= now:
                kind = EventKind.IDLE
            else:
                continue
            del self.rules[rule_id]
            self.events.append(
                PendingEvent(record.owner, kind, rule.group_id, rule.binding_id, rule_id)
            )
        for binding_id, brecord in list(self.bindings.items()):
            if brecord.binding.expires_at <= now:
                for rule_id in self.release_binding(binding_id, now, reuse_delay):
                    self.events.append(
                        PendingEvent(
                            brecord.owner,
                            EventKind.EXPIRED,
                            brecord.binding.group_id,
                            binding_id,
                            rule_id,
                        )
                    )
                self.events.append(
                    PendingEvent(
                        brecord.owner, EventKind.EXPIRED, brecord.binding.group_id, binding_id
                    )
                )
        for key in [k for k, t in self.quarantine.items() if t <= now]:
            del self.quarantine[key]
        self.idempotency.expire(now)

    # ---- lookups ---------------------------------------------------------------------

    def binding_record(self, owner: str, binding_id: str) -> BindingRecord:
        record = self.bindings.get(binding_id)
        if record is None or record.owner != owner:  # another owner's: invisible
            raise not_found("binding", binding_id)
        return record

    def rule_record(self, owner: str, rule_id: str) -> RuleRecord:
        record = self.rules.get(rule_id)
        if record is None or record.owner != owner:
            raise not_found("rule", rule_id)
        return record


def fingerprint(request: Any) -> Hashable:
    """The request without its idempotency key (frozen dataclasses are hashable)."""
    fingerprint: Hashable = dataclasses.replace(request, idempotency_key=None)
    return fingerprint


def allocate_ports(
    state: State,
    rng: random.Random,
    *,
    address: IPAddress,
    pool: Pool,
    req: BindingRequest,
    now: float,
) -> tuple[int, ...]:
    count = req.port_count
    step = 2 if req.kind is BindingKind.RTP_PAIR else 1  # RTP on even P, RTCP on P+1
    first = pool.port_min + (pool.port_min % step)

    def free(base: int) -> bool:
        for port in range(base, base + count):
            key = (address, req.protocol, port)
            if port > pool.port_max or key in state.ports:
                return False
            if state.quarantine.get(key, 0.0) > now:
                return False
        return True

    wanted = req.suggested_external_port
    if wanted is not None:
        if wanted >= first and (wanted - first) % step == 0 and free(wanted):
            return tuple(range(wanted, wanted + count))
        if req.prefer_failure:
            raise FcpError(
                Reason.CANNOT_PROVIDE_EXTERNAL,
                f"port {wanted} is not available",
                field="suggested_external_port",
            )
    bases = range(first, pool.port_max - count + 2, step)
    if not bases:
        raise FcpError(Reason.NO_PORTS, f"pool {pool.name!r} is too small")
    # Random ports (RFC 6056) so that bindings cannot be guessed from outside.
    for _ in range(RANDOM_PORT_TRIES):
        base = rng.choice(bases)
        if free(base):
            return tuple(range(base, base + count))
    offset = rng.randrange(len(bases))
    for i in range(len(bases)):
        base = bases[(offset + i) % len(bases)]
        if free(base):
            return tuple(range(base, base + count))
    soonest = min((t for t in state.quarantine.values() if t > now), default=None)
    raise FcpError(
        Reason.NO_PORTS,
        f"no free port in pool {pool.name!r}",
        retry_after=None if soonest is None else soonest - now,
    )


def add_traffic(counters: Counters, packets: int, octets: int, seen: float | None) -> Counters:
    last = counters.last_seen
    if seen is not None and packets:
        last = seen if last is None else max(last, seen)
    return Counters(counters.packets + packets, counters.bytes + octets, last)


def with_lifetime(record: RuleRecord, granted: int, now: float) -> RuleRecord:
    rule = dataclasses.replace(record.rule, lifetime_seconds=granted, expires_at=now + granted)
    return dataclasses.replace(record, rule=rule)
