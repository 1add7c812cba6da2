"""The in-memory test double keeps FCP's promises (ARCHITECTURE §4) without any network."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from fcp_testing import FakeClock, make_config

from fcp.errors import FcpError, Reason
from fcp.memory_backend import MemoryBackend
from fcp.types import (
    BatchRequest,
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    EventKind,
    GroupLifetimeChange,
    IpVersion,
    LifetimeChange,
    LifetimeTarget,
    Pool,
    RuleRequest,
    SessionRequest,
    TransportProtocol,
)

pytestmark = pytest.mark.asyncio

UA = ipaddress.IPv4Address("10.77.0.10")
PEER = ipaddress.IPv4Address("198.51.100.20")
OWNER = "alg-1"


def req(
    group: str = "g", port: int = 40000, kind: BindingKind = BindingKind.RTP_PAIR, **kw: object
) -> BindingRequest:
    fields: dict[str, object] = {"lifetime_seconds": 60}
    fields.update(kw)
    return BindingRequest(group, Endpoint(UA, port), TransportProtocol.UDP, kind, **fields)  # type: ignore[arg-type]


def tiny(clock: FakeClock, ports: tuple[int, int] = (20000, 20003), **kw: object) -> MemoryBackend:
    pool = Pool("p", IpVersion.V4, (ipaddress.IPv4Address("203.0.113.10"),), *ports)
    return MemoryBackend(make_config(**kw).__class__(pools=(pool,), **kw), clock=clock)  # type: ignore[arg-type]


async def expect(reason: Reason, awaitable: object) -> FcpError:
    with pytest.raises(FcpError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.reason is reason, info.value
    return info.value


async def test_rtp_pairs_are_even_odd_and_share_the_groups_address(
    backend: MemoryBackend,
) -> None:
    bindings = [await backend.reserve_binding(OWNER, req(port=40000 + 2 * i)) for i in range(8)]
    assert len({b.external_address for b in bindings}) == 1  # one public address per call
    for b in bindings:
        assert b.external_ports[0] % 2 == 0 and b.external_ports[1] == b.external_ports[0] + 1
    other = await backend.reserve_binding(
        OWNER, req("g2", port=41000, kind=BindingKind.BLOCK, block_size=5)
    )
    assert len(other.external_ports) == 5
    assert other.external_ports == tuple(
        range(other.external_ports[0], other.external_ports[0] + 5)
    )


async def test_endpoint_independent_mapping_and_conflicts(backend: MemoryBackend) -> None:
    first = await backend.reserve_binding(OWNER, req())
    assert await backend.reserve_binding(OWNER, req()) == first  # same inside endpoint
    await expect(Reason.CONFLICT, backend.reserve_binding(OWNER, req("other-call")))
    await backend.reserve_binding(OWNER, req(idempotency_key="k", port=40100))
    error = await expect(
        Reason.CONFLICT, backend.reserve_binding(OWNER, req(idempotency_key="k", port=40200))
    )
    assert error.field == "idempotency_key"


async def test_suggested_port_prefer_failure_and_exhaustion(clock: FakeClock) -> None:
    backend = tiny(clock)  # ports 20000..20003: room for two pairs
    a = await backend.reserve_binding(OWNER, req(port=40000, suggested_external_port=20002))
    assert a.external_ports == (20002, 20003)
    await expect(
        Reason.CANNOT_PROVIDE_EXTERNAL,
        backend.reserve_binding(
            OWNER, req(port=40010, suggested_external_port=20002, prefer_failure=True)
        ),
    )
    b = await backend.reserve_binding(OWNER, req(port=40010, suggested_external_port=20002))
    assert b.external_ports == (20000, 20001)  # another port instead of failing
    await expect(Reason.NO_PORTS, backend.reserve_binding(OWNER, req(port=40020)))


async def test_freed_ports_are_quarantined_for_120_seconds(clock: FakeClock) -> None:
    backend = tiny(clock, (20000, 20001))
    first = await backend.reserve_binding(OWNER, req())
    await backend.change_group_lifetime(OWNER, GroupLifetimeChange("g", 0))
    error = await expect(Reason.NO_PORTS, backend.reserve_binding(OWNER, req("g2")))
    assert error.retry_after == pytest.approx(120)
    clock.advance(120)
    again = await backend.reserve_binding(OWNER, req("g2"))
    assert again.external_ports == first.external_ports


async def test_port_usage_counts_bound_and_quarantined_ports(clock: FakeClock) -> None:
    backend = tiny(clock, (20000, 20009))
    await backend.reserve_binding(OWNER, req("g1", 40000))
    await backend.reserve_binding(OWNER, req("g2", 40002))
    await backend.change_group_lifetime(OWNER, GroupLifetimeChange("g1", 0))

    async def usage() -> dict[TransportProtocol, tuple[int, int, int, int]]:
        (address,) = await backend.get_external_addresses(OWNER)
        return {u.protocol: (u.total, u.bound, u.quarantined, u.free) for u in address.port_usage}

    assert await usage() == {
        TransportProtocol.UDP: (10, 2, 2, 6),
        TransportProtocol.TCP: (10, 0, 0, 10),
    }
    clock.advance(120)
    assert (await usage())[TransportProtocol.UDP] == (10, 2, 0, 8)


async def test_quotas_and_capabilities(clock: FakeClock) -> None:
    backend = tiny(clock, (20000, 29999), max_bindings_per_group=2, max_block_size=4)
    await backend.reserve_binding(OWNER, req(port=40000))
    await backend.reserve_binding(OWNER, req(port=40002))
    await expect(Reason.QUOTA, backend.reserve_binding(OWNER, req(port=40004)))
    await expect(
        Reason.UNSUPPORTED,
        backend.reserve_binding(OWNER, req("g2", kind=BindingKind.BLOCK, block_size=5, port=41000)),
    )
    v6 = BindingRequest(
        "g3",
        Endpoint(ipaddress.IPv6Address("fd00::1"), 4000),
        TransportProtocol.UDP,
        BindingKind.SINGLE,
        60,
    )
    await expect(Reason.NO_ADDRESSES, backend.reserve_binding(OWNER, v6))


async def test_lifetimes_are_clamped_and_expire(backend: MemoryBackend, clock: FakeClock) -> None:
    binding = await backend.reserve_binding(OWNER, req(lifetime_seconds=10**6))
    assert binding.lifetime_seconds == 3600
    rule = await backend.enable_rule(
        OWNER, RuleRequest(binding.binding_id, Direction.INBOUND, PEER, 10**6, max_idle_seconds=30)
    )
    assert rule.lifetime_seconds == 3600
    clock.advance(29)
    backend.record_traffic(rule.rule_id, 1, 100)
    clock.advance(29)
    assert (await backend.get_rule(OWNER, rule.rule_id)).counters.packets == 1  # not idle yet
    clock.advance(2)
    await expect(Reason.NOT_FOUND, backend.get_rule(OWNER, rule.rule_id))  # idle: gone
    clock.advance(3600)
    assert await backend.list_bindings(OWNER) == []
    assert await backend.list_groups(OWNER) == []


async def test_releasing_a_binding_releases_its_rules(backend: MemoryBackend) -> None:
    binding = await backend.reserve_binding(OWNER, req())
    await backend.enable_rule(OWNER, RuleRequest(binding.binding_id, Direction.INBOUND, PEER, 60))
    grant = await backend.change_lifetime(
        OWNER, LifetimeChange(LifetimeTarget.BINDING, binding.binding_id, 0)
    )
    assert grant.lifetime_seconds == 0
    assert await backend.list_rules(OWNER) == [] and await backend.list_groups(OWNER) == []


async def test_batch_atomic_and_idempotent(backend: MemoryBackend) -> None:
    ok = BatchRequest((req("g1", 40000), req("g1", 40002)), idempotency_key="b1")
    results = await backend.batch(OWNER, ok)
    assert await backend.batch(OWNER, ok) == results  # replayed, not re-applied
    assert len(await backend.list_bindings(OWNER)) == 2
    bad = BatchRequest(
        (req("g2", 41000), GroupLifetimeChange("g1", 0), req("g2", 41000, kind=BindingKind.SINGLE))
    )
    error = await expect(Reason.CONFLICT, backend.batch(OWNER, bad))
    assert error.operation_index == 2
    assert {b.group_id for b in await backend.list_bindings(OWNER)} == {"g1"}


async def test_session_incarnations_and_release_previous(backend: MemoryBackend) -> None:
    first = await backend.open_session(OWNER, SessionRequest("run-1"))
    assert first.previous_incarnation_id is None and first.epoch == 1111
    await backend.reserve_binding(OWNER, req())
    second = await backend.open_session(OWNER, SessionRequest("run-2", release_previous_state=True))
    assert second.previous_incarnation_id == "run-1"
    assert await backend.list_bindings(OWNER) == []


async def test_watch_events_and_admin_removal(backend: MemoryBackend) -> None:
    events = backend.watch_events(OWNER)
    started = await anext(events)
    assert started.kind is EventKind.WATCH_STARTED and backend.watcher_count == 1
    binding = await backend.reserve_binding(OWNER, req())
    rule = await backend.enable_rule(
        OWNER, RuleRequest(binding.binding_id, Direction.INBOUND, PEER, 60)
    )
    backend.remove_by_admin(rule.rule_id)
    removed = await anext(events)
    assert (removed.kind, removed.rule_id) == (EventKind.REMOVED_BY_ADMIN, rule.rule_id)
    assert removed.sequence > started.sequence
    backend.close()
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    assert backend.watcher_count == 0


async def test_batch_binding_ref_names_an_earlier_reservation(backend: MemoryBackend) -> None:
    by_ref = RuleRequest("", Direction.INBOUND, PEER, 60, 5000, binding_ref=0)
    binding, rule = await backend.batch(OWNER, BatchRequest((req("g1", 40000), by_ref)))
    assert rule.binding_id == binding.binding_id  # type: ignore[union-attr]
    await expect(Reason.MALFORMED, backend.enable_rule(OWNER, by_ref))
    for bad in (
        (by_ref,),  # nothing before it
        (req("g2", 40100), GroupLifetimeChange("g2", 60), replace(by_ref, binding_ref=1)),
    ):
        with pytest.raises(FcpError) as info:
            BatchRequest(bad)
        assert info.value.reason is Reason.MALFORMED
    with pytest.raises(FcpError):
        RuleRequest("b-1", Direction.INBOUND, PEER, 60, binding_ref=0)  # both
