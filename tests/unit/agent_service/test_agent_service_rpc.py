"""The agent service behind the real FCP server (mTLS on 127.0.0.1), over the fake kernel."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
from agent_service_testing import PUBLIC, WALL_OFFSET, Kernel

from fcp.client import ClientTls
from fcp.errors import FcpError, Reason
from fcp.types import (
    Binding,
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    EventKind,
    GroupLifetimeChange,
    LifetimeChange,
    LifetimeTarget,
    Rule,
    RuleRequest,
    TransportProtocol,
)
from filter_agent.service import AgentService

pytestmark = pytest.mark.asyncio

INSIDE = ipaddress.IPv4Address("10.77.0.10")
REMOTE = ipaddress.IPv4Address("203.0.113.20")


def reserve(group: str = "call-1", port: int = 4000, **kw: Any) -> BindingRequest:
    kw.setdefault("lifetime_seconds", 60)
    return BindingRequest(
        group, Endpoint(INSIDE, port), TransportProtocol.UDP, BindingKind.RTP_PAIR, **kw
    )


def enable(binding_id: str, **kw: Any) -> RuleRequest:
    kw.setdefault("lifetime_seconds", 60)
    return RuleRequest(binding_id, Direction.BIDIRECTIONAL, REMOTE, remote_port=5000, **kw)


def kernel_sets(kernel: Kernel) -> set[str]:
    return {e.set for e in kernel.driver.elements()}


async def test_reserve_and_enable_program_the_kernel(connect: Any, kernel: Kernel) -> None:
    client = await connect()
    session = await client.open_session()
    assert session.owner == "alg-1"
    assert session.capabilities.pools[0].external_addresses == (ipaddress.IPv4Address(PUBLIC),)
    binding = await client.reserve_binding(reserve())
    assert binding.external_address == ipaddress.IPv4Address(PUBLIC)
    assert binding.external_ports[0] % 2 == 0
    assert binding.external_ports[1] == binding.external_ports[0] + 1
    assert binding.lifetime_seconds == 60
    assert binding.expires_at == pytest.approx(kernel.clock.now + 60 + WALL_OFFSET)
    rule = await client.enable_rule(enable(binding.binding_id))
    assert rule.binding_id == binding.binding_id
    assert kernel_sets(kernel) == {"dnat4", "snat4", "in4", "out4"}
    assert [b.binding_id for b in await client.list_bindings()] == [binding.binding_id]
    group = await client.get_group("call-1")
    assert group.binding_ids == (binding.binding_id,)
    assert group.rule_ids == (rule.rule_id,)


async def test_lifetime_is_clamped_and_release_empties_the_kernel(
    connect: Any, kernel: Kernel
) -> None:
    client = await connect()
    binding = await client.reserve_binding(reserve(lifetime_seconds=100_000))
    assert binding.lifetime_seconds == 600  # max_lifetime
    await client.enable_rule(enable(binding.binding_id))
    grant = await client.release_group("call-1")
    assert (grant.lifetime_seconds, grant.bindings, grant.rules) == (0, 1, 1)
    assert kernel.driver.elements() == ()
    with pytest.raises(FcpError) as info:
        await client.get_binding(binding.binding_id)
    assert info.value.reason is Reason.NOT_FOUND


async def test_idempotent_retry_returns_the_first_result(connect: Any) -> None:
    client = await connect()
    first = await client.reserve_binding(reserve(idempotency_key="k1"))
    again = await client.reserve_binding(reserve(idempotency_key="k1"))
    assert again == first
    with pytest.raises(FcpError) as info:
        await client.reserve_binding(reserve(port=4100, idempotency_key="k1"))
    assert info.value.reason is Reason.CONFLICT
    assert len(await client.list_bindings()) == 1


async def test_objects_of_another_owner_are_not_found(connect: Any) -> None:
    alg1, alg2 = await connect("alg-1"), await connect("alg-2")
    binding = await alg1.reserve_binding(reserve())
    for call in (
        alg2.get_binding(binding.binding_id),
        alg2.enable_rule(enable(binding.binding_id)),
        alg2.change_lifetime(LifetimeChange(LifetimeTarget.BINDING, binding.binding_id, 0)),
        alg2.release_group("call-1"),
    ):
        with pytest.raises(FcpError) as info:
            await call
        assert info.value.reason is Reason.NOT_FOUND
    assert await alg2.list_bindings() == []
    assert (await alg1.get_binding(binding.binding_id)).binding_id == binding.binding_id


async def test_unlisted_and_forged_identities_are_refused(
    connect: Any, rogue_tls: ClientTls
) -> None:
    stranger = await connect("stranger")  # our CA, not allow-listed
    with pytest.raises(FcpError) as info:
        await stranger.list_bindings()
    assert info.value.reason is Reason.NOT_AUTHORIZED
    forged = await connect(tls=rogue_tls)  # another CA: the handshake fails
    with pytest.raises(FcpError) as info:
        await forged.list_bindings()
    assert info.value.reason is Reason.NETWORK_FAILURE


async def test_batch_is_atomic_and_names_the_failing_operation(
    connect: Any, kernel: Kernel
) -> None:
    client = await connect()
    with pytest.raises(FcpError) as info:
        await client.batch([reserve(), enable("r999"), reserve(port=4100)])
    # The rule names a binding that does not exist: nothing at all was created.
    assert info.value.reason is Reason.NOT_FOUND
    assert info.value.operation_index == 1
    assert await client.list_bindings() == []
    assert kernel.driver.elements() == ()
    results = await client.batch([reserve(), reserve(port=4100)])
    assert [type(r) for r in results] == [Binding, Binding]
    rules = await client.batch([enable(r.binding_id) for r in results if isinstance(r, Binding)])
    assert all(isinstance(r, Rule) for r in rules)
    grant = await client.batch([GroupLifetimeChange("call-1", 0)])
    assert len(grant) == 1
    assert kernel.driver.elements() == ()


async def test_expiry_is_published_to_the_owner_only(
    connect: Any, kernel: Kernel, service: AgentService
) -> None:
    alg1, alg2 = await connect("alg-1"), await connect("alg-2")
    binding = await alg1.reserve_binding(reserve(lifetime_seconds=10))
    await alg1.enable_rule(enable(binding.binding_id, lifetime_seconds=5))
    events1, events2 = alg1.watch_events(), alg2.watch_events()
    assert (await anext(events1)).kind is EventKind.WATCH_STARTED
    assert (await anext(events2)).kind is EventKind.WATCH_STARTED
    kernel.clock.advance(5)
    service.expire_now()
    rule_gone = await asyncio.wait_for(anext(events1), 5)
    assert (rule_gone.kind, rule_gone.binding_id) == (EventKind.EXPIRED, binding.binding_id)
    assert rule_gone.rule_id is not None
    kernel.clock.advance(5)
    service.expire_now()
    binding_gone = await asyncio.wait_for(anext(events1), 5)
    assert (binding_gone.kind, binding_gone.rule_id) == (EventKind.EXPIRED, None)
    assert binding_gone.binding_id == binding.binding_id
    await service.drain()
    assert (await asyncio.wait_for(anext(events2), 5)).kind is EventKind.AGENT_DRAINING
    await events1.aclose()
    await events2.aclose()
    assert kernel.driver.elements() == ()


async def test_draining_refuses_new_reservations(connect: Any, service: AgentService) -> None:
    client = await connect()
    binding = await client.reserve_binding(reserve())
    await service.drain()
    with pytest.raises(FcpError) as info:
        await client.reserve_binding(reserve(port=4100))
    assert info.value.reason is Reason.NETWORK_FAILURE
    await client.change_lifetime(LifetimeChange(LifetimeTarget.BINDING, binding.binding_id, 0))


async def test_admin_sees_everything_and_releases_with_an_event(connect: Any) -> None:
    alg1, alg2, ctl = await connect("alg-1"), await connect("alg-2"), await connect("ctl")
    b1 = await alg1.reserve_binding(reserve())
    await alg1.enable_rule(enable(b1.binding_id))
    await alg2.reserve_binding(reserve(group="call-9", port=6000))
    groups = {g.group_id for g in await ctl.list_groups()}
    assert groups == {"alg-1/call-1", "alg-2/call-9"}
    assert len(await ctl.list_bindings()) == 2
    assert [b.group_id for b in await ctl.list_bindings("alg-1/call-1")] == ["alg-1/call-1"]
    with pytest.raises(FcpError) as info:
        await ctl.reserve_binding(reserve(port=7000))
    assert info.value.reason is Reason.NOT_AUTHORIZED
    events = alg1.watch_events()
    await anext(events)
    grant = await ctl.release_group("alg-1/call-1")
    assert (grant.bindings, grant.rules) == (1, 1)
    removed = await asyncio.wait_for(anext(events), 5)
    assert removed.kind is EventKind.REMOVED_BY_ADMIN
    await events.aclose()
    assert await alg1.list_bindings() == []
    assert len(await alg2.list_bindings()) == 1


async def test_counters_come_from_the_kernel(
    connect: Any, kernel: Kernel, service: AgentService
) -> None:
    client = await connect()
    binding = await client.reserve_binding(reserve())
    rule = await client.enable_rule(enable(binding.binding_id))
    key = ("udp", str(INSIDE), 4000, str(REMOTE), 5000)
    kernel.driver.count("in4", key, 10, 1720)
    service.observe_now()
    got = await client.get_rule(rule.rule_id)
    assert (got.counters.packets, got.counters.bytes) == (10, 1720)
    assert got.counters.last_seen == pytest.approx(kernel.clock.now + WALL_OFFSET)
    assert (await client.get_group("call-1")).counters.packets == 10
    assert (await client.get_binding(binding.binding_id)).counters.bytes == 1720


async def test_table_deleted_behind_our_back_is_rebuilt(
    connect: Any, kernel: Kernel, service: AgentService
) -> None:
    client = await connect()
    binding = await client.reserve_binding(reserve())
    await client.enable_rule(enable(binding.binding_id))
    before = {e.identity() for e in kernel.driver.elements()}
    assert service.check_table() is False
    kernel.driver.delete_table_behind_our_back()
    assert service.check_table() is True
    assert {e.identity() for e in kernel.driver.elements()} == before


async def test_timers_run_by_themselves(kernel: Kernel, db: Any) -> None:
    import time

    service = kernel.open(db, observe_interval=0.05)
    service._clock = time.monotonic  # real time for this one: the loop must fire alone
    kernel.clock.now = time.monotonic()
    try:
        await service.start()
        events = service.watch_events("alg-1")
        await anext(events)
        await service.reserve_binding("alg-1", reserve(lifetime_seconds=1))
        expired = await asyncio.wait_for(anext(events), 3)
        assert expired.kind is EventKind.EXPIRED
        await events.aclose()
    finally:
        await service.close()


async def test_batch_reserves_and_enables_in_one_call_by_reference(
    connect: Any, kernel: Kernel
) -> None:
    client = await connect()
    by_ref = RuleRequest("", Direction.BIDIRECTIONAL, REMOTE, 60, 5000, binding_ref=0)
    second = RuleRequest("", Direction.INBOUND, REMOTE, 60, 6000, binding_ref=2)
    results = await client.batch([reserve(), by_ref, reserve(port=4100), second])
    b0, r0, b1, r1 = results
    assert isinstance(b0, Binding) and isinstance(b1, Binding)
    assert isinstance(r0, Rule) and isinstance(r1, Rule)
    assert (r0.binding_id, r1.binding_id) == (b0.binding_id, b1.binding_id)
    assert [r.rule_id for r in await client.list_rules(binding_id=b0.binding_id)] == [r0.rule_id]
    assert kernel_sets(kernel) >= {"in4", "out4"}
    # Outside a batch, or pointing at anything but an earlier reservation: MALFORMED.
    with pytest.raises(FcpError) as info:
        await client.enable_rule(by_ref)
    assert info.value.reason is Reason.MALFORMED
    with pytest.raises(FcpError) as info:
        await client.batch([by_ref, reserve(port=4200)])
    assert info.value.reason is Reason.MALFORMED
    assert len(await client.list_bindings()) == 2


async def test_release_reports_what_the_group_held_with_kernel_counters(
    connect: Any, kernel: Kernel, service: AgentService
) -> None:
    """ChangeGroupLifetime(0) answers with the group's bindings and rules as they were
    just before the release (counters from the last observe), so the ALG's call record
    needs no List* round trips; a retry with the same key replays it."""
    client = await connect()
    binding = await client.reserve_binding(reserve())
    rule = await client.enable_rule(enable(binding.binding_id))
    await client.reserve_binding(reserve(group="call-2", port=4100))
    kernel.driver.count("in4", ("udp", str(INSIDE), 4000, str(REMOTE), 5000), 10, 1720)
    service.observe_now()
    listed = (tuple(await client.list_bindings("call-1")), tuple(await client.list_rules("call-1")))

    grant = await client.change_group_lifetime(GroupLifetimeChange("call-1", 0, "release-1"))

    assert (grant.bindings, grant.rules) == (1, 1)
    assert (grant.released_bindings, grant.released_rules) == listed
    assert grant.released_rules[0].rule_id == rule.rule_id
    counted = grant.released_rules[0].counters.packets, grant.released_bindings[0].counters.bytes
    assert counted == (10, 1720)
    assert await client.list_bindings("call-1") == []
    again = await client.change_group_lifetime(GroupLifetimeChange("call-1", 0, "release-1"))
    assert again == grant
    kept = await client.change_group_lifetime(GroupLifetimeChange("call-2", 30))
    assert (kept.released_bindings, kept.released_rules) == ((), ())


async def test_port_usage_is_reported_per_address_and_protocol(
    connect: Any, kernel: Kernel
) -> None:
    client = await connect()
    first = await client.reserve_binding(reserve("call-1", 4000, lifetime_seconds=600))
    await client.reserve_binding(reserve("call-2", 4002, lifetime_seconds=600))
    await client.change_lifetime(LifetimeChange(LifetimeTarget.BINDING, first.binding_id, 0))
    (address,) = await client.get_external_addresses()
    assert str(address.address) == PUBLIC
    usage = {u.protocol: u for u in address.port_usage}
    udp, tcp = usage[TransportProtocol.UDP], usage[TransportProtocol.TCP]
    assert (udp.total, udp.bound, udp.quarantined, udp.free) == (1000, 2, 2, 996)
    assert (tcp.total, tcp.bound, tcp.quarantined) == (1000, 0, 0)
    kernel.clock.advance(120)  # the quarantine is over
    (address,) = await client.get_external_addresses()
    udp = next(u for u in address.port_usage if u.protocol is TransportProtocol.UDP)
    assert (udp.bound, udp.quarantined, udp.free) == (2, 0, 998)


async def test_a_pool_running_dry_is_logged_once_and_its_recovery_too(
    kernel: Kernel, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service = kernel.open(db, port_min=20000, port_max=20019)  # 10 RTP pairs
    try:
        bindings = [
            await service.reserve_binding(
                "alg-1", reserve(f"c{i}", 4000 + 2 * i, lifetime_seconds=600)
            )
            for i in range(9)
        ]
        caplog.set_level("INFO", logger="sipwall.agent.service")
        service.observe_now()  # 2 of 20 free: 10 %, not under the mark
        assert not [r for r in caplog.records if "ports free" in r.message]
        await service.reserve_binding("alg-1", reserve("c9", 4018, lifetime_seconds=600))
        service.observe_now()
        service.observe_now()  # still dry: said once
        (low,) = [r for r in caplog.records if "ports free" in r.message]
        assert low.levelname == "WARNING"
        assert f"{PUBLIC} udp: 0 of 20 ports free (20 bound, 0 quarantined)" in low.message
        for b in bindings[:4]:  # released ports are quarantined: still dry
            await service.change_lifetime(
                "alg-1", LifetimeChange(LifetimeTarget.BINDING, b.binding_id, 0)
            )
        service.observe_now()
        assert len([r for r in caplog.records if "ports free" in r.message]) == 1
        kernel.clock.advance(121)
        service.observe_now()
        ok = [r for r in caplog.records if "ports free" in r.message][1:]
        assert [(r.levelname, r.message.split(";")[0]) for r in ok] == [
            ("INFO", f"{PUBLIC} udp: 8 of 20 ports free (12 bound, 0 quarantined)")
        ]
    finally:
        await service.close()
