from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter_agent.allocator import Allocator, PoolConfig
from filter_agent.errors import AgentError, Reason
from filter_agent.model import Protocol

UDP = Protocol.UDP
POOL = ("203.0.113.1", "203.0.113.2")


def make(**kw: object) -> Allocator:
    cfg = dict(addresses=POOL, port_min=10000, port_max=10099)
    cfg.update(kw)
    return Allocator(PoolConfig(**cfg), random.Random(7))  # type: ignore[arg-type]


def alloc(
    a: Allocator,
    port: int,
    *,
    group: str = "g",
    count: int = 2,
    even: bool = True,
    now: float = 0.0,
    owner: str = "o",
    **kw: object,
):
    return a.allocate(
        owner=owner,
        group=group,
        protocol=UDP,
        internal_addr="10.77.0.10",
        internal_port=port,
        count=count,
        even=even,
        now=now,
        **kw,
    )


def test_pair_is_even_and_next() -> None:
    a = make()
    for i in range(20):
        x = alloc(a, 4000 + 2 * i, group=f"g{i}")
        p, q = x.external_ports
        assert p % 2 == 0 and q == p + 1 and p >= 10000


def test_single_keeps_parity_of_inside_port() -> None:
    a = make()
    for i in range(10):
        x = alloc(a, 5001 + 2 * i, count=1, even=False)
        assert x.external_ports[0] % 2 == 1


def test_random_ports_are_seeded_reproducible() -> None:
    first = [alloc(make(), 4000).external_ports for _ in range(1)]
    again = [alloc(make(), 4000).external_ports for _ in range(1)]
    assert first == again


def test_suggested_port_honoured_when_free() -> None:
    a = make()
    assert alloc(a, 4000, suggested_port=10050).external_ports == (10050, 10051)


def test_suggested_port_taken_gives_other_or_error_with_prefer_failure() -> None:
    a = make()
    alloc(a, 4000, suggested_port=10050)
    other = alloc(a, 4010, suggested_port=10050)
    assert other.external_ports != (10050, 10051)
    with pytest.raises(AgentError) as err:
        alloc(a, 4020, suggested_port=10050, prefer_failure=True)
    assert err.value.reason is Reason.CANNOT_PROVIDE_EXTERNAL


def test_odd_suggestion_for_rtp_pair_is_not_available() -> None:
    with pytest.raises(AgentError) as err:
        alloc(make(), 4000, suggested_port=10051, prefer_failure=True)
    assert err.value.reason is Reason.CANNOT_PROVIDE_EXTERNAL


def test_one_public_address_per_group() -> None:
    a = make()
    addrs = {alloc(a, 4000 + 2 * i, group="call").external_addr for i in range(10)}
    assert len(addrs) == 1
    # A second call goes to the emptier address.
    assert alloc(a, 6000, group="call2").external_addr != addrs.pop()


def test_endpoint_independent_lookup() -> None:
    a = make()
    x = alloc(a, 4000)
    assert a.lookup(UDP, "10.77.0.10", 4000) is x
    assert a.lookup(UDP, "10.77.0.10", 4001) is x
    assert a.lookup(Protocol.TCP, "10.77.0.10", 4000) is None
    with pytest.raises(AgentError) as err:
        alloc(a, 4001, count=1, even=False)
    assert err.value.reason is Reason.CONFLICT


def test_freed_port_is_quarantined_for_120s() -> None:
    a = make(addresses=("203.0.113.1",), port_min=10000, port_max=10001)
    x = alloc(a, 4000, now=0)
    a.release(x, now=10)
    with pytest.raises(AgentError) as err:
        alloc(a, 4000, now=129.9)
    assert err.value.reason is Reason.NO_PORTS
    assert err.value.retry_after == pytest.approx(0.1)
    assert alloc(a, 4000, now=130).external_ports == (10000, 10001)


def test_undo_release_skips_quarantine() -> None:
    a = make(addresses=("203.0.113.1",), port_min=10000, port_max=10001)
    a.release(alloc(a, 4000), now=0, quarantine=False)
    assert alloc(a, 4000, now=0).external_ports == (10000, 10001)


def test_quotas_per_owner_and_group_are_distinct() -> None:
    a = make(owner_quota=6, group_quota=4)
    alloc(a, 4000, group="a")
    alloc(a, 4002, group="a")
    with pytest.raises(AgentError) as err:
        alloc(a, 4004, group="a")
    assert err.value.reason is Reason.QUOTA and "group" in err.value.message
    alloc(a, 4004, group="b")
    with pytest.raises(AgentError) as err:
        alloc(a, 4006, group="c")
    assert err.value.reason is Reason.QUOTA and "owner" in err.value.message
    assert alloc(a, 4006, group="c", owner="other").external_ports


def test_no_addresses() -> None:
    with pytest.raises(AgentError) as err:
        alloc(make(addresses=()), 4000)
    assert err.value.reason is Reason.NO_ADDRESSES


