"""Registrations relayed upstream through us, kept across restarts.

An inside phone that registers with a provider through sipwall (see alg/edge.py,
"Registering with an upstream provider through us") leaves the provider holding our
masked outside contact. `RelayedRegistrations` remembers each Contact relayed that way:
the URI the phone wrote, where the REGISTER came from (the phone's address as we see it:
behind a NAT, the only way to reach it, RFC 3261 §10.3 / RFC 5626 §5.3) and which upstream
hosts it went to. When the provider later sends a call to that Contact (RFC 3261 §16.5),
the edge routes it to the phone — only when it comes from one of those hosts.

Why a journal: the provider keeps the registration for as long as it granted it (an hour
is common), whatever happens to us. Held only in memory, the table would be empty after
an ALG restart and every call from the provider would get 403 until each phone happened
to register again. So every change of an entry is written through to a `RelayedJournal`
(`SqliteRelayedJournal`: one row per contact address, in the registrar's database file)
and the table is read back at start. Times are POSIX seconds, like the location
service's (alg/location.py): a monotonic clock does not survive a reboot. Writes happen
per relayed REGISTER (a phone refreshes every few minutes at most), never per call.

The table itself is pure: `now` is explicit and the journal is given.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from alg import routing
from alg.errors import SipParseError
from alg.proxy_model import Endpoint
from alg.registrar import uri_equivalent
from alg.sip import SipMessage, SipUri, parse_uri

log = logging.getLogger("sipwall.alg.relayed")

RELAY_MAX_EXPIRES: Final = 86_400  # s: what a phone may ask for is bounded (a day)
RELAY_DEFAULT_EXPIRES: Final = 3600  # s: no expires given (RFC 3261 §10.2.1.1)
RELAY_CAPACITY: Final = 10_000  # contact addresses; the oldest go first beyond that
_PER_ADDRESS: Final = 4  # variants (parameters) of one user@host:port kept, newest last

ContactKey = tuple[str, str, int | None]


@dataclass(frozen=True, slots=True)
class RelayedContact:
    """A Contact an inside phone registered upstream through us (see the docstring)."""

    uri: SipUri  # as the phone wrote it: what a masked Request-URI is restored to
    aor: str  # canonical To URI of the REGISTER
    reach: Endpoint  # where the REGISTER came from: where the phone is reached
    upstream: frozenset[str]  # hosts it was relayed to: only they may route to it
    expires_at: float  # POSIX seconds


class RelayedJournal(Protocol):
    """Where the table's entries survive a restart."""

    def save(self, key: ContactKey, entries: tuple[RelayedContact, ...]) -> None:
        """Replace what is kept for one contact address; no entries: forget it."""

    def load(self, now: float) -> list[RelayedContact]:
        """Every entry still live at `now`, oldest first."""


def _contact_key(uri: SipUri) -> ContactKey:
    return (uri.user or "", uri.host.lower(), uri.port)


def _expires(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


class RelayedRegistrations:
    """Contacts of REGISTERs relayed upstream, by contact URI (RFC 3261 §19.1.4
    equality), bounded in number and lifetime; `now` is explicit (POSIX seconds)."""

    def __init__(
        self,
        *,
        capacity: int = RELAY_CAPACITY,
        max_expires: int = RELAY_MAX_EXPIRES,
        journal: RelayedJournal | None = None,
        now: float = 0.0,
    ) -> None:
        self.capacity = capacity
        self.max_expires = max_expires
        self.journal = journal
        self._by_key: OrderedDict[ContactKey, tuple[RelayedContact, ...]] = OrderedDict()
        if journal is not None:
            for entry in journal.load(now):
                key = _contact_key(entry.uri)
                self._by_key[key] = (*self._by_key.get(key, ()), entry)
                self._by_key.move_to_end(key)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_key.values())

    def note(
        self, request: SipMessage, source: Endpoint, upstream: frozenset[str], now: float
    ) -> None:
        """Remember (or renew, or drop) the contacts of a REGISTER sent upstream. An
        unreadable REGISTER is ignored: the registrar upstream will refuse it."""
        try:
            to_uri = request.to.uri
            contacts = request.contact
            header_expires = _expires(request.header("expires"))
        except SipParseError:
            return
        if not isinstance(to_uri, SipUri):
            return
        aor = routing.aor_of(to_uri)
        if contacts.wildcard:  # §10.2.2: remove every binding of this AOR (ours: its phone's)
            for key, entries in list(self._by_key.items()):
                kept = tuple(e for e in entries if e.aor != aor or e.reach.host != source.host)
                if kept != entries:
                    self._store(key, kept)
            return
        for contact in contacts.contacts:
            uri = contact.uri
            if not isinstance(uri, SipUri):
                continue
            expires = _expires(contact.param("expires"))
            if expires is None:
                expires = header_expires if header_expires is not None else RELAY_DEFAULT_EXPIRES
            key = _contact_key(uri)
            kept = tuple(e for e in self._by_key.get(key, ()) if not uri_equivalent(e.uri, uri))
            if expires > 0:
                granted = min(expires, self.max_expires)
                kept += (RelayedContact(uri, aor, source, upstream, now + granted),)
            self._store(key, kept[-_PER_ADDRESS:])
        while len(self._by_key) > self.capacity:
            oldest, _ = self._by_key.popitem(last=False)
            if self.journal is not None:
                self.journal.save(oldest, ())

    def lookup(self, uri: object, source_host: str, now: float) -> RelayedContact | None:
        """The live relayed contact `uri` names, if `source_host` is one of the hosts its
        REGISTER went to."""
        if not isinstance(uri, SipUri):
            return None
        key = _contact_key(uri)
        entries = self._by_key.get(key, ())
        live = tuple(e for e in entries if e.expires_at > now)
        if live != entries:
            self._store(key, live)
        for entry in live:
            if source_host in entry.upstream and uri_equivalent(entry.uri, uri):
                return entry
        return None

    def _store(self, key: ContactKey, entries: tuple[RelayedContact, ...]) -> None:
        if entries:
            self._by_key[key] = entries
            self._by_key.move_to_end(key)
        else:
            self._by_key.pop(key, None)
        if self.journal is not None:
            self.journal.save(key, entries)


