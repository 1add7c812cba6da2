"""Capture and restore the engine's state: the one module (besides the engine and the
allocator themselves) that knows their internals.

A restarted agent must come back with the very same bindings (ids, public ports, owners,
expiry), rules, counters, id sequence and port quarantine, so that nothing the ALG holds
becomes wrong and no port in use or in quarantine is handed out twice (RFC 4787 REQ-1
mappings stay put; FCP's 120 s reuse delay survives the restart). The engine has no public
API for that, so it lives here, next to a round-trip test that fails as soon as either
class grows state this module does not carry. (Promoting `restore` to methods of `Engine`
and `Allocator` is the natural next step once the concurrent engine work has landed.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from filter_agent.allocator import Allocation, Allocator, _GroupState
from filter_agent.engine import Engine
from filter_agent.model import Binding, Counters, Protocol, Rule
from filter_agent.plan import rule_elements


@dataclass(frozen=True)
class QuarantinedPort:
    deadline: float  # engine clock
    address: str
    protocol: Protocol
    port: int


@dataclass(frozen=True)
class EngineState:
    bindings: tuple[Binding, ...]
    rules: tuple[Rule, ...]
    counters: Mapping[str, Counters]
    next_id: int
    quarantine: tuple[QuarantinedPort, ...]


def all_bindings(engine: Engine) -> Iterable[Binding]:
    """Every owner's bindings (for admin views and recovery)."""
    return list(engine._bindings.values())


def all_rules(engine: Engine) -> Iterable[Rule]:
    return list(engine._rules.values())


def find_binding(engine: Engine, binding_id: str) -> Binding | None:
    return engine._bindings.get(binding_id)


def find_rule(engine: Engine, rule_id: str) -> Rule | None:
    return engine._rules.get(rule_id)


def rules_of(engine: Engine, binding_id: str) -> list[Rule]:
    """A binding's rules, without scanning every rule (the engine indexes them)."""
    return [engine._rules[r] for r in sorted(engine._rules_of.get(binding_id, ()))]


def rule_counters(engine: Engine, rule_id: str) -> Counters:
    """A rule's counters as of the last observe (no owner check: callers did it)."""
    return engine._counters.get(rule_id, Counters())


def object_count(engine: Engine) -> int:
    return len(engine._bindings) + len(engine._rules)


def id_number(object_id: str) -> int:
    """`b12` / `r13` -> 12 / 13 (the engine's one id sequence)."""
    digits = object_id[1:]
    return int(digits) if digits.isdigit() else 0


def next_id(engine: Engine) -> int:
    n = next(engine._ids)
    engine._ids = itertools.count(n)  # peeked, not consumed
    return n


def capture(engine: Engine) -> EngineState:
    allocator = engine.allocator
    return EngineState(
        tuple(sorted(engine._bindings.values(), key=lambda b: id_number(b.id))),
        tuple(sorted(engine._rules.values(), key=lambda r: id_number(r.id))),
        dict(engine._counters),
        next_id(engine),
        tuple(QuarantinedPort(d, a, p, port) for d, a, p, port in allocator._quarantine),
    )


def _restore_allocation(allocator: Allocator, binding: Binding) -> Allocation:
    allocation = Allocation(
        binding.owner,
        binding.group,
        binding.protocol,
        binding.internal_addr,
        binding.internal_port,
        binding.external_addr,
        binding.external_ports,
    )
    space = allocator._space(binding.external_addr, binding.protocol)
    for port in binding.external_ports:
        space.take(port)
    for i in range(len(binding.external_ports)):
        key = (binding.protocol, binding.internal_addr, binding.internal_port + i)
        allocator._by_inside[key] = allocation
    group = allocator._groups.setdefault(
        (binding.owner, binding.group), _GroupState(binding.external_addr)
    )
    group.ports += len(binding.external_ports)
    allocator._owner_ports[binding.owner] += len(binding.external_ports)
    return allocation


def restore(engine: Engine, state: EngineState) -> None:
    """Load `state` into a fresh engine (and its fresh allocator). Rules whose binding is
    missing are skipped: a rule never outlives its binding."""
    if engine._bindings or engine._rules:
        raise ValueError("restore needs a fresh engine")
    allocator = engine.allocator
    for q in sorted(state.quarantine, key=lambda q: q.deadline):
        allocator.restore_quarantined(q.deadline, q.address, q.protocol, q.port)
    for b in state.bindings:
        allocation = _restore_allocation(allocator, b)
        engine._bindings[b.id] = b
        engine._allocs[b.id] = allocation
        engine._binding_of[id(allocation)] = b.id
        engine._rules_of[b.id] = set()
    for r in state.rules:
        binding = engine._bindings.get(r.binding_id)
        if binding is None:
            continue
        engine._rules[r.id] = r
        engine._rules_of[r.binding_id].add(r.id)
        if r.max_idle is not None:
            engine._idle.add(r.id)
        for element in rule_elements(r, binding):
            engine._element_rule[element.identity()] = r.id
        counters = state.counters.get(r.id)
        if counters is not None:
            engine._counters[r.id] = counters
            if counters.packets or counters.bytes:
                engine._nonzero.add(r.id)
        else:
            engine._fresh.add(r.id)
    ids = [b.id for b in state.bindings] + [r.id for r in state.rules]
    highest = max((id_number(i) for i in ids), default=0)
    engine._ids = itertools.count(max(state.next_id, highest + 1))