def test_block_is_contiguous() -> None:
    a = make()
    x = alloc(a, 7000, count=8, even=True)
    assert list(x.external_ports) == list(range(x.external_ports[0], x.external_ports[0] + 8))
    assert x.external_ports[0] % 2 == 0


def test_nearly_full_pool_is_fast_and_exhausts_cleanly() -> None:
    a = Allocator(PoolConfig(("203.0.113.1",)), random.Random(3))
    pairs = (65535 - 1024 + 1) // 2
    seen = set()
    for i in range(pairs):
        x = (
            a.allocate(
                owner="o",
                group=f"g{i}",
                protocol=UDP,
                internal_addr="10.77.0.10",
                internal_port=2 * (i % 30000) + 2,
                count=2,
                even=True,
                now=0,
            )
            if i < 30000
            else a.allocate(
                owner="o",
                group=f"g{i}",
                protocol=UDP,
                internal_addr="10.77.0.11",
                internal_port=2 * i - 59000,
                count=2,
                even=True,
                now=0,
            )
        )
        seen.add(x.external_ports[0])
    assert len(seen) == pairs
    with pytest.raises(AgentError) as err:
        a.allocate(
            owner="o",
            group="last",
            protocol=UDP,
            internal_addr="10.77.0.12",
            internal_port=2,
            count=2,
            even=True,
            now=0,
        )
    assert err.value.reason is Reason.NO_PORTS


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.integers(1, 3)), max_size=60))
def test_never_double_allocates(script: list[tuple[bool, int, int]]) -> None:
    """Allocate/release at random: live allocations never share a public port, and a
    released port stays away for the quarantine."""
    a = make(addresses=("203.0.113.1",), port_min=10000, port_max=10031)
    live: dict[int, object] = {}
    released_at: dict[int, float] = {}
    now = 0.0
    for step, (do_alloc, slot, count) in enumerate(script):
        now = step * 10.0
        if do_alloc and slot not in live:
            try:
                x = alloc(
                    a, 3000 + 10 * slot, group=f"g{slot}", count=count, even=count == 2, now=now
                )
            except AgentError as exc:
                assert exc.reason is Reason.NO_PORTS
                continue
            ports = set(x.external_ports)
            for other in live.values():
                assert not ports & set(other.external_ports)  # type: ignore[attr-defined]
            for p in ports:
                assert now - released_at.get(p, -1e9) >= 120
            live[slot] = x
        elif not do_alloc and slot in live:
            x = live.pop(slot)
            a.release(x, now)  # type: ignore[arg-type]
            for p in x.external_ports:  # type: ignore[attr-defined]
                released_at[p] = now
        # bound is what the free sets and the quarantine count leave: it must be what the
        # script holds, and the quarantine count what it released less than 120 s ago
        usage = a.usage("203.0.113.1", UDP, now)
        held = {p for x in live.values() for p in x.external_ports}  # type: ignore[attr-defined]
        assert usage.bound == len(held)
        assert usage.quarantined == sum(1 for t in released_at.values() if now - t < 120)


def test_usage_counts_bound_quarantined_and_free_ports() -> None:
    a = make(addresses=("203.0.113.1",))  # 10000-10099: 100 ports
    pair = alloc(a, 4000, group="g1", now=0)
    alloc(a, 5001, group="g2", count=1, even=False, now=0)
    u = a.usage("203.0.113.1", UDP, now=0)
    assert (u.total, u.bound, u.quarantined, u.free) == (100, 3, 0, 97)
    a.release(pair, now=10)
    u = a.usage("203.0.113.1", UDP, now=10)
    assert (u.bound, u.quarantined, u.free) == (1, 2, 97)
    assert a.usage("203.0.113.1", UDP, now=129.9).quarantined == 2
    u = a.usage("203.0.113.1", UDP, now=130)  # the quarantine is over
    assert (u.bound, u.quarantined, u.free) == (1, 0, 99)
    assert a.usage("203.0.113.1", Protocol.TCP, now=130).free == 100  # a space of its own


def test_an_undone_allocation_is_not_counted_as_quarantined() -> None:
    a = make(addresses=("203.0.113.1",))
    a.release(alloc(a, 4000), now=0, quarantine=False)
    u = a.usage("203.0.113.1", UDP, now=0)
    assert (u.bound, u.quarantined, u.free) == (0, 0, 100)


def test_restored_quarantine_is_counted_and_drains() -> None:
    a = make(addresses=("203.0.113.1",))
    a.restore_quarantined(50.0, "203.0.113.1", UDP, 10010)
    a.restore_quarantined(60.0, "203.0.113.1", UDP, 10011)
    assert a.usage("203.0.113.1", UDP, now=0).quarantined == 2
    assert a.usage("203.0.113.1", UDP, now=55).quarantined == 1
    u = a.usage("203.0.113.1", UDP, now=60)
    assert (u.bound, u.quarantined, u.free) == (0, 0, 100)
