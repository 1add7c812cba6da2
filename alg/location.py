"""The location service: address-of-record → contact bindings (RFC 3261 §10, §16.5).

Theory of operation
-------------------
A binding says "requests for the AOR `sip:alice@example.com` may be delivered to the
contact `sip:alice@10.77.0.10:5060`, until `expires_at`". The registrar writes bindings,
the proxy core reads them to find targets. Besides what RFC 3261 needs (contact, expiry,
q, Call-ID and CSeq for the ordering rules of §10.3 step 7) a binding keeps:

* `path`: the Path header values (RFC 3327) through which the UA registered, so requests
  go back through the same edge proxies;
* `source`: the address, port and transport the REGISTER actually came from. Behind a
  NAT the contact holds a private address that is useless outside; the source is the
  route to the UA through its NAT binding (the idea of RFC 5626's flow, without the
  flow token);
* `instance_id`/`reg_id` (RFC 5626 §4.1) and the User-Agent, for operators.

Time is explicit: `now` and `expires_at` are POSIX seconds (floats), because the SQLite
store survives a restart and a monotonic clock does not. A binding is live while
`now < expires_at`; stores never return dead ones, and `purge(now)` deletes them.

Stores implement the `LocationStore` protocol. `apply()` commits a list of changes for
one AOR atomically: RFC 3261 §10.3 step 7 requires that the updates of one REGISTER be
visible all together or not at all. Two implementations: `MemoryLocationStore` (tests,
single process) and `SqliteLocationStore` (stdlib sqlite3 in WAL mode, so a restart of
the proxy does not lose registrations, and another process may read while one writes).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import unquote

from alg.errors import LocationStoreError
from alg.sip.uri import SipUri

Params = tuple[tuple[str, str | None], ...]

# RFC 3261 §20.19: expiration values are 32-bit; CSeq numbers too (§8.1.1.5).
MAX_UINT32: Final = 2**32 - 1
# A binding without q ranks like q=1.0: RFC 3261 gives no default, and an unqualified
# contact is the one a UA did not want to rank below anything.
DEFAULT_Q: Final = 1.0
TRANSPORTS: Final = frozenset({"UDP", "TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def canonical_aor(uri: SipUri) -> str:
    """The index of an AOR (§10.3 step 5): parameters and port removed, escapes
    resolved, host lower-cased. An address-of-record names a user in a domain, so
    `sip:alice@example.com:5060` (a Request-URI) finds `sip:alice@example.com` (a To);
    sips: and sip: forms of one name are one AOR (RFC 5630)."""
    host = f"[{uri.host.lower()}]" if uri.host_kind == "ipv6" else uri.host.lower()
    if uri.user is None:
        return f"sip:{host}"
    return f"sip:{unquote(uri.user)}@{host}"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a request came from: the far end of the NAT binding or connection."""

    address: str
    port: int
    transport: str

    def __post_init__(self) -> None:
        if not self.address or not 0 < self.port <= 65535:
            raise LocationStoreError(f"invalid source {self.address!r}:{self.port}")
        if self.transport not in TRANSPORTS:
            raise LocationStoreError(f"unknown transport {self.transport!r}")


@dataclass(frozen=True, slots=True)
class Binding:
    """One AOR → contact binding (§10.2). `contact` is the contact URI text as the UA
    sent it; `params` are the other Contact header parameters (echoed in the 200)."""

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    registered_at: float
    q: float | None = None
    path: tuple[str, ...] = ()
    source: Source | None = None
    instance_id: str | None = None
    reg_id: int | None = None
    user_agent: str | None = None
    params: Params = ()

    def __post_init__(self) -> None:
        if not self.aor or not self.contact or not self.call_id:
            raise LocationStoreError("a binding needs an AOR, a contact and a Call-ID")
        if not 0 <= self.cseq <= MAX_UINT32:
            raise LocationStoreError(f"CSeq out of range: {self.cseq}")
        if self.q is not None and not 0.0 <= self.q <= 1.0:
            raise LocationStoreError(f"q out of range: {self.q}")  # RFC 3261 §20.10
        if not (math.isfinite(self.expires_at) and math.isfinite(self.registered_at)):
            raise LocationStoreError("binding times must be finite")
        if self.reg_id is not None and not 1 <= self.reg_id <= MAX_UINT32:
            raise LocationStoreError(f"reg-id out of range: {self.reg_id}")  # RFC 5626 §4.2

    def is_live(self, now: float) -> bool:
        return now < self.expires_at

    def remaining(self, now: float) -> int:
        """Whole seconds left, at least 1 while live (for `expires=` in a 200, §10.3)."""
        if not self.is_live(now):
            return 0
        return max(1, round(self.expires_at - now))

    @property
    def rank_q(self) -> float:
        return DEFAULT_Q if self.q is None else self.q