class RelayedJournalError(Exception):
    """The journal's database cannot be opened or read."""


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS relayed (
    contact_key TEXT PRIMARY KEY,
    entries TEXT NOT NULL,
    expires_at REAL NOT NULL,
    written INTEGER NOT NULL
);
"""


def _entry_json(entry: RelayedContact) -> dict[str, object]:
    reach = entry.reach
    return {
        "uri": str(entry.uri),
        "aor": entry.aor,
        "reach": [reach.side, reach.transport, reach.host, reach.port],
        "upstream": sorted(entry.upstream),
        "expires_at": entry.expires_at,
    }


def _entry_of(raw: dict[str, object]) -> RelayedContact | None:
    try:
        uri = parse_uri(str(raw["uri"]))
        where, upstream, expires_at = raw["reach"], raw["upstream"], raw["expires_at"]
        if not isinstance(where, list) or len(where) != 4:
            return None
        side, transport, host, port = where
        if not isinstance(uri, SipUri) or side not in ("inside", "outside"):
            return None
        if not isinstance(upstream, list) or not isinstance(expires_at, int | float):
            return None
        reach = Endpoint(side, str(transport), str(host), int(port))
        return RelayedContact(
            uri, str(raw["aor"]), reach, frozenset(map(str, upstream)), float(expires_at)
        )
    except (KeyError, TypeError, ValueError, SipParseError):
        return None  # a row from a future or damaged version: skipped, not fatal


class SqliteRelayedJournal:
    """`RelayedJournal` in an SQLite file (the registrar's database: WAL, so the location
    store's connection and this one do not block each other), or ":memory:"."""

    def __init__(self, path: str | Path, *, timeout: float = 5.0) -> None:
        self._written = 0
        try:
            self._db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT MAX(written) FROM relayed").fetchone()
        except sqlite3.Error as exc:
            raise RelayedJournalError(f"cannot open {path}: {exc}") from exc
        self._written = int(row[0] or 0)

    def save(self, key: ContactKey, entries: tuple[RelayedContact, ...]) -> None:
        text = json.dumps(list(key))
        try:
            if not entries:
                self._db.execute("DELETE FROM relayed WHERE contact_key = ?", (text,))
                return
            self._written += 1  # keeps the load order: the least recently written first
            self._db.execute(
                "INSERT OR REPLACE INTO relayed VALUES (?, ?, ?, ?)",
                (
                    text,
                    json.dumps([_entry_json(e) for e in entries]),
                    max(e.expires_at for e in entries),
                    self._written,
                ),
            )
        except sqlite3.Error:
            # Not fatal: the in-memory table is right; only a restart would forget it.
            log.exception("cannot save the relayed contacts of %s", key)

    def load(self, now: float) -> list[RelayedContact]:
        try:
            self._db.execute("DELETE FROM relayed WHERE expires_at <= ?", (now,))
            rows = self._db.execute("SELECT entries FROM relayed ORDER BY written").fetchall()
        except sqlite3.Error as exc:
            raise RelayedJournalError(f"cannot read the relayed contacts: {exc}") from exc
        out: list[RelayedContact] = []
        for (text,) in rows:
            try:
                raw = json.loads(text)
            except ValueError:
                continue
            entries: Iterable[object] = raw if isinstance(raw, list) else ()
            for item in entries:
                entry = _entry_of(item) if isinstance(item, dict) else None
                if entry is not None and entry.expires_at > now:
                    out.append(entry)
        return out

    def close(self) -> None:
        self._db.close()
