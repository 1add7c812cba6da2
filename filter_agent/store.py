"""The agent's state on disk: SQLite (stdlib sqlite3), written before every RPC answer.

What is kept, and why
---------------------
* bindings and rules, with owner, group, ports and expiry — the ALG's calls;
* counters (packets, bytes, last-seen) — kernel counters survive a restart inside the
  elements, last-seen (for max-idle) does not;
* idempotency records — a client that retries across an agent restart must get its first
  answer, not a second binding (PCP RFC 6887 §11.2 spirit);
* the port quarantine — a freed port must stay unused for its reuse delay even if the
  agent restarts in between;
* meta: the epoch, the boot id, the schema version and the id high-water mark (ids are
  never reused, so a stale id held by a client cannot hit a newer object).

Order of effects per mutating RPC: kernel transaction, then one SQLite transaction, then
the answer. A crash between the first two leaves kernel elements the store does not know;
the client got no answer and retries (with its idempotency key), and recovery deletes
those orphan elements. A crash after the commit loses nothing.

Durability: WAL with synchronous=OFF. A killed agent loses nothing (the writes are in the
OS page cache; this is the case that matters: the kernel keeps forwarding while the agent
restarts). Only an OS crash or power loss can lose or tear writes — and those reset the
kernel too, so the boot id differs and recovery never trusts the file (new epoch). Not
paying for fsync keeps WAL checkpoints from stalling RPCs (measured: p99 10-50 ms spikes
with synchronous=NORMAL).

Times are on the engine's clock (CLOCK_MONOTONIC, system wide but reset at boot): a
store written during another boot is therefore useless, and `Loaded.boot_id` lets
recovery tell.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filter_agent.model import Binding, BindingKind, Counters, Direction, Protocol, Rule
from filter_agent.snapshot import EngineState, QuarantinedPort, id_number

log = logging.getLogger("sipwall.agent.store")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, grp TEXT NOT NULL, protocol TEXT NOT NULL,
    internal_addr TEXT NOT NULL, internal_port INTEGER NOT NULL, external_addr TEXT NOT NULL,
    external_ports TEXT NOT NULL, kind TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rules (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, binding_id TEXT NOT NULL, grp TEXT NOT NULL,
    direction TEXT NOT NULL, remote_addr TEXT NOT NULL, remote_port INTEGER,
    max_idle REAL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rules_by_binding ON rules (binding_id);
CREATE TABLE IF NOT EXISTS counters (
    rule_id TEXT PRIMARY KEY, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
    last_seen REAL);
CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, result BLOB NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (owner, key));
CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires_at);
CREATE TABLE IF NOT EXISTS quarantine (
    address TEXT NOT NULL, protocol TEXT NOT NULL, port INTEGER NOT NULL,
    deadline REAL NOT NULL, PRIMARY KEY (address, protocol, port));
CREATE INDEX IF NOT EXISTS quarantine_by_deadline ON quarantine (deadline);
"""


class StoreError(Exception):
    """The database is unreadable or not ours (corrupt, wrong schema)."""


@dataclass(frozen=True)
class IdempotencyRecord:
    owner: str
    key: str
    fingerprint: str
    result: bytes  # a serialized fcp.v1 BatchResponse
    expires_at: float


@dataclass(frozen=True)
class Loaded:
    epoch: int
    boot_id: str
    state: EngineState
    idempotency: tuple[IdempotencyRecord, ...]


def _binding_row(b: Binding) -> tuple[object, ...]:
    ports = ",".join(str(p) for p in b.external_ports)
    return (
        b.id,
        b.owner,
        b.group,
        b.protocol.value,
        b.internal_addr,
        b.internal_port,
        b.external_addr,
        ports,
        b.kind.value,
        b.expires_at,
    )


def _rule_row(r: Rule) -> tuple[object, ...]:
    return (
        r.id,
        r.owner,
        r.binding_id,
        r.group,
        r.direction.value,
        r.remote_addr,
        r.remote_port,
        r.max_idle,
        r.expires_at,
    )


