from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from filter_agent import ops
from filter_agent.allocator import Allocator, PoolConfig
from filter_agent.driver import without_state
from filter_agent.drivers.fake import FakeNftDriver
from filter_agent.engine import Engine, EventKind, FlowMatch, Limits
from filter_agent.errors import AgentError, Reason
from filter_agent.model import Binding, BindingKind, Direction, Rule

PUBLIC = "203.0.113.1"
REMOTE = "203.0.113.20"


class RecordingFlusher:
    """Stands in for ctnetlink: remembers which flows it was asked to delete."""

    def __init__(self) -> None:
        self.flows: list[FlowMatch] = []

    def flush(self, flows: Any) -> None:
        self.flows.extend(flows)


def make(**limits: Any) -> tuple[Engine, FakeNftDriver, RecordingFlusher]:
    fake = FakeNftDriver()
    flusher = RecordingFlusher()
    alloc = Allocator(PoolConfig((PUBLIC,), 20000, 20099), random.Random(5))
    engine = Engine(alloc, fake, limits=Limits(**limits), flusher=flusher)
    engine.setup()
    return engine, fake, flusher


def reserve(
    engine: Engine,
    port: int = 4000,
    group: str = "call1",
    owner: str = "alg",
    now: float = 0.0,
    **kw: Any,
) -> Binding:
    return engine.reserve_binding(owner, ops.ReserveBinding(group, "10.77.0.10", port, **kw), now)


def enable(
    engine: Engine,
    b: Binding,
    remote_port: int | None = 5000,
    owner: str = "alg",
    now: float = 0.0,
    **kw: Any,
) -> Rule:
    return engine.enable_rule(owner, ops.EnableRule(b.id, REMOTE, remote_port, **kw), now)


def kernel_sets(fake: FakeNftDriver) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in fake.elements():
        out[e.set] = out.get(e.set, 0) + 1
    return out


def test_a_call_end_to_end_golden(golden: Any) -> None:
    engine, fake, flusher = make()
    b = reserve(engine, lifetime=300)
    r = enable(engine, b, lifetime=120)
    assert b.kind is BindingKind.RTP_PAIR and b.external_addr == PUBLIC
    assert r.expires_at == 120 and r.direction is Direction.BOTH
    golden("engine_call_dump.txt", fake.dump())
    assert engine.change_group_lifetime("alg", "call1", 0, now=10) is None
    assert fake.elements() == ()
    assert engine.list_bindings("alg") == [] and engine.list_rules("alg") == []
    assert {f.internal_port for f in flusher.flows} == {4000, 4001}
    golden("engine_call_log.json", [tx if isinstance(tx, dict) else tx.text for tx in fake.log[1:]])


def test_granted_lifetime_is_capped_and_rule_never_outlives_binding() -> None:
    engine, fake, _ = make(max_lifetime=100)
    b = reserve(engine, lifetime=1000)
    assert b.expires_at == 100
    r = enable(engine, b, lifetime=100, now=50)
    assert r.expires_at == 100
    shorter = engine.change_lifetime("alg", b.id, 20, now=60)
    assert isinstance(shorter, Binding) and shorter.expires_at == 80
    assert engine.get_rule("alg", r.id).expires_at == 80
    assert {e.timeout for e in fake.elements()} == {20}


def test_other_owner_sees_not_found() -> None:
    engine, _, _ = make()
    b = reserve(engine)
    for call in (
        lambda: engine.get_binding("mallory", b.id),
        lambda: enable(engine, b, owner="mallory"),
        lambda: engine.change_lifetime("mallory", b.id, 0, now=1),
        lambda: engine.change_group_lifetime("mallory", "call1", 0, now=1),
    ):
        with pytest.raises(AgentError) as err:
            call()
        assert err.value.reason is Reason.NOT_FOUND
    assert engine.get_binding("alg", b.id) == b


def test_idempotency_key_returns_same_result_and_changes_nothing() -> None:
    engine, fake, _ = make()
    first = reserve(engine, idempotency_key="k1")
    applied = len(fake.log)
    again = reserve(engine, idempotency_key="k1", now=3)
    assert again == first and len(fake.log) == applied
    with pytest.raises(AgentError) as err:
        reserve(engine, port=6000, idempotency_key="k1")
    assert err.value.reason is Reason.CONFLICT


def test_endpoint_independent_mapping_same_binding_for_same_inside_endpoint() -> None:
    engine, _, _ = make()
    b = reserve(engine)
    r1 = enable(engine, b, remote_port=5000)
    r2 = engine.enable_rule("alg", ops.EnableRule(b.id, "203.0.113.30", 7000), 0)
    assert reserve(engine) == b  # same call asks again: same public endpoint
    assert r1.binding_id == r2.binding_id == b.id
    with pytest.raises(AgentError) as err:
        reserve(engine, group="call2")
    assert err.value.reason is Reason.CONFLICT


