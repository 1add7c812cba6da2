"""The location service: ordering, expiry, atomic apply, SQLite persistence."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from alg.errors import LocationStoreError
from alg.location import (
    Binding,
    LocationStore,
    MemoryLocationStore,
    Put,
    Remove,
    Source,
    SqliteLocationStore,
)

T0 = 1_700_000_000.0
AOR = "sip:alice@example.com"


def binding(contact: str, *, q: float | None = None, at: float = T0, ttl: float = 3600) -> Binding:
    return Binding(
        aor=AOR,
        contact=contact,
        expires_at=at + ttl,
        call_id="c1",
        cseq=1,
        registered_at=at,
        q=q,
        path=("<sip:edge.example.com;lr>",),
        source=Source("198.51.100.7", 40123, "UDP"),
        instance_id="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>",
        reg_id=1,
        user_agent="phone/1",
        params=(("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'),),
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocationStore]:
    made: LocationStore
    if request.param == "memory":
        made = MemoryLocationStore()
    else:
        made = SqliteLocationStore(tmp_path / "location.db")
    yield made
    made.close()


def test_lookup_orders_by_q_then_most_recent(store: LocationStore) -> None:
    store.apply(
        [
            Put(binding("sip:a@10.0.0.1", q=0.5, at=T0)),
            Put(binding("sip:b@10.0.0.2", q=0.9, at=T0)),
            Put(binding("sip:c@10.0.0.3", q=0.5, at=T0 + 10)),
            Put(binding("sip:d@10.0.0.4", q=None, at=T0)),  # unqualified ranks as 1.0
        ]
    )
    contacts = [b.contact for b in store.lookup(AOR, T0 + 20)]
    assert contacts == ["sip:d@10.0.0.4", "sip:b@10.0.0.2", "sip:c@10.0.0.3", "sip:a@10.0.0.1"]


def test_round_trip_keeps_every_field(store: LocationStore) -> None:
    original = binding("sip:alice@10.77.0.10:5060;transport=udp", q=0.7)
    store.apply([Put(original)])
    assert store.lookup(AOR, T0) == (original,)


def test_expired_bindings_are_invisible_then_purged(store: LocationStore) -> None:
    store.apply([Put(binding("sip:a@10.0.0.1", ttl=60)), Put(binding("sip:b@10.0.0.2", ttl=600))])
    assert len(store.lookup(AOR, T0 + 59)) == 2
    assert [b.contact for b in store.lookup(AOR, T0 + 60)] == ["sip:b@10.0.0.2"]
    assert store.aors(T0 + 60) == (AOR,)
    assert store.purge(T0 + 60) == 1
    assert store.purge(T0 + 60) == 0
    assert store.aors(T0 + 600) == ()
    assert store.purge(T0 + 600) == 1


def test_put_replaces_and_remove_deletes(store: LocationStore) -> None:
    first = binding("sip:a@10.0.0.1")
    store.apply([Put(first)])
    store.apply([Put(replace(first, cseq=2, expires_at=T0 + 7200))])
    (only,) = store.lookup(AOR, T0)
    assert only.cseq == 2 and only.expires_at == T0 + 7200
    store.apply([Remove(AOR, "sip:a@10.0.0.1"), Remove(AOR, "sip:never@there")])
    assert store.lookup(AOR, T0) == ()


def test_sqlite_apply_is_atomic(tmp_path: Path) -> None:
    store = SqliteLocationStore(tmp_path / "loc.db")
    with pytest.raises(AttributeError):
        store.apply([Put(binding("sip:a@10.0.0.1")), "not a change"])  # type: ignore[list-item]
    assert store.lookup(AOR, T0) == ()  # the first Put was rolled back
    store.close()


def test_sqlite_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "loc.db"
    first = SqliteLocationStore(path)
    kept = binding("sip:alice@10.77.0.10", q=0.3)
    first.apply([Put(kept)])
    first.close()
    second = SqliteLocationStore(path)
    assert second.lookup(AOR, T0 + 1) == (kept,)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    second.close()


def test_sqlite_refuses_unknown_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(LocationStoreError):
        SqliteLocationStore(path)


def test_sqlite_failure_is_a_location_error(tmp_path: Path) -> None:
    store = SqliteLocationStore(tmp_path / "loc.db")
    store.close()
    with pytest.raises(LocationStoreError):
        store.lookup(AOR, T0)
    with pytest.raises(LocationStoreError):
        store.apply([Put(binding("sip:a@10.0.0.1"))])


@pytest.mark.parametrize(
    "changes",
    [
        {"q": 1.5},
        {"q": -0.1},
        {"cseq": 2**32},
        {"contact": ""},
        {"reg_id": 0},
        {"expires_at": float("inf")},
    ],
)
def test_binding_validates_itself(changes: dict[str, object]) -> None:
    with pytest.raises(LocationStoreError):
        replace(binding("sip:a@10.0.0.1"), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "port", "transport"),
    [
        ("", 5060, "UDP"),
        ("10.0.0.1", 0, "UDP"),
        ("10.0.0.1", 70000, "UDP"),
        ("10.0.0.1", 5060, "X"),
    ],
)
def test_source_validates_itself(address: str, port: int, transport: str) -> None:
    with pytest.raises(LocationStoreError):
        Source(address, port, transport)


def test_remaining_rounds_and_never_shows_zero_while_live() -> None:
    b = binding("sip:a@10.0.0.1", ttl=60)
    assert b.remaining(T0) == 60
    assert b.remaining(T0 + 59.8) == 1
    assert b.remaining(T0 + 60) == 0