def order_bindings(bindings: Sequence[Binding]) -> tuple[Binding, ...]:
    """q descending (RFC 3261 §16.6 tries higher q first), then most recently
    registered first; the contact text breaks remaining ties so the order is stable."""
    by_contact = sorted(bindings, key=lambda b: b.contact)
    return tuple(sorted(by_contact, key=lambda b: (-b.rank_q, -b.registered_at)))


@dataclass(frozen=True, slots=True)
class Put:
    """Insert or replace the binding with key (aor, contact)."""

    binding: Binding


@dataclass(frozen=True, slots=True)
class Remove:
    """Delete the binding with key (aor, contact), if any."""

    aor: str
    contact: str


Change = Put | Remove


class LocationStore(Protocol):
    """The location service as the registrar and the proxy core see it."""

    def lookup(self, aor: str, now: float) -> tuple[Binding, ...]:
        """Live bindings of `aor`, ordered by `order_bindings`."""
        ...

    def apply(self, changes: Sequence[Change]) -> None:
        """Commit all changes, or none (raise `LocationStoreError`)."""
        ...

    def purge(self, now: float) -> int:
        """Delete bindings that are no longer live; return how many."""
        ...

    def aors(self, now: float) -> tuple[str, ...]:
        """AORs with at least one live binding, sorted."""
        ...

    def close(self) -> None: ...


class OnCoreClock:
    """A `LocationStore` for code whose `now` is the proxy core's monotonic clock (the
    registrar, routing, media anti-forgery): it adds `wall_offset` (POSIX minus
    monotonic, taken once at start) to every `now` it passes on, so the store keeps POSIX
    times. Stored monotonic times would be wrong after a reboot, when the clock starts
    again near zero: a registration would look live for as long as the host had been up."""

    def __init__(self, store: LocationStore, wall_offset: float) -> None:
        self.store = store
        self.wall_offset = wall_offset

    def lookup(self, aor: str, now: float) -> tuple[Binding, ...]:
        return self.store.lookup(aor, now + self.wall_offset)

    def apply(self, changes: Sequence[Change]) -> None:
        self.store.apply(changes)

    def purge(self, now: float) -> int:
        return self.store.purge(now + self.wall_offset)

    def aors(self, now: float) -> tuple[str, ...]:
        return self.store.aors(now + self.wall_offset)

    def close(self) -> None:
        self.store.close()


class MemoryLocationStore:
    """A dict of dicts; for tests and single-process use."""

    def __init__(self) -> None:
        self._table: dict[str, dict[str, Binding]] = {}

    def lookup(self, aor: str, now: float) -> tuple[Binding, ...]:
        rows = self._table.get(aor, {})
        return order_bindings([b for b in rows.values() if b.is_live(now)])

    def apply(self, changes: Sequence[Change]) -> None:
        # Nothing here can fail half-way, so applying in order is atomic.
        for change in changes:
            if isinstance(change, Put):
                binding = change.binding
                self._table.setdefault(binding.aor, {})[binding.contact] = binding
            else:
                rows = self._table.get(change.aor)
                if rows is not None:
                    rows.pop(change.contact, None)
                    if not rows:
                        del self._table[change.aor]

    def purge(self, now: float) -> int:
        removed = 0
        for aor in list(self._table):
            rows = self._table[aor]
            for contact in [c for c, b in rows.items() if not b.is_live(now)]:
                del rows[contact]
                removed += 1
            if not rows:
                del self._table[aor]
        return removed

    def aors(self, now: float) -> tuple[str, ...]:
        return tuple(
            sorted(
                a for a, rows in self._table.items() if any(b.is_live(now) for b in rows.values())
            )
        )

    def close(self) -> None:
        self._table.clear()


