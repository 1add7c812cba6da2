"""Persistence and restart: the state database, recovery against the (fake) kernel, the
epoch rule."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from agent_service_testing import Kernel

from fcp.errors import FcpError, Reason
from fcp.types import (
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    LifetimeChange,
    LifetimeTarget,
    RuleRequest,
    TransportProtocol,
)
from filter_agent import ops, snapshot
from filter_agent.allocator import Allocator, PoolConfig
from filter_agent.drivers.fake import FakeNftDriver
from filter_agent.engine import Engine
from filter_agent.model import Protocol
from filter_agent.service import AgentService
from filter_agent.store import Store, open_store

pytestmark = pytest.mark.asyncio

INSIDE = ipaddress.IPv4Address("10.77.0.10")
REMOTE = ipaddress.IPv4Address("203.0.113.20")


def reserve(group: str, port: int, key: str | None = None, lifetime: int = 60) -> BindingRequest:
    return BindingRequest(
        group,
        Endpoint(INSIDE, port),
        TransportProtocol.UDP,
        BindingKind.RTP_PAIR,
        lifetime,
        idempotency_key=key,
    )


def enable(binding_id: str, lifetime: int = 60) -> RuleRequest:
    return RuleRequest(binding_id, Direction.BIDIRECTIONAL, REMOTE, lifetime, 5000, 30)


async def populate(service: AgentService) -> None:
    """Two calls, one released binding (quarantine), counters, an idempotency record."""
    b1 = await service.reserve_binding("alg-1", reserve("c1", 4000, key="k1"))
    await service.enable_rule("alg-1", enable(b1.binding_id))
    b2 = await service.reserve_binding("alg-1", reserve("c1", 4002))
    await service.enable_rule("alg-1", enable(b2.binding_id, lifetime=20))
    b3 = await service.reserve_binding("alg-2", reserve("c9", 4010))
    await service.change_lifetime("alg-2", LifetimeChange(LifetimeTarget.BINDING, b3.binding_id, 0))
    await service.reserve_binding("alg-2", reserve("c9", 4020))


async def test_store_round_trip_rebuilds_the_same_engine(kernel: Kernel, db: Path) -> None:
    service = kernel.open(db)
    await populate(service)
    kernel.driver.count("in4", ("udp", str(INSIDE), 4000, str(REMOTE), 5000), 3, 300)
    service.observe_now()
    expected = snapshot.capture(service.engine)
    await service.close()

    store = Store(db)
    loaded = store.load()
    store.close()
    assert loaded is not None
    twin = Engine(Allocator(PoolConfig(("203.0.113.1",), 20000, 20999)), FakeNftDriver())
    snapshot.restore(twin, loaded.state)
    got = snapshot.capture(twin)
    assert got.bindings == expected.bindings
    assert got.rules == expected.rules
    assert got.counters == expected.counters
    assert got.next_id >= expected.next_id  # ids are never reused (reserved in blocks)
    assert {(q.address, q.port) for q in got.quarantine} == {
        (q.address, q.port) for q in expected.quarantine
    }
    assert len(loaded.idempotency) == 1
    # The restored allocator knows the ports: the same inside endpoint maps the same way,
    # and the quarantined ports are not handed out again.
    assert twin.allocator.owner_ports("alg-1") == 4
    # and counts them: 3 live pairs bound, the released pair quarantined
    usage = twin.allocator.usage("203.0.113.1", Protocol.UDP, kernel.clock())
    assert (usage.bound, usage.quarantined) == (6, 2)


async def test_restart_keeps_epoch_objects_and_idempotency(kernel: Kernel, db: Path) -> None:
    first = kernel.open(db)
    await populate(first)
    bindings = await first.list_bindings("alg-1")
    rules = await first.list_rules("alg-1")
    epoch = first.epoch
    elements = kernel.driver.elements()
    await first.close()  # the process dies; the kernel keeps its elements

    kernel.clock.advance(1)
    second = kernel.open(db)
    try:
        assert second.epoch == epoch
        assert second.recovery.lost is None
        assert second.recovery.orphans == 0
        assert [b.binding_id for b in await second.list_bindings("alg-1")] == [
            b.binding_id for b in bindings
        ]
        assert [r.rule_id for r in await second.list_rules("alg-1")] == [r.rule_id for r in rules]
        assert {e.identity() for e in kernel.driver.elements()} == {e.identity() for e in elements}
        # A retry across the restart replays the first answer.
        again = await second.reserve_binding("alg-1", reserve("c1", 4000, key="k1"))
        assert again.binding_id == bindings[0].binding_id
        # New ids never reuse old ones.
        b = await second.reserve_binding("alg-1", reserve("c2", 4100))
        assert snapshot.id_number(b.binding_id) > max(
            snapshot.id_number(x.binding_id) for x in bindings
        )
    finally:
        await second.close()


async def test_a_retry_is_answered_from_memory_exactly_as_the_first_time(
    kernel: Kernel, db: Path
) -> None:
    """The agent remembers an answer as the bytes it stores, and decodes them for a retry."""
    service = kernel.open(db)
    try:
        first = await service.reserve_binding("alg-1", reserve("c1", 4000, key="k1"))
        kernel.clock.advance(1)
        assert await service.reserve_binding("alg-1", reserve("c1", 4000, key="k1")) == first
        assert len(await service.list_bindings("alg-1")) == 1
    finally:
        await service.close()


async def test_a_record_fingerprinted_before_digests_still_answers_its_retry(
    kernel: Kernel, db: Path
) -> None:
    """State databases written before fingerprints were digests hold the request's repr
    (what `fingerprint` hashes now): after the upgrade, a retry with that key gets its
    first answer, and the same key with another request is still a CONFLICT."""
    first = kernel.open(db)
    original = await first.reserve_binding("alg-1", reserve("c1", 4000, key="k1"))
    await first.close()
    store = Store(db)
    store._db.execute(
        "UPDATE idempotency SET fingerprint = ?", (repr(reserve("c1", 4000, key=None)),)
    )
    store.close()
    second = kernel.open(db)
    try:
        again = await second.reserve_binding("alg-1", reserve("c1", 4000, key="k1"))
        assert again.binding_id == original.binding_id
        with pytest.raises(FcpError) as refused:
            await second.reserve_binding("alg-1", reserve("c1", 4002, key="k1"))
        assert refused.value.reason is Reason.CONFLICT
    finally:
        await second.close()


async def test_kernel_expiry_while_down_drops_only_what_is_gone(kernel: Kernel, db: Path) -> None:
    first = kernel.open(db)
    await populate(first)
    await first.close()
    kernel.clock.advance(25)  # the 20 s rule timed out in the kernel meanwhile
    second = kernel.open(db)
    try:
        assert second.recovery.lost is None
        assert len(second.recovery.dropped) == 1
        assert len(await second.list_rules("alg-1")) == 1
        assert len(await second.list_bindings("alg-1")) == 2
    finally:
        await second.close()
    third = kernel.open(db)  # and the store agrees
    try:
        assert len(await third.list_rules("alg-1")) == 1
    finally:
        await third.close()


async def test_orphan_elements_are_deleted(kernel: Kernel, db: Path) -> None:
    first = kernel.open(db)
    await populate(first)
    await first.close()
    # A crash between the kernel transaction and the store commit leaves elements that no
    # stored object explains: recovery deletes them (the client never got an answer).
    orphan = Engine(Allocator(PoolConfig(("203.0.113.1",), 21000, 21999)), kernel.driver)
    orphan.reserve_binding("alg-1", ops.ReserveBinding("c7", "10.77.0.99", 9000), kernel.clock.now)
    second = kernel.open(db)
    try:
        assert second.recovery.orphans == 4  # dnat4 + snat4, two ports
        assert all(e.key[1] != "10.77.0.99" for e in kernel.driver.elements())
    finally:
        await second.close()


async def test_missing_table_with_good_state_is_rebuilt_with_the_same_epoch(
    kernel: Kernel, db: Path
) -> None:
    first = kernel.open(db)
    await populate(first)
    epoch, elements = first.epoch, kernel.driver.elements()
    await first.close()
    kernel.driver.delete_table_behind_our_back()
    second = kernel.open(db)
    try:
        assert (second.epoch, second.recovery.rebuilt) == (epoch, True)
        assert {e.identity() for e in kernel.driver.elements()} == {e.identity() for e in elements}
    finally:
        await second.close()


@pytest.mark.parametrize("damage", ["delete", "corrupt", "reboot"])
async def test_lost_state_means_a_new_epoch_and_an_empty_table(
    kernel: Kernel, db: Path, damage: str
) -> None:
    first = kernel.open(db)
    await populate(first)
    epoch = first.epoch
    await first.close()
    boot = "boot-1"
    if damage == "delete":
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
    elif damage == "corrupt":
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        db.write_bytes(b"this is not a database" * 100)
    else:
        boot = "boot-2"
    second = kernel.open(db, boot_id=boot)
    try:
        assert second.epoch != epoch
        assert second.recovery.lost is not None
        assert kernel.driver.elements() == ()
        assert await second.list_bindings("alg-1") == []
        with pytest.raises(FcpError) as info:
            await second.get_binding("alg-1", "b1")
        assert info.value.reason is Reason.NOT_FOUND
    finally:
        await second.close()
    if damage == "corrupt":
        assert any(p.name.startswith("agent.db.corrupt-") for p in db.parent.iterdir())
    third = kernel.open(db, boot_id=boot)  # the new epoch itself is durable
    try:
        assert third.epoch == second.epoch
    finally:
        await third.close()


async def test_open_store_reports_a_new_database(tmp_path: Path) -> None:
    store, loaded, lost = open_store(tmp_path / "new.db")
    store.close()
    assert loaded is None
    assert lost == "no state database"
