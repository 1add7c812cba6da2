"""The agent's mutation helpers, as functions over the engine: FCP request -> engine op,
which objects a call touched and how to persist them, which op of a failed batch failed,
and whom an operator's change acts on. `AgentService._mutate` strings them together."""

from __future__ import annotations

from dataclasses import replace

from fcp import types as f
from fcp.errors import FcpError, Reason, not_found
from filter_agent import model as m
from filter_agent import ops, snapshot
from filter_agent.engine import Engine
from filter_agent.errors import AgentError
from filter_agent.snapshot import QuarantinedPort
from filter_agent.store import StoreTxn
from filter_agent.translate import QUALIFIER, enable_op, reserve_op
from filter_agent.wiring import DryRun, DryRunDriver

Touched = dict[str, m.Binding | m.Rule | None]  # id -> the object before the call (None: new)


def admin_target(engine: Engine, request: f.BatchOperation) -> tuple[str, f.BatchOperation]:
    """Which owner an admin request acts on, and the request in that owner's terms."""
    if isinstance(request, f.GroupLifetimeChange):
        owner, sep, group = request.group_id.partition(QUALIFIER)
        if not sep or not group:
            raise not_found("group", request.group_id)
        return owner, replace(request, group_id=group)
    if isinstance(request, f.LifetimeChange):
        found: m.Binding | m.Rule | None = (
            snapshot.find_rule(engine, request.target_id)
            if request.target is f.LifetimeTarget.RULE
            else snapshot.find_binding(engine, request.target_id)
        )
        if found is None:
            raise not_found(request.target.value, request.target_id)
        return found.owner, request
    raise FcpError(Reason.NOT_AUTHORIZED, "admin identities do not create objects")


def engine_op(
    engine: Engine,
    owner: str,
    request: f.BatchOperation,
    before: Touched,
    group_sizes: list[tuple[int, int]],
    *,
    pool: str,
    draining: bool,
) -> ops.Op:
    """The engine op for an FCP request; notes in `before` which objects it may change."""
    if isinstance(request, f.BindingRequest | f.RuleRequest):
        if draining:
            raise FcpError(Reason.NETWORK_FAILURE, "agent is draining", retry_after=1.0)
        if isinstance(request, f.BindingRequest):
            return reserve_op(request, pool)
        return enable_op(request)
    if isinstance(request, f.LifetimeChange):
        prefix = "r" if request.target is f.LifetimeTarget.RULE else "b"
        if not request.target_id.startswith(prefix):
            raise not_found(request.target.value, request.target_id)
        found = (
            snapshot.find_rule(engine, request.target_id)
            if prefix == "r"
            else snapshot.find_binding(engine, request.target_id)
        )
        if found is not None and found.owner == owner:
            before[found.id] = found
            if isinstance(found, m.Binding):
                for r in snapshot.rules_of(engine, found.id):
                    before[r.id] = r
        return ops.ChangeLifetime(request.target_id, float(request.lifetime_seconds))
    members = engine.list_bindings(owner, request.group_id)
    nrules = 0
    for b in members:
        before[b.id] = b
        for r in snapshot.rules_of(engine, b.id):
            before[r.id] = r
            nrules += 1
    group_sizes.append((len(members), nrules))
    return ops.ChangeGroupLifetime(request.group_id, float(request.lifetime_seconds))


def failing_index(engine: Engine, owner: str, eops: list[ops.Op], now: float) -> int | None:
    """Which op of a failed batch fails: replay growing prefixes against a driver that
    refuses everything (the engine rolls back every time). Error path only."""
    real, engine.driver = engine.driver, DryRunDriver()
    try:
        for i in range(1, len(eops) + 1):
            try:
                engine.batch(owner, eops[:i], now)
            except DryRun:
                continue
            except AgentError:
                return i - 1
        return None
    finally:
        engine.driver = real


def persist(engine: Engine, txn: StoreTxn, before: Touched, deadline: float) -> None:
    """Write what a call changed: every touched id either exists now or is gone; ports of
    released bindings go to quarantine until `deadline`."""
    put_b, put_r, del_b, del_r = [], [], [], []
    freed: list[QuarantinedPort] = []
    for oid, old in before.items():
        b = snapshot.find_binding(engine, oid)
        if b is not None:
            put_b.append(b)
            continue
        r = snapshot.find_rule(engine, oid)
        if r is not None:
            put_r.append(r)
        elif oid.startswith("b"):
            del_b.append(oid)
            if isinstance(old, m.Binding):
                freed.extend(
                    QuarantinedPort(deadline, old.external_addr, old.protocol, port)
                    for port in old.external_ports
                )
        else:
            del_r.append(oid)
    txn.put_bindings(put_b)
    txn.put_rules(put_r)
    txn.delete_rules(del_r)
    txn.delete_bindings(del_b)
    txn.quarantine(freed)


def removed(engine: Engine, before: Touched) -> list[m.Binding | m.Rule]:
    """The objects that existed before a call and are gone after it."""
    return [
        old
        for oid, old in before.items()
        if old is not None
        and snapshot.find_binding(engine, oid) is None
        and snapshot.find_rule(engine, oid) is None
    ]
