"""`MemoryBackend`: an in-memory `FirewallBackend` — a TEST DOUBLE, not the filter agent.

It touches no kernel and forwards no packet. It exists so the RPC layer, the client and
later the ALG can be tested against a backend that keeps FCP's promises exactly
(ARCHITECTURE §4): pool allocation with even/odd RTP pairs, one public address per group,
endpoint-independent mapping, a 120 s quarantine for freed ports, per-owner and per-group
quotas, ownership, idempotency keys, lifetimes on an injectable clock, atomic batches and
events. The real agent (`filter_agent/`) implements the same protocol over nftables.

Theory of operation: all state lives in one `State` value. Every mutating call works on a
copy and swaps it in only on success, so a failure — inside a batch or half-way through
one reservation — leaves nothing behind (all or nothing, like one nftables transaction).
Events produced by a call are published only after the swap. Time never advances by
itself: tests move the injected clock and call `sweep()` (every API call sweeps first, so
expired objects are never returned).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from fcp.errors import FcpError, Reason, malformed, not_found
from fcp.idempotency import DEFAULT_TTL_SECONDS, IdempotencyCache
from fcp.memory_state import (
    BindingRecord,
    GroupRecord,
    PendingEvent,
    RuleRecord,
    State,
    add_traffic,
    allocate_ports,
    fingerprint,
    with_lifetime,
)
from fcp.types import (
    BatchRequest,
    BatchResult,
    Binding,
    BindingKind,
    BindingRequest,
    Capabilities,
    Counters,
    Event,
    EventKind,
    ExternalAddress,
    Group,
    GroupLifetimeChange,
    GroupLifetimeGrant,
    IPAddress,
    IpVersion,
    LifetimeChange,
    LifetimeGrant,
    LifetimeTarget,
    Pool,
    PortUsage,
    Rule,
    RuleRequest,
    Session,
    SessionRequest,
    TransportProtocol,
    resolve_ref,
    standalone,
)

T = TypeVar("T")
Operation = BindingRequest | RuleRequest | LifetimeChange | GroupLifetimeChange


@dataclass(frozen=True)
class MemoryBackendConfig:
    pools: tuple[Pool, ...]
    max_lifetime_seconds: int = 3600
    max_block_size: int = 16
    max_bindings_per_owner: int = 4096
    max_bindings_per_group: int = 16
    port_reuse_delay: float = 120.0  # a freed port is not handed out again for this long
    idempotency_ttl: float = DEFAULT_TTL_SECONDS


class MemoryBackend:
    """In-memory FCP backend for tests; see the module docstring. Not thread-safe."""

    def __init__(
        self,
        config: MemoryBackendConfig,
        *,
        epoch: int | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - port choice, not a secret
        self._epoch = epoch if epoch is not None else self._rng.getrandbits(63) or 1
        self._pools = {pool.name: pool for pool in config.pools}
        self._state = State(idempotency=IdempotencyCache(config.idempotency_ttl))
        self._watchers: list[tuple[str, asyncio.Queue[Event | None]]] = []
        self._sequence = 0
        self._draining = False

    # ---- FirewallBackend -------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def capabilities(self) -> Capabilities:
        pools = tuple(self._pools.values())
        return Capabilities(
            ip_versions=tuple(sorted({p.ip_version for p in pools}, key=lambda v: v.value)),
            pools=pools,
            rtp_pair=True,
            rtcp_mux=True,
            block=True,
            max_block_size=self._config.max_block_size,
            max_lifetime_seconds=self._config.max_lifetime_seconds,
            latching=True,
        )

    async def open_session(self, owner: str, request: SessionRequest) -> Session:
        def apply(state: State, now: float) -> Session:
            previous = state.incarnations.get(owner)
            if request.release_previous_state:
                for key in [k for k in state.groups if k[0] == owner]:
                    state.release_group(owner, key[1], now, self._config.port_reuse_delay)
                state.idempotency.forget_owner(owner)
            state.incarnations[owner] = request.incarnation_id
            return Session(self.capabilities, self._epoch, owner, request.incarnation_id, previous)

        return self._transaction(apply)

    async def watch_events(self, owner: str) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        entry = (owner, queue)
        self._watchers.append(entry)
        try:
            yield self._next_event(PendingEvent(None, EventKind.WATCH_STARTED), self._clock())
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._watchers.remove(entry)

    async def reserve_binding(self, owner: str, request: BindingRequest) -> Binding:
        return self._transaction(
            lambda s, now: self._once(s, owner, request, now, self._reserve_new)
        )

    async def enable_rule(self, owner: str, request: RuleRequest) -> Rule:
        return self._transaction(
            lambda s, now: self._once(s, owner, standalone(request), now, self._enable_new)
        )

    async def change_lifetime(self, owner: str, request: LifetimeChange) -> LifetimeGrant:
        return self._transaction(
            lambda s, now: self._once(s, owner, request, now, self._change_new)
        )

    async def change_group_lifetime(
        self, owner: str, request: GroupLifetimeChange
    ) -> GroupLifetimeGrant:
        return self._transaction(
            lambda s, now: self._once(s, owner, request, now, self._change_group_new)
        )

    async def batch(self, owner: str, request: BatchRequest) -> Sequence[BatchResult]:
        def apply(state: State, now: float) -> tuple[BatchResult, ...]:
            fp = fingerprint(request)
            seen = state.idempotency.lookup(owner, request.idempotency_key, fp, now)
            if seen is not None:
                return cast(tuple[BatchResult, ...], seen)
            results: list[BatchResult] = []
            for index, operation in enumerate(request.operations):
                try:
                    resolved = resolve_ref(operation, results)
                    results.append(self._apply_one(state, owner, resolved, now))
                except FcpError as exc:
                    raise exc.with_operation_index(index) from None
            state.idempotency.remember(owner, request.idempotency_key, fp, tuple(results), now)
            return tuple(results)

        return self._transaction(apply)

    async def list_rules(
        self, owner: str, group_id: str | None = None, binding_id: str | None = None
    ) -> Sequence[Rule]:
        self.sweep()
        return [
            r.rule
            for r in self._state.rules.values()
            if r.owner == owner
            and group_id in (None, r.rule.group_id)
            and binding_id in (None, r.rule.binding_id)
        ]

    async def list_bindings(self, owner: str, group_id: str | None = None) -> Sequence[Binding]:
        self.sweep()
        return [
            b.binding
            for b in self._state.bindings.values()
            if b.owner == owner and group_id in (None, b.binding.group_id)
        ]

    async def list_groups(self, owner: str) -> Sequence[Group]:
        self.sweep()
        return [self._group(owner, gid) for (o, gid) in self._state.groups if o == owner]

    async def get_rule(self, owner: str, rule_id: str) -> Rule:
        self.sweep()
        return self._state.rule_record(owner, rule_id).rule

    async def get_binding(self, owner: str, binding_id: str) -> Binding:
        self.sweep()
        return self._state.binding_record(owner, binding_id).binding

    async def get_group(self, owner: str, group_id: str) -> Group:
        self.sweep()
        if (owner, group_id) not in self._state.groups:
            raise not_found("group", group_id)
        return self._group(owner, group_id)

    async def get_external_addresses(
        self, owner: str, pool: str | None = None
    ) -> Sequence[ExternalAddress]:
        if pool is not None and pool not in self._pools:
            raise not_found("pool", pool)
        now = self._clock()
        return [
            ExternalAddress(
                address,
                p.name,
                p.ip_version,
                tuple(self._port_usage(p, address, proto, now) for proto in TransportProtocol),
            )
            for p in self._pools.values()
            if pool in (None, p.name)
            for address in p.external_addresses
        ]

    def _port_usage(
        self, pool: Pool, address: IPAddress, protocol: TransportProtocol, now: float
    ) -> PortUsage:
        state = self._state  # O(ports held): this backend is the reference, not fast
        bound = sum(1 for a, p, _ in state.ports if (a, p) == (address, protocol))
        quarantined = sum(
            1
            for (a, p, _), t in state.quarantine.items()
            if (a, p) == (address, protocol) and t > now
        )
        return PortUsage(protocol, pool.port_max - pool.port_min + 1, bound, quarantined)

    # ---- test hooks (what the kernel, an operator or time would do) --------------------

    def sweep(self) -> None:
        """Expire rules and bindings whose lifetime or idle time is over, at clock()."""
        self._transaction(lambda state, now: None)  # every transaction expires first

    def record_traffic(self, rule_id: str, packets: int, octets: int) -> None:
        """Pretend the kernel counted packets for a rule (and its binding) now."""
        now = self._clock()
        state = self._state
        record = state.rules[rule_id]
        state.rules[rule_id] = dataclasses.replace(
            record,
            rule=dataclasses.replace(
                record.rule, counters=add_traffic(record.rule.counters, packets, octets, now)
            ),
        )
        brecord = state.bindings[record.rule.binding_id]
        state.bindings[brecord.binding.binding_id] = dataclasses.replace(
            brecord,
            binding=dataclasses.replace(
                brecord.binding,
                counters=add_traffic(brecord.binding.counters, packets, octets, now),
            ),
        )

    def remove_by_admin(self, rule_id: str) -> None:
        """An operator deleted a rule behind the owner's back."""

        def apply(state: State, now: float) -> None:
            record = state.rules.pop(rule_id)
            state.events.append(
                PendingEvent(
                    record.owner,
                    EventKind.REMOVED_BY_ADMIN,
                    record.rule.group_id,
                    record.rule.binding_id,
                    rule_id,
                    message="removed by an operator",
                )
            )

        self._transaction(apply)

    def change_external_address(self, pool: str, old: IPAddress, new: IPAddress) -> None:
        """The pool's public address changed (PCP ANNOUNCE, RFC 6887 §14.1.3)."""
        current = self._pools[pool]
        addresses = tuple(new if a == old else a for a in current.external_addresses)
        self._pools[pool] = dataclasses.replace(current, external_addresses=addresses)
        self._transaction(
            lambda s, now: s.events.append(
                PendingEvent(
                    None,
                    EventKind.EXTERNAL_ADDRESS_CHANGED,
                    pool=pool,
                    old_address=old,
                    new_address=new,
                )
            )
        )

    def drain(self) -> None:
        """Refuse new reservations from now on and tell every watcher."""
        self._draining = True
        self._transaction(
            lambda s, now: s.events.append(
                PendingEvent(None, EventKind.AGENT_DRAINING, message="agent is shutting down")
            )
        )

    def close(self) -> None:
        """End every event stream (the agent is stopping)."""
        for _, queue in self._watchers:
            queue.put_nowait(None)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    # ---- transactions and events -----------------------------------------------------

    def _transaction(self, apply: Callable[[State, float], T]) -> T:
        now = self._clock()
        state = self._state.copy()
        state.expire(now, self._config.port_reuse_delay)
        result = apply(state, now)
        pending, state.events = state.events, []
        self._state = state
        for item in pending:
            self._publish(self._next_event(item, now), item.owner)
        return result

    def _next_event(self, item: PendingEvent, now: float) -> Event:
        self._sequence += 1
        return Event(
            self._sequence,
            item.kind,
            now,
            self._epoch,
            item.group_id,
            item.binding_id,
            item.rule_id,
            item.pool,
            item.old_address,
            item.new_address,
            item.message,
        )

    def _publish(self, event: Event, owner: str | None) -> None:
        for watcher, queue in self._watchers:
            if owner is None or watcher == owner:
                queue.put_nowait(event)

    # ---- operations (pure over a state copy) -----------------------------------------

    def _apply_one(self, state: State, owner: str, operation: object, now: float) -> BatchResult:
        if isinstance(operation, BindingRequest):
            return self._once(state, owner, operation, now, self._reserve_new)
        if isinstance(operation, RuleRequest):
            return self._once(state, owner, operation, now, self._enable_new)
        if isinstance(operation, LifetimeChange):
            return self._once(state, owner, operation, now, self._change_new)
        if isinstance(operation, GroupLifetimeChange):
            return self._once(state, owner, operation, now, self._change_group_new)
        raise FcpError(Reason.UNSUPPORTED, f"unknown operation {type(operation).__name__}")

    def _once(
        self,
        state: State,
        owner: str,
        request: Operation,
        now: float,
        create: Callable[[State, str, Any, float], T],
    ) -> T:
        """Apply `create` once per idempotency key; replay the first result afterwards."""
        fp = fingerprint(request)
        seen = state.idempotency.lookup(owner, request.idempotency_key, fp, now)
        if seen is not None:
            return cast(T, seen)
        result = create(state, owner, request, now)
        state.idempotency.remember(owner, request.idempotency_key, fp, result, now)
        return result

    def _grant(self, requested: int) -> int:
        return min(requested, self._config.max_lifetime_seconds)

    def _reserve_new(self, state: State, owner: str, req: BindingRequest, now: float) -> Binding:
        if self._draining:
            raise FcpError(Reason.NETWORK_FAILURE, "agent is draining", retry_after=1.0)
        existing = self._same_internal(state, owner, req)
        if existing is not None:
            return existing
        if req.kind is BindingKind.BLOCK and req.block_size > self._config.max_block_size:
            raise FcpError(
                Reason.UNSUPPORTED,
                f"block_size above {self._config.max_block_size}",
                field="block_size",
            )
        pool = self._pool_for(req)
        owned = sum(1 for b in state.bindings.values() if b.owner == owner)
        if owned >= self._config.max_bindings_per_owner:
            raise FcpError(Reason.QUOTA, f"owner {owner!r} has {owned} bindings")
        in_group = sum(
            1
            for b in state.bindings.values()
            if b.owner == owner and b.binding.group_id == req.group_id
        )
        if in_group >= self._config.max_bindings_per_group:
            raise FcpError(Reason.QUOTA, f"group {req.group_id!r} has {in_group} bindings")
        group = state.groups.get((owner, req.group_id))
        if group is not None and group.pool != pool.name:
            raise FcpError(
                Reason.CONFLICT, "a group's bindings must come from one pool", field="pool"
            )
        if group is None:
            if not pool.external_addresses:
                raise FcpError(Reason.NO_ADDRESSES, f"pool {pool.name!r} has no address")
            # One public address per call: later bindings of the group reuse it.
            group = GroupRecord(self._rng.choice(pool.external_addresses), pool.name)
        ports = allocate_ports(
            state, self._rng, address=group.external_address, pool=pool, req=req, now=now
        )
        binding_id = f"b-{self._rng.getrandbits(64):016x}"
        granted = self._grant(req.lifetime_seconds)
        binding = Binding(
            binding_id,
            req.group_id,
            req.internal,
            req.protocol,
            req.kind,
            group.external_address,
            ports,
            granted,
            now + granted,
            pool.name,
        )
        state.groups[(owner, req.group_id)] = group
        state.bindings[binding_id] = BindingRecord(owner, binding)
        for port in ports:
            state.ports[(group.external_address, req.protocol, port)] = binding_id
        return binding

    def _same_internal(self, state: State, owner: str, req: BindingRequest) -> Binding | None:
        """Endpoint-independent mapping: one binding per inside endpoint (RFC 4787 REQ-1)."""
        wanted = {req.internal.port + i for i in range(req.port_count)}
        for record in state.bindings.values():
            b = record.binding
            if b.protocol != req.protocol or b.internal.address != req.internal.address:
                continue
            have = {b.internal.port + i for i in range(len(b.external_ports))}
            if not have & wanted:
                continue
            if (record.owner, b.group_id, b.internal, b.kind, len(b.external_ports)) == (
                owner,
                req.group_id,
                req.internal,
                req.kind,
                req.port_count,
            ):
                return b
            raise FcpError(
                Reason.CONFLICT,
                f"inside endpoint {req.internal} is already bound",
                field="internal",
            )
        return None

    def _pool_for(self, req: BindingRequest) -> Pool:
        version = IpVersion.V4 if req.internal.address.version == 4 else IpVersion.V6
        if req.pool is not None:
            pool = self._pools.get(req.pool)
            if pool is None:
                raise FcpError(Reason.NO_ADDRESSES, f"no pool {req.pool!r}", field="pool")
            if pool.ip_version is not version:
                raise FcpError(Reason.UNSUPPORTED, "no NAT between IP versions", field="pool")
            return pool
        for pool in self._pools.values():
            if pool.ip_version is version:
                return pool
        raise FcpError(Reason.NO_ADDRESSES, f"no pool for IP{version.name.lower()}")

    def _enable_new(self, state: State, owner: str, req: RuleRequest, now: float) -> Rule:
        binding = state.binding_record(owner, req.binding_id).binding
        if req.remote_address.version != binding.external_address.version:
            raise malformed("remote_address", "IP version differs from the binding's")
        # A rule never outlives its binding (MIDCOM: a PER depends on its PRR).
        left = max(1, int(binding.expires_at - now))
        granted = min(self._grant(req.lifetime_seconds), left)
        rule = Rule(
            f"r-{self._rng.getrandbits(64):016x}",
            binding.binding_id,
            binding.group_id,
            req.direction,
            req.remote_address,
            req.remote_port,
            req.max_idle_seconds,
            granted,
            now + granted,
        )
        state.rules[rule.rule_id] = RuleRecord(owner, rule, now)
        return rule

    def _change_new(
        self, state: State, owner: str, req: LifetimeChange, now: float
    ) -> LifetimeGrant:
        granted = self._grant(req.lifetime_seconds)
        if req.target is LifetimeTarget.RULE:
            record = state.rule_record(owner, req.target_id)
            if granted == 0:
                del state.rules[req.target_id]
            else:
                binding = state.bindings[record.rule.binding_id].binding
                granted = min(granted, max(1, int(binding.expires_at - now)))
                state.rules[req.target_id] = with_lifetime(record, granted, now)
        else:
            brecord = state.binding_record(owner, req.target_id)
            if granted == 0:
                state.release_binding(req.target_id, now, self._config.port_reuse_delay)
            else:
                state.extend_binding(brecord, granted, now)
        result = LifetimeGrant(granted, now + granted if granted else None)
        return result

    def _change_group_new(
        self, state: State, owner: str, req: GroupLifetimeChange, now: float
    ) -> GroupLifetimeGrant:
        if (owner, req.group_id) not in state.groups:
            raise not_found("group", req.group_id)
        granted = self._grant(req.lifetime_seconds)
        members = [
            b
            for b in state.bindings.values()
            if b.owner == owner and b.binding.group_id == req.group_id
        ]
        rules = [
            r for r in state.rules.values() if r.owner == owner and r.rule.group_id == req.group_id
        ]
        # A release reports what the group held (fcp.proto ChangeGroupLifetimeResponse).
        held = (
            (tuple(b.binding for b in members), tuple(r.rule for r in rules))
            if granted == 0
            else ((), ())
        )
        if granted == 0:
            state.release_group(owner, req.group_id, now, self._config.port_reuse_delay)
        else:
            for brecord in members:
                state.extend_binding(brecord, granted, now)
            for rrecord in rules:
                state.rules[rrecord.rule.rule_id] = with_lifetime(rrecord, granted, now)
        result = GroupLifetimeGrant(
            granted, now + granted if granted else None, len(members), len(rules), *held
        )
        return result

    def _group(self, owner: str, group_id: str) -> Group:
        state = self._state
        bindings = [
            b.binding
            for b in state.bindings.values()
            if b.owner == owner and b.binding.group_id == group_id
        ]
        rules = [
            r.rule for r in state.rules.values() if r.owner == owner and r.rule.group_id == group_id
        ]
        counters = Counters()
        for rule in rules:
            c = rule.counters
            counters = add_traffic(counters, c.packets, c.bytes, c.last_seen)
        expiries = [b.expires_at for b in bindings] + [r.expires_at for r in rules]
        return Group(
            group_id,
            state.groups[(owner, group_id)].external_address,
            tuple(b.binding_id for b in bindings),
            tuple(r.rule_id for r in rules),
            counters,
            max(expiries, default=None),
        )
