"""Subscribers: who may register and call, stored as digest HA1s, never as passwords.

A subscriber is `user@domain` with a digest realm (by default the domain, the usual SIP
choice, RFC 3261 §22.1) and one HA1 per algorithm: H(user:realm:password) for MD5 and
for SHA-256 (RFC 8760 §2). HA1 is what verification needs and is useless in any other
realm; it is still a password equivalent inside its realm, so `list` never prints it.

`SqliteSubscriberStore` implements `alg.auth.CredentialSource`. `users_main(argv)` is
`sipwall ctl users ...`:

    sipwall ctl users add alice@example.com --password-stdin [--display-name "Alice"]
    sipwall ctl users del alice@example.com
    sipwall ctl users disable alice@example.com      (and enable)
    sipwall ctl users list [--json] [--domain example.com]

Every subcommand takes `--db PATH` (default `$SIPWALL_SUBSCRIBERS_DB`, else
/var/lib/sipwall/subscribers.db).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from alg.auth import Algorithm, compute_ha1
from alg.errors import SubscriberStoreError

DEFAULT_DB: Final = "/var/lib/sipwall/subscribers.db"
_DOMAIN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._[]:")
# ':' separates the fields HA1 hashes; whitespace, '@' and controls have no place in a
# digest username a SIP UA would send.
_BAD_USER_CHARS: Final = frozenset(':@" \t\r\n\\') | frozenset(chr(c) for c in range(32))


@dataclass(frozen=True, slots=True)
class Subscriber:
    username: str
    domain: str
    realm: str
    ha1_md5: str
    ha1_sha256: str
    display_name: str | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        check_username(self.username)
        check_domain(self.domain)
        if not self.realm or '"' in self.realm:
            raise SubscriberStoreError(f"invalid realm {self.realm!r}")
        if len(self.ha1_md5) != 32 or len(self.ha1_sha256) != 64:
            raise SubscriberStoreError("HA1 values have the wrong length")

    @property
    def address(self) -> str:
        return f"{self.username}@{self.domain}"

    def ha1(self, algorithm: Algorithm) -> str:
        return self.ha1_md5 if algorithm is Algorithm.MD5 else self.ha1_sha256

    @classmethod
    def with_password(
        cls,
        username: str,
        domain: str,
        password: str,
        *,
        realm: str | None = None,
        display_name: str | None = None,
        enabled: bool = True,
    ) -> Subscriber:
        """A subscriber whose HA1s are computed here; the password is not kept."""
        if not password:
            raise SubscriberStoreError("empty password")
        domain = domain.lower()
        realm = realm or domain
        return cls(
            username=username,
            domain=domain,
            realm=realm,
            ha1_md5=compute_ha1(Algorithm.MD5, username, realm, password),
            ha1_sha256=compute_ha1(Algorithm.SHA256, username, realm, password),
            display_name=display_name,
            enabled=enabled,
        )


def check_username(username: str) -> None:
    if not username or not _BAD_USER_CHARS.isdisjoint(username):
        raise SubscriberStoreError(f"invalid user name {username!r}")


def check_domain(domain: str) -> None:
    if not domain or not _DOMAIN_CHARS.issuperset(domain):
        raise SubscriberStoreError(f"invalid domain {domain!r} (lower-case host name)")


def split_address(address: str) -> tuple[str, str]:
    """`user@domain` → (user, lower-case domain)."""
    user, at, domain = address.rpartition("@")
    if not at:
        raise SubscriberStoreError(f"expected USER@DOMAIN, got {address!r}")
    domain = domain.lower()
    check_username(user)
    check_domain(domain)
    return user, domain


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS subscribers (
    username TEXT NOT NULL,
    domain TEXT NOT NULL,
    realm TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    display_name TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (username, domain)
);
CREATE INDEX IF NOT EXISTS subscribers_realm ON subscribers (username, realm);
"""
_COLUMNS: Final = "username, domain, realm, ha1_md5, ha1_sha256, display_name, enabled"


def _subscriber(row: tuple[str, str, str, str, str, str | None, int]) -> Subscriber:
    username, domain, realm, md5, sha256, display_name, enabled = row
    return Subscriber(username, domain, realm, md5, sha256, display_name, bool(enabled))


