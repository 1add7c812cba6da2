"""Records kept by time (idempotency answers, port quarantine) are forgotten on the timer
even when no object ever expires: the ALG releases every call itself (its BYE), so
nothing times out, and these records used to stay until something did."""

from __future__ import annotations

import ipaddress
import sqlite3
from pathlib import Path

import pytest
from agent_service_testing import Kernel

from fcp.idempotency import IdempotencyCache
from fcp.types import (
    BindingKind,
    BindingRequest,
    Endpoint,
    GroupLifetimeChange,
    TransportProtocol,
)
from filter_agent.service import RECORD_SWEEP_SECONDS, AgentService

TTL = 60.0
INSIDE = ipaddress.IPv4Address("10.77.0.10")
QUARANTINE = 30.0


def _rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        count: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return count


async def _calls(service: AgentService, count: int, first: int) -> None:
    """`count` calls that each reserve a pair with a key and are released by their owner."""
    for n in range(first, first + count):
        request = BindingRequest(
            f"g{n}",
            Endpoint(INSIDE, 4000 + 2 * n),
            TransportProtocol.UDP,
            BindingKind.RTP_PAIR,
            60,
            idempotency_key=f"k{n}",
        )
        await service.reserve_binding("alg-1", request)
        release = GroupLifetimeChange(f"g{n}", 0, f"r{n}")
        await service.change_group_lifetime("alg-1", release)


@pytest.mark.asyncio
async def test_records_of_released_calls_are_swept_when_nothing_expires(
    kernel: Kernel, db: Path
) -> None:
    service = kernel.open(db, idempotency_ttl=TTL, quarantine=QUARANTINE)
    await _calls(service, 20, 0)
    assert len(service._idem) == 40  # a reservation and a release per call
    assert _rows(db, "idempotency") == 40 and _rows(db, "quarantine") == 40
    assert service.engine.next_timer() is None  # nothing left to expire...
    due = service.next_timer()
    assert due <= kernel.clock() + RECORD_SWEEP_SECONDS  # ...but the sweep is due

    kernel.clock.advance(TTL + 1)
    await _calls(service, 5, 20)  # newer calls, still remembered after the sweep
    service.sweep_records(kernel.clock())
    assert len(service._idem) == 10
    assert _rows(db, "idempotency") == 10
    assert _rows(db, "quarantine") == 10  # the old calls' ports are free again
    assert service.next_timer() == kernel.clock() + RECORD_SWEEP_SECONDS
    await service.close()


def test_the_cache_forgets_from_its_oldest_end_and_a_renewed_key_moves_to_the_end() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache(ttl=10.0)
    cache.remember("o", "a", "fa", "A", now=0.0)
    cache.remember("o", "b", "fb", "B", now=1.0)
    cache.remember("o", "a", "fa", "A2", now=5.0)  # remembered again: expires at 15
    cache.expire(11.5)
    assert len(cache) == 1 and cache.lookup("o", "a", "fa", 11.5) == "A2"
    assert cache.lookup("o", "b", "fb", 11.5) is None
    cache.expire(15.0)
    assert len(cache) == 0
