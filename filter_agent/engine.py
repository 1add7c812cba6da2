"""The agent's state: sans-I/O except for the injected driver, explicit `now` everywhere.

Theory of operation
-------------------
The engine owns bindings, rules and groups per owner (the caller's mTLS identity; another
owner's ids are NOT_FOUND, never NOT_AUTHORIZED, so ids leak nothing). Every mutating call
is a batch: each op mutates the in-memory state and records how to undo itself, the
kernel-side effect accumulates into one `plan.Change`, and at the end the whole change goes
to the driver as ONE transaction. If the driver fails, the undo log runs backwards and the
caller gets NETWORK_FAILURE: the engine is again exactly what the kernel holds. Effects
that cannot be undone (port quarantine, conntrack flush, idempotency records) run only
after the kernel accepted the change.

Lifetimes (MIDCOM RFC 5189 §2.1.8, PCP RFC 6887 §15): granted = min(requested, max); a
rule never outlives its binding; lifetime 0 releases. The kernel enforces every expiry on
its own via element timeouts, so `expire(now)` only keeps the books (and emits events);
it is also where idle rules (max_idle, judged from kernel counters fetched by
`observe(now)`) are closed.

Object lifecycle, as a table (there is no other state):

    object     event                          -> result
    binding    reserve                        -> LIVE (dnat4 + snat4 elements)
    binding    change_lifetime(t > 0)         -> LIVE, elements refreshed, rules clamped
    binding    change_lifetime(0) | expiry    -> GONE with all its rules, ports quarantined
    rule       enable                         -> LIVE (in4/out4[a] elements)
    rule       change_lifetime(t > 0)         -> LIVE, refreshed (<= binding's expiry)
    rule       change_lifetime(0) | expiry | idle -> GONE, conntrack flushed
    rule       latch(port), port unknown      -> LIVE with that port, exact elements (latch.py)
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from filter_agent import counting, ops
from filter_agent.allocator import Allocation, Allocator
from filter_agent.driver import NftDriver
from filter_agent.errors import AgentError, DriverError, Reason, malformed, not_found
from filter_agent.latch import latched_rule
from filter_agent.model import (
    Binding,
    BindingKind,
    Counters,
    Group,
    Rule,
    check_ipv4,
    check_port,
    port_count,
)
from filter_agent.plan import (
    Change,
    Element,
    KeyPart,
    TableSpec,
    binding_elements,
    plan_change,
    plan_restore,
    plan_setup,
    rule_elements,
    timeout_seconds,
)

log = logging.getLogger("sipwall.agent.engine")

Result = Binding | Rule | Group | None


@dataclass(frozen=True)
class Limits:
    max_lifetime: float = 3600.0
    max_block: int = 64
    max_rules_per_binding: int = 32


class EventKind(enum.StrEnum):
    EXPIRED = "expired"
    IDLE = "idle"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    owner: str
    group: str
    object_id: str
    at: float


@dataclass(frozen=True)
class FlowMatch:
    """Conntrack entries to delete: flows of one inside endpoint, optionally only those
    with one remote. Matches both NAT directions (see conntrack.py)."""

    protocol: str
    internal_addr: str
    internal_port: int
    external_addr: str
    external_port: int
    remote_addr: str | None = None
    remote_port: int | None = None
    # Entries our forward chain marked are all a release has to find; after a rebuild the
    # stale ones were tracked while the table was gone, hence unmarked (see reconcile).
    marked_only: bool = True


class ConntrackFlusher(Protocol):
    def flush(self, flows: Sequence[FlowMatch]) -> None: ...


@dataclass
class _Txn:
    undo: list[Callable[[], None]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)
    change: Change = field(default_factory=Change)
    flows: list[FlowMatch] = field(default_factory=list)


def _flows(binding: Binding, rule: Rule | None = None) -> list[FlowMatch]:
    out = []
    for offset, (inside, public) in enumerate(binding.port_pairs()):
        remote_port = None
        if rule is not None and rule.remote_port is not None:
            remote_port = rule.remote_port + offset
        out.append(
            FlowMatch(
                binding.protocol.value,
                binding.internal_addr,
                inside,
                binding.external_addr,
                public,
                rule.remote_addr if rule else None,
                remote_port,
            )
        )
    return out


class Engine:
    def __init__(
        self,
        allocator: Allocator,
        driver: NftDriver,
        *,
        spec: TableSpec | None = None,
        limits: Limits | None = None,
        flusher: ConntrackFlusher | None = None,
    ) -> None:
        self.allocator = allocator
        self.driver = driver
        self.spec = spec or TableSpec()
        self.limits = limits or Limits()
        self.flusher = flusher
        self._ids = itertools.count(1)
        self._bindings: dict[str, Binding] = {}
        self._allocs: dict[str, Allocation] = {}
        self._binding_of: dict[int, str] = {}  # id(Allocation) -> binding id, for EIM reuse
        self._rules: dict[str, Rule] = {}
        self._rules_of: dict[str, set[str]] = {}
        self._idem: dict[tuple[str, str], tuple[ops.Op, Result]] = {}
        self._element_rule: dict[tuple[str, tuple[KeyPart, ...]], str] = {}
        self._counters: dict[str, Counters] = {}
        self._nonzero: set[str] = set()  # rules whose counters are not zero (counting.py)
        self._fresh: set[str] = set()  # rules not observed yet (counting.py)
        self._idle: set[str] = set()  # rules with an idle timeout (may hold stale ids)

    # -- table ----------------------------------------------------------------------------

    def setup(self) -> None:
        """Create or repair the table (idempotent; existing elements survive)."""
        self.driver.apply(plan_setup(self.spec))

    def reconcile(self, now: float) -> bool:
        """If the table vanished (firewall reload), rebuild it and re-add every live element
        with its remaining lifetime. Returns whether it had to."""
        if self.driver.table_exists():
            return False
        self.setup()
        elements = []
        for b in self._bindings.values():
            elements.extend(binding_elements(b, timeout_seconds(b.expires_at, now)))
        for r in self._rules.values():
            b = self._bindings[r.binding_id]
            elements.extend(rule_elements(r, b, timeout_seconds(r.expires_at, now)))
        if elements:
            self.driver.apply(plan_restore(self.spec, elements))
        # While the table was gone, a packet to a public binding met no DNAT and the kernel
        # tracked it as traffic to this host (and one from the inside met no SNAT): such
        # conntrack entries keep that no-NAT decision for as long as packets keep coming,
        # so the restored elements would never apply to the call's media. Delete every
        # entry of every live binding; the next packet is classified afresh, through the
        # rebuilt maps (a still-correct NATed entry costs nothing more than that).
        flows = [
            replace(flow, marked_only=False) for b in self._bindings.values() for flow in _flows(b)
        ]
        if flows and self.flusher is not None:
            try:
                self.flusher.flush(flows)
            except Exception:  # the table is back; stale entries age out with their flows
                log.exception("conntrack flush after the rebuild failed")
        return True

    # -- queries --------------------------------------------------------------------------

    def get_binding(self, owner: str, binding_id: str) -> Binding:
        b = self._bindings.get(binding_id)
        if b is None or b.owner != owner:
            raise not_found("binding")
        return b

    def get_rule(self, owner: str, rule_id: str) -> Rule:
        r = self._rules.get(rule_id)
        if r is None or r.owner != owner:
            raise not_found("rule")
        return r

    def get_group(self, owner: str, group: str) -> Group:
        members = [b for b in self._bindings.values() if b.owner == owner and b.group == group]
        if not members:
            raise not_found("group")
        return Group(group, owner, max(b.expires_at for b in members))

    def list_bindings(self, owner: str, group: str | None = None) -> list[Binding]:
        return [
            b
            for b in self._bindings.values()
            if b.owner == owner and (group is None or b.group == group)
        ]

    def list_rules(self, owner: str, binding_id: str | None = None) -> list[Rule]:
        return [
            r
            for r in self._rules.values()
            if r.owner == owner and (binding_id is None or r.binding_id == binding_id)
        ]

    def list_groups(self, owner: str) -> list[Group]:
        names = sorted({b.group for b in self._bindings.values() if b.owner == owner})
        return [self.get_group(owner, name) for name in names]

    def counters(self, owner: str, object_id: str) -> Counters:
        """Counters as of the last `observe`: a rule's own, a binding's or a group's sum."""
        if object_id in self._rules:
            return self._counters.get(self.get_rule(owner, object_id).id, Counters())
        if object_id in self._bindings:
            rules = self._rules_of.get(self.get_binding(owner, object_id).id, set())
        else:
            rules = {
                r.id for r in self._rules.values() if r.owner == owner and r.group == object_id
            }
            if not rules:
                self.get_group(owner, object_id)  # NOT_FOUND unless the group exists
        total = Counters()
        for rid in rules:
            total = total + self._counters.get(rid, Counters())
        return total

    def next_timer(self) -> float | None:
        """When `expire` next has something to do (aioquic's get_timer)."""
        return counting.next_deadline(self._bindings, self._rules, self._counters, self._idle)

    def live_rules(self) -> list[tuple[Rule, Binding]]:
        return [(r, self._bindings[r.binding_id]) for r in self._rules.values()]

    def latch(self, rule_id: str, remote_port: int, now: float) -> Rule:
        """Latching (latch.py): a port-unknown rule's address-only elements become exact ones,
        same expiry, one transaction, no conntrack flush (the latching flow is the media)."""
        old = self._rules.get(rule_id)
        if old is None:
            raise not_found("rule")
        b = self._bindings[old.binding_id]
        rule = latched_rule(old, b, self._rules.values(), remote_port)
        if rule is not old:
            txn = _Txn(change=Change(put_rules=((rule, b),)))
            self._remove_rule(old, txn, flush=False)
            self._put_rule(rule, txn)
            txn.undo.append(lambda: self._forget_rule(rule.id))
            try:
                self.driver.apply(plan_change(self.spec, txn.change, now))
            except DriverError:
                self._rollback(txn)
                raise
            self._commit(txn)
        return rule

    # -- mutations ------------------------------------------------------------------------

    def reserve_binding(self, owner: str, request: ops.ReserveBinding, now: float) -> Binding:
        result = self.batch(owner, [request], now)[0]
        assert isinstance(result, Binding)
        return result

    def enable_rule(self, owner: str, request: ops.EnableRule, now: float) -> Rule:
        result = self.batch(owner, [request], now)[0]
        assert isinstance(result, Rule)
        return result

    def change_lifetime(self, owner: str, object_id: str, lifetime: float, now: float) -> Result:
        return self.batch(owner, [ops.ChangeLifetime(object_id, lifetime)], now)[0]

    def change_group_lifetime(self, owner: str, group: str, lifetime: float, now: float) -> Result:
        return self.batch(owner, [ops.ChangeGroupLifetime(group, lifetime)], now)[0]

    def batch(self, owner: str, requests: Sequence[ops.Op], now: float) -> list[Result]:
        """Apply several requests atomically: all of them reach the kernel in one
        transaction, or none does and the state is unchanged."""
        if not owner:
            raise AgentError(Reason.NOT_AUTHORIZED, "no owner identity")
        txn = _Txn()
        results: list[Result] = []
        try:
            for request in requests:
                resolved = ops.resolve_ref(request, requests, results)
                results.append(self._dispatch(owner, resolved, now, txn))
            if txn.change:
                self.driver.apply(plan_change(self.spec, txn.change, now))
        except DriverError:
            self._rollback(txn)
            raise
        except AgentError:
            self._rollback(txn)
            raise
        self._commit(txn)
        return results

    def expire(self, now: float) -> list[Event]:
        """Close what timed out or idled out by `now`; returns the events, oldest first."""
        txn = _Txn()
        events: list[Event] = []
        for b in sorted(self._bindings.values(), key=lambda b: b.expires_at):
            if b.expires_at <= now:
                events.append(Event(EventKind.EXPIRED, b.owner, b.group, b.id, b.expires_at))
                self._remove_binding(b, txn, now)
        for r in sorted(self._rules.values(), key=lambda r: r.expires_at):
            if r.expires_at <= now:
                events.append(Event(EventKind.EXPIRED, r.owner, r.group, r.id, r.expires_at))
                self._remove_rule(r, txn)
            elif r.max_idle is not None:
                seen = self._counters.get(r.id, Counters()).last_seen
                if seen is not None and seen + r.max_idle <= now:
                    events.append(Event(EventKind.IDLE, r.owner, r.group, r.id, now))
                    self._remove_rule(r, txn)
        try:
            if txn.change:
                self.driver.apply(plan_change(self.spec, txn.change, now))
        except DriverError:
            self._rollback(txn)
            raise
        self._commit(txn)
        return events

    def observe(self, now: float) -> list[str]:
        """Fetch kernel counters; a rule whose packet count grew was last seen at `now`.
        Returns the ids of the rules whose counters changed (or were seen the first time)."""
        return self.apply_totals(self.rule_totals(self.driver.elements()), now)

    def rule_totals(self, elements: Iterable[Element]) -> dict[str, tuple[int, int]]:
        """Packets and bytes per rule, summed over its counted elements (counting.py)."""
        return counting.rule_totals(self._element_rule, elements)

    def apply_totals(self, totals: Mapping[str, tuple[int, int]], now: float) -> list[str]:
        return counting.apply_totals(
            self._rules, self._counters, totals, now, nonzero=self._nonzero, fresh=self._fresh
        )

    # -- op handlers ----------------------------------------------------------------------

    def _dispatch(self, owner: str, request: ops.Op, now: float, txn: _Txn) -> Result:
        key = getattr(request, "idempotency_key", None)
        if key is not None:
            seen = self._idem.get((owner, key))
            if seen is not None:
                if seen[0] != request:
                    raise AgentError(Reason.CONFLICT, "idempotency key reused for another request")
                return seen[1]
        if isinstance(request, ops.ReserveBinding):
            result: Result = self._reserve(owner, request, now, txn)
        elif isinstance(request, ops.EnableRule):
            result = self._enable(owner, request, now, txn)
        elif isinstance(request, ops.ChangeLifetime):
            result = self._change_lifetime(owner, request, now, txn)
        else:
            result = self._change_group(owner, request, now, txn)
        if key is not None:
            record = (owner, key)
            self._idem[record] = (request, result)
            txn.undo.append(lambda: self._drop_idem(record))
        return result

    def _drop_idem(self, record: tuple[str, str]) -> None:
        self._idem.pop(record, None)

    def _drop_counters(self, rule_id: str) -> None:
        self._counters.pop(rule_id, None)

    def _grant(self, lifetime: float) -> float:
        if lifetime < 0:
            raise malformed("lifetime must not be negative")
        return min(lifetime, self.limits.max_lifetime)

    def _reserve(self, owner: str, req: ops.ReserveBinding, now: float, txn: _Txn) -> Binding:
        if not req.group:
            raise malformed("a binding belongs to a group")
        internal = check_ipv4(req.internal_addr, "internal address")
        check_port(req.internal_port, "internal port")
        if req.kind is BindingKind.BLOCK and not 1 <= req.block_size <= self.limits.max_block:
            raise malformed(f"block size must be 1..{self.limits.max_block}")
        if req.suggested_port is not None:
            check_port(req.suggested_port, "suggested port")
        lifetime = self._grant(req.lifetime)
        if lifetime == 0:
            raise malformed("a new binding needs a positive lifetime")
        count = port_count(req.kind, req.block_size)
        check_port(req.internal_port + count - 1, "internal port")
        existing = self.allocator.lookup(req.protocol, internal, req.internal_port)
        if existing is not None:
            # Endpoint-independent mapping (RFC 4787 REQ-1): the inside endpoint already has
            # a public one; the same call asking again gets the same binding.
            b = self._bindings[self._binding_of[id(existing)]]
            same_call = (b.owner, b.group, b.kind, b.internal_port) == (
                owner,
                req.group,
                req.kind,
                req.internal_port,
            )
            if same_call and len(b.external_ports) == count:
                return b
            raise AgentError(Reason.CONFLICT, f"{internal}:{req.internal_port} is already bound")
        alloc = self.allocator.allocate(
            owner=owner,
            group=req.group,
            protocol=req.protocol,
            internal_addr=internal,
            internal_port=req.internal_port,
            count=count,
            even=req.kind is BindingKind.RTP_PAIR,
            now=now,
            suggested_port=req.suggested_port,
            prefer_failure=req.prefer_failure,
        )
        txn.undo.append(lambda: self.allocator.release(alloc, now, quarantine=False))
        binding = Binding(
            f"b{next(self._ids)}",
            owner,
            req.group,
            req.protocol,
            internal,
            req.internal_port,
            alloc.external_addr,
            alloc.external_ports,
            req.kind,
            now + lifetime,
        )
        self._put_binding(binding, txn)
        self._allocs[binding.id] = alloc
        self._binding_of[id(alloc)] = binding.id
        self._rules_of[binding.id] = set()
        txn.undo.append(lambda: self._forget_binding(binding.id))
        txn.change += Change(put_bindings=(binding,))
        return binding

    def _enable(self, owner: str, req: ops.EnableRule, now: float, txn: _Txn) -> Rule:
        binding = self.get_binding(owner, req.binding_id)
        remote = check_ipv4(req.remote_addr, "remote address")
        if req.remote_port is not None:
            check_port(req.remote_port, "remote port")
            check_port(req.remote_port + len(binding.external_ports) - 1, "remote port")
        lifetime = self._grant(req.lifetime)
        if lifetime == 0:
            raise malformed("a new rule needs a positive lifetime")
        rules = self._rules_of[binding.id]
        if len(rules) >= self.limits.max_rules_per_binding:
            raise AgentError(Reason.QUOTA, "binding rule quota exceeded")
        for rid in rules:
            r = self._rules[rid]
            if (r.remote_addr, r.remote_port, r.direction) == (
                remote,
                req.remote_port,
                req.direction,
            ):
                raise AgentError(Reason.CONFLICT, f"rule {r.id} already opens this pinhole")
        rule = Rule(
            f"r{next(self._ids)}",
            owner,
            binding.id,
            binding.group,
            req.direction,
            remote,
            req.remote_port,
            req.max_idle,
            min(now + lifetime, binding.expires_at),
        )
        self._put_rule(rule, txn)
        txn.undo.append(lambda: self._forget_rule(rule.id))
        txn.change += Change(put_rules=((rule, binding),))
        return rule

    def _change_lifetime(
        self, owner: str, req: ops.ChangeLifetime, now: float, txn: _Txn
    ) -> Result:
        lifetime = self._grant(req.lifetime)
        if req.object_id in self._rules:
            rule = self.get_rule(owner, req.object_id)
            if lifetime == 0:
                self._remove_rule(rule, txn)
                return None
            binding = self._bindings[rule.binding_id]
            new = replace(rule, expires_at=min(now + lifetime, binding.expires_at))
            self._put_rule(new, txn)
            txn.change += Change(put_rules=((new, binding),))
            return new
        binding = self.get_binding(owner, req.object_id)
        if lifetime == 0:
            self._remove_binding(binding, txn, now)
            return None
        new_b = replace(binding, expires_at=now + lifetime)
        self._put_binding(new_b, txn)
        clamped = []
        for rid in sorted(self._rules_of[binding.id]):
            rule = self._rules[rid]
            if rule.expires_at > new_b.expires_at:
                new_r = replace(rule, expires_at=new_b.expires_at)
                self._put_rule(new_r, txn)
                clamped.append((new_r, new_b))
        txn.change += Change(put_bindings=(new_b,), put_rules=tuple(clamped))
        return new_b

    def _change_group(
        self, owner: str, req: ops.ChangeGroupLifetime, now: float, txn: _Txn
    ) -> Result:
        members = sorted(self.list_bindings(owner, req.group), key=lambda b: b.id)
        if not members:
            raise not_found("group")
        for b in members:
            self._change_lifetime(owner, ops.ChangeLifetime(b.id, req.lifetime), now, txn)
            if req.lifetime > 0:
                for rid in sorted(self._rules_of[b.id]):
                    self._change_lifetime(owner, ops.ChangeLifetime(rid, req.lifetime), now, txn)
        return None if req.lifetime == 0 else self.get_group(owner, req.group)

    # -- state primitives with undo -------------------------------------------------------

    def _put_binding(self, binding: Binding, txn: _Txn) -> None:
        old = self._bindings.get(binding.id)
        self._bindings[binding.id] = binding
        if old is not None:
            txn.undo.append(lambda: self._bindings.__setitem__(old.id, old))

    def _forget_binding(self, binding_id: str) -> None:
        self._bindings.pop(binding_id, None)
        alloc = self._allocs.pop(binding_id, None)
        if alloc is not None:
            self._binding_of.pop(id(alloc), None)
        self._rules_of.pop(binding_id, None)

    def _remove_binding(self, binding: Binding, txn: _Txn, now: float) -> None:
        # Conntrack: a binding's flows are its rules' flows -- a packet from any other
        # remote met no pinhole and was dropped before its entry was confirmed -- so each
        # rule flushes its own, by exact tuple when its remote port is known (one hash
        # lookup instead of a walk of the whole conntrack table, see conntrack.py).
        for rid in sorted(self._rules_of[binding.id]):
            self._remove_rule(self._rules[rid], txn)
        alloc = self._allocs[binding.id]
        self._forget_binding(binding.id)

        def undo() -> None:
            self._bindings[binding.id] = binding
            self._allocs[binding.id] = alloc
            self._binding_of[id(alloc)] = binding.id
            self._rules_of.setdefault(binding.id, set())

        txn.undo.append(undo)
        txn.after.append(lambda: self.allocator.release(alloc, now))
        txn.change += Change(delete_bindings=(binding,))

    def _put_rule(self, rule: Rule, txn: _Txn) -> None:
        old = self._rules.get(rule.id)
        self._rules[rule.id] = rule
        self._rules_of[rule.binding_id].add(rule.id)
        if rule.id not in self._counters:
            self._fresh.add(rule.id)
        if rule.max_idle is not None:
            self._idle.add(rule.id)
        binding = self._bindings[rule.binding_id]
        for e in rule_elements(rule, binding):
            self._element_rule[e.identity()] = rule.id
        if old is not None:
            txn.undo.append(lambda: self._rules.__setitem__(old.id, old))

    def _forget_rule(self, rule_id: str) -> None:
        rule = self._rules.pop(rule_id, None)
        if rule is None:
            return
        self._rules_of.get(rule.binding_id, set()).discard(rule_id)
        for e in rule_elements(rule, self._bindings[rule.binding_id]):
            if self._element_rule.get(e.identity()) == rule_id:
                del self._element_rule[e.identity()]

    def _remove_rule(self, rule: Rule, txn: _Txn, *, flush: bool = True) -> None:
        binding = self._bindings[rule.binding_id]
        keys = [e.identity() for e in rule_elements(rule, binding)]
        self._rules.pop(rule.id)
        self._rules_of[rule.binding_id].discard(rule.id)
        for k in keys:
            self._element_rule.pop(k, None)

        def undo() -> None:
            self._rules[rule.id] = rule
            self._rules_of.setdefault(rule.binding_id, set()).add(rule.id)
            for k in keys:
                self._element_rule[k] = rule.id

        txn.undo.append(undo)
        txn.after.append(lambda: self._drop_counters(rule.id))
        txn.change += Change(delete_rules=((rule, binding),))
        if flush:
            txn.flows.extend(_flows(binding, rule))

    def _rollback(self, txn: _Txn) -> None:
        for undo in reversed(txn.undo):
            undo()

    def _commit(self, txn: _Txn) -> None:
        for action in txn.after:
            action()
        if txn.flows and self.flusher is not None:
            try:
                self.flusher.flush(txn.flows)
            except Exception:  # the elements are gone and marked flows are dropped anyway
                log.exception("conntrack flush failed; marked flows are dropped anyway")