def test_duplicate_rule_is_conflict() -> None:
    engine, _, _ = make()
    b = reserve(engine)
    enable(engine, b)
    with pytest.raises(AgentError) as err:
        enable(engine, b)
    assert err.value.reason is Reason.CONFLICT


def test_release_binding_quarantines_ports_and_flushes_conntrack() -> None:
    engine, fake, flusher = make()
    b = reserve(engine, suggested_port=20010, prefer_failure=True)
    enable(engine, b)
    engine.change_lifetime("alg", b.id, 0, now=5)
    assert fake.elements() == ()
    assert flusher.flows and all(f.external_addr == PUBLIC for f in flusher.flows)
    with pytest.raises(AgentError) as err:
        reserve(engine, port=6000, suggested_port=20010, prefer_failure=True, now=100)
    assert err.value.reason is Reason.CANNOT_PROVIDE_EXTERNAL
    assert reserve(engine, port=6000, suggested_port=20010, prefer_failure=True, now=125)


def test_driver_failure_rolls_back_everything() -> None:
    engine, fake, _ = make()
    b = reserve(engine)
    r = enable(engine, b)
    before_kernel = fake.elements()
    before_free = engine.allocator.free_ports(PUBLIC, b.protocol, now=0)
    fake.fail_next = "netlink: Resource busy"
    with pytest.raises(AgentError) as err:
        engine.batch(
            "alg",
            [
                ops.ReserveBinding("call2", "10.77.0.11", 4000),
                ops.ChangeLifetime(r.id, 0),
                ops.ChangeLifetime(b.id, 900),
            ],
            1,
        )
    assert err.value.reason is Reason.NETWORK_FAILURE
    assert fake.elements() == before_kernel
    assert engine.list_bindings("alg") == [b] and engine.list_rules("alg") == [r]
    assert engine.allocator.free_ports(PUBLIC, b.protocol, now=0) == before_free
    fake.fail_next = "again"
    with pytest.raises(AgentError):
        engine.change_group_lifetime("alg", "call1", 0, now=1)
    assert engine.get_rule("alg", r.id) == r
    engine.change_group_lifetime("alg", "call1", 0, now=1)  # a retry then works
    assert fake.elements() == ()


def test_batch_is_atomic_on_a_refused_op() -> None:
    engine, fake, _ = make()
    applied = len(fake.log)
    with pytest.raises(AgentError) as err:
        engine.batch(
            "alg",
            [ops.ReserveBinding("c", "10.77.0.10", 4000), ops.EnableRule("b999", REMOTE, 5000)],
            0,
        )
    assert err.value.reason is Reason.NOT_FOUND
    assert len(fake.log) == applied and engine.list_bindings("alg") == []
    # The ports of the undone reservation are free again at once (no quarantine).
    assert engine.allocator.free_ports(PUBLIC, reserve(engine).protocol, now=0) == 98


def test_batch_can_use_ids_it_creates() -> None:
    engine, fake, _ = make()
    b = reserve(engine, port=4100)
    results = engine.batch(
        "alg",
        [
            ops.EnableRule(b.id, REMOTE, 5000),
            ops.EnableRule(b.id, "203.0.113.30", None, Direction.INBOUND),
        ],
        0,
    )
    assert [type(x) for x in results] == [Rule, Rule]
    assert kernel_sets(fake) == {"dnat4": 2, "snat4": 2, "in4": 2, "out4": 2, "in4a": 2}


def test_expire_emits_events_and_removes_elements() -> None:
    engine, fake, _ = make()
    b = reserve(engine, lifetime=100)
    r = enable(engine, b, lifetime=30)
    assert engine.next_timer() == 30
    assert engine.expire(now=29) == []
    fake.now = 30
    events = engine.expire(now=30)
    assert [(e.kind, e.object_id) for e in events] == [(EventKind.EXPIRED, r.id)]
    assert kernel_sets(fake) == {"dnat4": 2, "snat4": 2}
    events = engine.expire(now=100)
    assert [(e.kind, e.object_id) for e in events] == [(EventKind.EXPIRED, b.id)]
    assert fake.elements() == () and engine.next_timer() is None