class SqliteSubscriberStore:
    """Subscribers in SQLite (WAL; a file path or ":memory:")."""

    def __init__(self, path: str | Path, *, timeout: float = 5.0) -> None:
        try:
            self._db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SubscriberStoreError(f"cannot open subscriber store {path}: {exc}") from exc

    def add(self, subscriber: Subscriber, *, replace: bool = False) -> None:
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        try:
            self._db.execute(
                f"{verb} INTO subscribers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    subscriber.username,
                    subscriber.domain,
                    subscriber.realm,
                    subscriber.ha1_md5,
                    subscriber.ha1_sha256,
                    subscriber.display_name,
                    int(subscriber.enabled),
                ),
            )
        except sqlite3.IntegrityError:
            raise SubscriberStoreError(f"{subscriber.address} already exists") from None
        except sqlite3.Error as exc:
            raise SubscriberStoreError(f"cannot add {subscriber.address}: {exc}") from exc

    def remove(self, username: str, domain: str) -> bool:
        cursor = self._execute(
            "DELETE FROM subscribers WHERE username = ? AND domain = ?", (username, domain)
        )
        return cursor.rowcount > 0

    def set_enabled(self, username: str, domain: str, enabled: bool) -> bool:
        cursor = self._execute(
            "UPDATE subscribers SET enabled = ? WHERE username = ? AND domain = ?",
            (int(enabled), username, domain),
        )
        return cursor.rowcount > 0

    def get(self, username: str, domain: str) -> Subscriber | None:
        row = self._execute(
            f"SELECT {_COLUMNS} FROM subscribers WHERE username = ? AND domain = ?",  # noqa: S608
            (username, domain),
        ).fetchone()
        return None if row is None else _subscriber(row)

    def list(self, domain: str | None = None) -> tuple[Subscriber, ...]:
        query = f"SELECT {_COLUMNS} FROM subscribers"  # noqa: S608
        args: tuple[str, ...] = ()
        if domain is not None:
            query += " WHERE domain = ?"
            args = (domain,)
        rows = self._execute(query + " ORDER BY domain, username", args).fetchall()
        return tuple(_subscriber(row) for row in rows)

    def ha1(self, username: str, realm: str, algorithm: Algorithm) -> str | None:
        """`alg.auth.CredentialSource`: enabled subscribers only."""
        row = self._execute(
            f"SELECT {_COLUMNS} FROM subscribers "  # noqa: S608
            "WHERE username = ? AND realm = ? AND enabled = 1 ORDER BY domain LIMIT 1",
            (username, realm),
        ).fetchone()
        return None if row is None else _subscriber(row).ha1(algorithm)

    def close(self) -> None:
        self._db.close()

    def _execute(self, query: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(query, args)
        except sqlite3.Error as exc:
            raise SubscriberStoreError(f"subscriber store: {exc}") from exc


# --- sipwall ctl users ----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=os.environ.get("SIPWALL_SUBSCRIBERS_DB", DEFAULT_DB),
        help="subscriber database (default: $SIPWALL_SUBSCRIBERS_DB or %(default)s)",
    )
    parser = argparse.ArgumentParser(prog="sipwall ctl users", description="Manage subscribers.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", parents=[common], help="add a subscriber")
    add.add_argument("address", metavar="USER@DOMAIN")
    secret = add.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password-stdin", action="store_true", help="read one line")
    secret.add_argument("--password", help="visible in the process list; prefer stdin")
    add.add_argument("--realm", help="digest realm (default: the domain)")
    add.add_argument("--display-name")
    add.add_argument("--replace", action="store_true", help="overwrite an existing one")
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    for name, text in (("del", "remove"), ("enable", "enable"), ("disable", "disable")):
        command = sub.add_parser(name, parents=[common], help=f"{text} a subscriber")
        command.add_argument("address", metavar="USER@DOMAIN")
    listing = sub.add_parser("list", parents=[common], help="list subscribers (no secrets)")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--domain")
    return parser


def users_main(argv: Sequence[str]) -> int:
    """`sipwall ctl users ...`; returns the exit status (0 ok, 1 failed, 2 usage)."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse exits on --help and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except SubscriberStoreError as exc:
        print(f"sipwall ctl users: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "list":
        store = SqliteSubscriberStore(args.db)
        try:
            domain = None if args.domain is None else args.domain.lower()
            _print_list(store.list(domain), as_json=args.json)
        finally:
            store.close()
        return 0
    user, domain = split_address(args.address)
    store = SqliteSubscriberStore(args.db)
    try:
        if args.command == "add":
            password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else args.password
            subscriber = Subscriber.with_password(
                user,
                domain,
                password,
                realm=args.realm,
                display_name=args.display_name,
                enabled=not args.disabled,
            )
            store.add(subscriber, replace=args.replace)
            return 0
        if args.command == "del":
            found = store.remove(user, domain)
        else:
            found = store.set_enabled(user, domain, args.command == "enable")
        if not found:
            print(f"sipwall ctl users: no subscriber {user}@{domain}", file=sys.stderr)
            return 1
        return 0
    finally:
        store.close()


def _print_list(subscribers: Sequence[Subscriber], *, as_json: bool) -> None:
    if as_json:
        public = [
            {k: v for k, v in asdict(s).items() if not k.startswith("ha1")} for s in subscribers
        ]
        print(json.dumps(public, indent=2))
        return
    for s in subscribers:
        state = "enabled" if s.enabled else "disabled"
        print(f"{s.address}\trealm={s.realm}\t{state}\t{s.display_name or ''}".rstrip("\t"))