_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    expires_at REAL NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    registered_at REAL NOT NULL,
    q REAL,
    path TEXT NOT NULL,
    src_address TEXT,
    src_port INTEGER,
    src_transport TEXT,
    instance_id TEXT,
    reg_id INTEGER,
    user_agent TEXT,
    params TEXT NOT NULL,
    PRIMARY KEY (aor, contact)
);
CREATE INDEX IF NOT EXISTS bindings_expiry ON bindings (expires_at);
"""
_COLUMNS: Final = (
    "aor, contact, expires_at, call_id, cseq, registered_at, q, path, "
    "src_address, src_port, src_transport, instance_id, reg_id, user_agent, params"
)
_Row = tuple[
    str, str, float, str, int, float, float | None, str,
    str | None, int | None, str | None, str | None, int | None, str | None, str,
]  # fmt: skip


def _to_row(b: Binding) -> _Row:
    src = b.source
    return (
        b.aor,
        b.contact,
        b.expires_at,
        b.call_id,
        b.cseq,
        b.registered_at,
        b.q,
        json.dumps(list(b.path)),
        None if src is None else src.address,
        None if src is None else src.port,
        None if src is None else src.transport,
        b.instance_id,
        b.reg_id,
        b.user_agent,
        json.dumps([[k, v] for k, v in b.params]),
    )


def _from_row(row: _Row) -> Binding:
    aor, contact, expires_at, call_id, cseq, registered_at, q, path = row[:8]
    address, port, transport, instance_id, reg_id, user_agent, params = row[8:]
    source = None
    if address is not None and port is not None and transport is not None:
        source = Source(address, port, transport)
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=expires_at,
        call_id=call_id,
        cseq=cseq,
        registered_at=registered_at,
        q=q,
        path=tuple(str(p) for p in json.loads(path)),
        source=source,
        instance_id=instance_id,
        reg_id=reg_id,
        user_agent=user_agent,
        params=tuple((str(k), None if v is None else str(v)) for k, v in json.loads(params)),
    )


class SqliteLocationStore:
    """Bindings in an SQLite database (a file path, or ":memory:").

    WAL journal: readers (e.g. `sipwall ctl` listing registrations) never block the
    registrar's writes. Each `apply()` is one `BEGIN IMMEDIATE` transaction."""

    def __init__(self, path: str | Path, *, timeout: float = 5.0) -> None:
        try:
            self._db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise LocationStoreError(f"unknown location schema version {version}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise LocationStoreError(f"cannot open location store {path}: {exc}") from exc

    def lookup(self, aor: str, now: float) -> tuple[Binding, ...]:
        try:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE aor = ? AND expires_at > ?",  # noqa: S608
                (aor, now),
            ).fetchall()
        except sqlite3.Error as exc:
            raise LocationStoreError(f"lookup failed: {exc}") from exc
        return order_bindings([_from_row(row) for row in rows])

    def apply(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for change in changes:
                    if isinstance(change, Put):
                        self._db.execute(
                            f"INSERT OR REPLACE INTO bindings ({_COLUMNS}) "  # noqa: S608
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            _to_row(change.binding),
                        )
                    else:
                        self._db.execute(
                            "DELETE FROM bindings WHERE aor = ? AND contact = ?",
                            (change.aor, change.contact),
                        )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LocationStoreError(f"commit failed: {exc}") from exc

    def purge(self, now: float) -> int:
        try:
            cursor = self._db.execute("DELETE FROM bindings WHERE expires_at <= ?", (now,))
        except sqlite3.Error as exc:
            raise LocationStoreError(f"purge failed: {exc}") from exc
        return cursor.rowcount

    def aors(self, now: float) -> tuple[str, ...]:
        try:
            rows = self._db.execute(
                "SELECT DISTINCT aor FROM bindings WHERE expires_at > ? ORDER BY aor", (now,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise LocationStoreError(f"listing failed: {exc}") from exc
        return tuple(str(row[0]) for row in rows)

    def close(self) -> None:
        self._db.close()
