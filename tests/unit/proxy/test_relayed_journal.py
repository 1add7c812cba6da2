"""Relayed registrations survive an ALG restart: every change is written through to the
journal (SQLite, POSIX times) and read back at start (alg/relayed.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alg.proxy_model import Endpoint
from alg.relayed import RelayedRegistrations, SqliteRelayedJournal
from alg.sip import SipMessage, parse_message, parse_uri

T0 = 1_700_000_000.0
PHONE = Endpoint("inside", "UDP", "10.77.0.10", 5062)
UPSTREAM = frozenset({"198.51.100.10"})


def register(contact: str, expires: int, aor: str = "alice") -> SipMessage:
    return parse_message(
        (
            "REGISTER sip:provider.example SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 10.77.0.10:5062;branch=z9hG4bKj\r\n"
            f"To: <sip:{aor}@provider.example>\r\nFrom: <sip:{aor}@provider.example>;tag=1\r\n"
            f"Call-ID: j\r\nCSeq: 1 REGISTER\r\nContact: <{contact}>;expires={expires}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


def reopen(path: Path, now: float, **kwargs: int) -> RelayedRegistrations:
    return RelayedRegistrations(journal=SqliteRelayedJournal(path), now=now, **kwargs)


def test_entries_survive_a_restart_with_their_reach_and_upstream(tmp_path: Path) -> None:
    path = tmp_path / "registrar.db"
    first = reopen(path, T0)
    first.note(register("sip:alice@10.77.0.10:5062", 600), PHONE, UPSTREAM, T0)
    first.note(register("sip:bob@10.77.0.11", 60, "bob"), PHONE, UPSTREAM, T0)

    second = reopen(path, T0 + 100)  # bob's 60 s are over: not loaded
    assert len(second) == 1
    found = second.lookup(parse_uri("sip:alice@10.77.0.10:5062"), "198.51.100.10", T0 + 100)
    assert found is not None
    assert (found.reach, found.upstream, found.aor) == (
        PHONE,
        UPSTREAM,
        "sip:alice@provider.example",
    )
    assert found.expires_at == T0 + 600
    assert second.lookup(parse_uri("sip:alice@10.77.0.10:5062"), "203.0.113.9", T0 + 100) is None


def test_unregistering_and_eviction_reach_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "registrar.db"
    table = reopen(path, T0, capacity=2)
    for user in ("a", "b", "c"):
        table.note(register(f"sip:{user}@10.77.0.10", 600, user), PHONE, UPSTREAM, T0)
    table.note(register("sip:c@10.77.0.10", 0, "c"), PHONE, UPSTREAM, T0 + 1)  # expires=0

    again = reopen(path, T0 + 2, capacity=2)
    users = {
        user
        for user in ("a", "b", "c")
        if again.lookup(parse_uri(f"sip:{user}@10.77.0.10"), "198.51.100.10", T0 + 2)
    }
    assert users == {"b"}  # a was evicted (capacity 2), c unregistered


def test_a_damaged_row_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "registrar.db"
    table = reopen(path, T0)
    table.note(register("sip:alice@10.77.0.10", 600), PHONE, UPSTREAM, T0)
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO relayed VALUES ('[\"x\", \"h\", null]', 'not json', ?, 99)", (T0 + 9e9,)
        )
        db.execute(
            'INSERT INTO relayed VALUES (\'["y", "h", null]\', \'[{"uri": 5}]\', ?, 100)',
            (T0 + 9e9,),
        )
    again = reopen(path, T0 + 1)
    assert len(again) == 1
    assert again.lookup(parse_uri("sip:alice@10.77.0.10"), "198.51.100.10", T0 + 1) is not None


def test_without_a_journal_nothing_is_written(tmp_path: Path) -> None:
    table = RelayedRegistrations()
    table.note(register("sip:alice@10.77.0.10", 600), PHONE, UPSTREAM, T0)
    assert len(table) == 1 and table.journal is None