def test_counters_and_idle_rules() -> None:
    engine, fake, _ = make()
    b = reserve(engine, lifetime=300)
    r = enable(engine, b, lifetime=300, max_idle=20)
    engine.observe(now=0)
    fake.count("in4", ("udp", "10.77.0.10", 4000, REMOTE, 5000), 10, 1720)
    fake.count("out4", ("udp", "10.77.0.10", 4001, REMOTE, 5001), 2, 200)
    engine.observe(now=15)
    c = engine.counters("alg", r.id)
    assert (c.packets, c.bytes, c.last_seen) == (12, 1920, 15)
    assert engine.counters("alg", b.id) == c == engine.counters("alg", "call1")
    assert engine.expire(now=30) == []
    engine.observe(now=34)  # no new packets
    events = engine.expire(now=35)
    assert [(e.kind, e.object_id) for e in events] == [(EventKind.IDLE, r.id)]
    assert engine.list_rules("alg") == []


def test_reconcile_rebuilds_a_vanished_table() -> None:
    engine, fake, _ = make()
    b = reserve(engine, lifetime=300)
    enable(engine, b, lifetime=100)
    before = without_state(fake.elements())
    assert engine.reconcile(now=0) is False
    fake.delete_table_behind_our_back()
    assert engine.reconcile(now=0) is True
    assert without_state(fake.elements()) == before


def test_a_rebuild_deletes_the_conntrack_entries_of_every_live_binding() -> None:
    # entries tracked while the table was gone carry a no-NAT decision (see reconcile)
    engine, fake, flusher = make()
    b = reserve(engine, port=4000, lifetime=300)
    enable(engine, b, lifetime=100)
    other = reserve(engine, port=4010, group="call2", lifetime=300)
    fake.delete_table_behind_our_back()
    assert engine.reconcile(now=0) is True
    flushed = {
        (f.internal_port, f.external_port, f.remote_addr, f.marked_only) for f in flusher.flows
    }
    pairs = [pair for binding in (b, other) for pair in binding.port_pairs()]
    expected = {(inside, public, None, False) for inside, public in pairs}
    assert flushed == expected


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ops.ReserveBinding("g", "10.77.0.999", 4000), Reason.MALFORMED),
        (ops.ReserveBinding("g", "10.77.0.10", 0), Reason.MALFORMED),
        (ops.ReserveBinding("g", "10.77.0.10", 65535), Reason.MALFORMED),  # pair needs 2
        (ops.ReserveBinding("g", "10.77.0.10", 4000, lifetime=0), Reason.MALFORMED),
        (ops.ReserveBinding("", "10.77.0.10", 4000), Reason.MALFORMED),
        (
            ops.ReserveBinding("g", "10.77.0.10", 4000, kind=BindingKind.BLOCK, block_size=65),
            Reason.MALFORMED,
        ),
        (ops.ReserveBinding("g", "2001:db8::1", 4000), Reason.MALFORMED),
    ],
)
def test_malformed_requests(request_: ops.ReserveBinding, reason: Reason) -> None:
    engine, _, _ = make()
    with pytest.raises(AgentError) as err:
        engine.reserve_binding("alg", request_, 0)
    assert err.value.reason is reason


def test_no_owner_is_not_authorized() -> None:
    engine, _, _ = make()
    with pytest.raises(AgentError) as err:
        engine.batch("", [ops.ReserveBinding("g", "10.77.0.10", 4000)], 0)
    assert err.value.reason is Reason.NOT_AUTHORIZED


def test_group_lifetime_change_refreshes_all_members() -> None:
    engine, fake, _ = make()
    b1 = reserve(engine, port=4000, lifetime=100)
    b2 = reserve(engine, port=4002, lifetime=100, kind=BindingKind.SINGLE)
    enable(engine, b1, lifetime=50)
    group = engine.change_group_lifetime("alg", "call1", 600, now=10)
    assert group is not None and group.expires_at == 610
    assert {b.expires_at for b in engine.list_bindings("alg")} == {610}
    assert {r.expires_at for r in engine.list_rules("alg")} == {610}
    assert {e.timeout for e in fake.elements()} == {600}
    assert engine.list_groups("alg")[0].id == "call1" and b2.external_addr == b1.external_addr


def test_batch_binding_ref_opens_the_binding_reserved_earlier_in_the_batch() -> None:
    engine, fake, _ = make()
    reserve = ops.ReserveBinding("c1", "10.77.0.10", 4000, lifetime=60)
    by_ref = ops.EnableRule("", "203.0.113.20", 5000, lifetime=60, binding_ref=0)
    b, r = engine.batch("alg", [reserve, by_ref], 0)
    assert isinstance(b, Binding) and isinstance(r, Rule) and r.binding_id == b.id
    before = fake.dump()
    for bad in ([by_ref], [reserve, ops.ChangeLifetime(b.id, 60), replace(by_ref, binding_ref=1)]):
        with pytest.raises(AgentError) as info:
            engine.batch("alg", bad, 1)
        assert info.value.reason is Reason.MALFORMED
    assert fake.dump() == before  # all or nothing