class StoreTxn:
    """One SQLite transaction; see `Store.transaction`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._high = 0

    # Every writer returns at once when it has nothing to write: a call touches one or
    # two tables, and an empty executemany still costs a statement round in SQLite.

    def put_bindings(self, bindings: Iterable[Binding]) -> None:
        rows = [_binding_row(b) for b in bindings]
        if not rows:
            return
        self._high = max([self._high, *(id_number(str(r[0])) for r in rows)])
        self._db.executemany("INSERT OR REPLACE INTO bindings VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def put_rules(self, rules: Iterable[Rule]) -> None:
        rows = [_rule_row(r) for r in rules]
        if not rows:
            return
        self._high = max([self._high, *(id_number(str(r[0])) for r in rows)])
        self._db.executemany("INSERT OR REPLACE INTO rules VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def delete_bindings(self, ids: Iterable[str]) -> None:
        """Delete bindings with their rules and counters (a rule never outlives its binding)."""
        rows = [(i,) for i in ids]
        if not rows:
            return
        self._db.executemany(
            "DELETE FROM counters WHERE rule_id IN (SELECT id FROM rules WHERE binding_id = ?)",
            rows,
        )
        self._db.executemany("DELETE FROM rules WHERE binding_id = ?", rows)
        self._db.executemany("DELETE FROM bindings WHERE id = ?", rows)

    def delete_rules(self, ids: Iterable[str]) -> None:
        rows = [(i,) for i in ids]
        if not rows:
            return
        self._db.executemany("DELETE FROM counters WHERE rule_id = ?", rows)
        self._db.executemany("DELETE FROM rules WHERE id = ?", rows)

    def put_counters(self, counters: Iterable[tuple[str, Counters]]) -> None:
        rows = [(rid, c.packets, c.bytes, c.last_seen) for rid, c in counters]
        if rows:
            self._db.executemany("INSERT OR REPLACE INTO counters VALUES (?,?,?,?)", rows)

    def put_idempotency(self, record: IdempotencyRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO idempotency VALUES (?,?,?,?,?)",
            (record.owner, record.key, record.fingerprint, record.result, record.expires_at),
        )

    def quarantine(self, ports: Iterable[QuarantinedPort]) -> None:
        rows = [(q.address, q.protocol.value, q.port, q.deadline) for q in ports]
        if rows:
            self._db.executemany("INSERT OR REPLACE INTO quarantine VALUES (?,?,?,?)", rows)

    def prune(self, now: float) -> None:
        """Forget idempotency records and quarantined ports whose time is over."""
        self._db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
        self._db.execute("DELETE FROM quarantine WHERE deadline <= ?", (now,))

    def high_water(self) -> int:
        return self._high


class Store:
    """An open state database. Single-threaded: used from the agent's event loop only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._high_written = 0
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StoreTxn]:
        """All writes of one RPC (or timer tick) commit together, or none does."""
        txn = StoreTxn(self._db)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield txn
            if txn.high_water() > self._high_written:
                # Ids are reserved in blocks of 1000 so that this row is written once per
                # thousand objects, not per RPC; a restart skips at most the unused rest.
                self._high_written = (txn.high_water() // 1000 + 1) * 1000
                self._db.execute(
                    "INSERT INTO meta VALUES ('max_id', ?) ON CONFLICT(key) DO UPDATE SET "
                    "value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                    (str(self._high_written),),
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def reset(self, epoch: int, boot_id: str) -> None:
        """Forget all state and start a new epoch."""
        with self.transaction():
            for table in ("bindings", "rules", "counters", "idempotency", "quarantine", "meta"):
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("epoch", str(epoch)),
                    ("boot_id", boot_id),
                    ("max_id", "0"),
                ],
            )

    def load(self) -> Loaded | None:
        """The stored state; None for an empty (new) database. StoreError if unusable."""
        try:
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise StoreError(f"integrity check failed: {check}")
            meta = self._meta()
            if not meta:
                return None
            if meta.get("schema_version") != str(SCHEMA_VERSION):
                raise StoreError(f"schema version {meta.get('schema_version')!r} is not ours")
            bindings = tuple(
                Binding(
                    bid,
                    owner,
                    grp,
                    Protocol(proto),
                    iaddr,
                    iport,
                    eaddr,
                    tuple(int(p) for p in ports.split(",")),
                    BindingKind(kind),
                    expires,
                )
                for bid, owner, grp, proto, iaddr, iport, eaddr, ports, kind, expires in (
                    self._db.execute("SELECT * FROM bindings")
                )
            )
            rules = tuple(
                Rule(rid, owner, bid, grp, Direction(d), raddr, rport, idle, expires)
                for rid, owner, bid, grp, d, raddr, rport, idle, expires in (
                    self._db.execute("SELECT * FROM rules")
                )
            )
            counters = {
                rid: Counters(packets, nbytes, seen)
                for rid, packets, nbytes, seen in self._db.execute("SELECT * FROM counters")
            }
            quarantine = tuple(
                QuarantinedPort(deadline, address, Protocol(proto), port)
                for address, proto, port, deadline in self._db.execute(
                    "SELECT * FROM quarantine ORDER BY deadline"
                )
            )
            idem = tuple(
                IdempotencyRecord(*row) for row in self._db.execute("SELECT * FROM idempotency")
            )
            state = EngineState(
                tuple(sorted(bindings, key=lambda b: id_number(b.id))),
                tuple(sorted(rules, key=lambda r: id_number(r.id))),
                counters,
                int(meta.get("max_id", "0")) + 1,
                quarantine,
            )
            return Loaded(int(meta["epoch"]), meta["boot_id"], state, idem)
        except (sqlite3.DatabaseError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"unreadable state database: {exc}") from exc


def open_store(path: Path) -> tuple[Store, Loaded | None, str | None]:
    """Open (or create) the database. Returns the store, what it held, and why state was
    lost if it was (`None` when the database was merely new or loaded fine). A corrupt
    file is moved aside, never deleted: an operator may want to look at it."""
    existed = path.exists()
    store: Store | None = None
    try:
        store = Store(path)
        return store, store.load(), None if existed else "no state database"
    except (StoreError, sqlite3.DatabaseError) as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.warning("state database %s is unusable (%s); moved to %s", path, exc, aside)
        if store is not None:
            with contextlib.suppress(sqlite3.Error):
                store.close()
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.rename(aside.with_name(aside.name + suffix))
        return Store(path), None, f"state database unusable: {exc}"
