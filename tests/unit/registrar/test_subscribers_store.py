"""Subscriber store and `sipwall ctl users`; digest + registrar end to end."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from alg.auth import (
    Algorithm,
    Authenticated,
    Challenge,
    DigestAuthenticator,
    compute_ha1,
    compute_response,
)
from alg.errors import SubscriberStoreError
from alg.location import MemoryLocationStore, Source
from alg.registrar import Registrar, RegistrarPolicy
from alg.sip import SipMessage, parse_message
from alg.subscribers import SqliteSubscriberStore, Subscriber, split_address, users_main

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteSubscriberStore]:
    made = SqliteSubscriberStore(tmp_path / "subs.db")
    yield made
    made.close()


def test_hashes_are_stored_never_the_password(tmp_path: Path) -> None:
    path = tmp_path / "subs.db"
    store = SqliteSubscriberStore(path)
    store.add(Subscriber.with_password("alice", "Example.COM", "correct horse", display_name="A"))
    got = store.get("alice", "example.com")
    assert got is not None
    assert got.realm == "example.com" and got.display_name == "A" and got.enabled
    assert got.ha1_md5 == compute_ha1(Algorithm.MD5, "alice", "example.com", "correct horse")
    assert got.ha1_sha256 == compute_ha1(Algorithm.SHA256, "alice", "example.com", "correct horse")
    store.close()
    for file in tmp_path.iterdir():
        assert b"correct horse" not in file.read_bytes()


def test_credential_source_honours_enabled_and_realm(store: SqliteSubscriberStore) -> None:
    store.add(Subscriber.with_password("bob", "example.com", "pw", realm="voice"))
    assert store.ha1("bob", "voice", Algorithm.SHA256) == compute_ha1(
        Algorithm.SHA256, "bob", "voice", "pw"
    )
    assert store.ha1("bob", "example.com", Algorithm.MD5) is None  # realm, not domain
    assert store.set_enabled("bob", "example.com", False)
    assert store.ha1("bob", "voice", Algorithm.MD5) is None
    assert not store.set_enabled("nobody", "example.com", True)


def test_duplicates_list_and_remove(store: SqliteSubscriberStore) -> None:
    store.add(Subscriber.with_password("b", "example.com", "1"))
    store.add(Subscriber.with_password("a", "example.com", "1"))
    store.add(Subscriber.with_password("z", "example.net", "1"))
    with pytest.raises(SubscriberStoreError):
        store.add(Subscriber.with_password("a", "example.com", "2"))
    store.add(Subscriber.with_password("a", "example.com", "2"), replace=True)
    assert [s.address for s in store.list()] == [
        "a@example.com",
        "b@example.com",
        "z@example.net",
    ]
    assert [s.address for s in store.list("example.net")] == ["z@example.net"]
    assert store.remove("a", "example.com")
    assert not store.remove("a", "example.com")


@pytest.mark.parametrize(
    "address", ["alice", "@example.com", "al ice@example.com", "a@EX AMPLE", "a:b@x"]
)
def test_bad_addresses(address: str) -> None:
    with pytest.raises(SubscriberStoreError):
        split_address(address)


def test_empty_password_refused() -> None:
    with pytest.raises(SubscriberStoreError):
        Subscriber.with_password("a", "example.com", "")


# --- the CLI ----------------------------------------------------------------------------


def run(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = users_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_add_list_disable_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "cli.db")
    assert (
        run(
            ["add", "alice@example.com", "--password-stdin", "--db", db],
            monkeypatch,
            capsys,
            "s3cret\n",
        )[0]
        == 0
    )
    assert (
        run(
            ["add", "bob@example.com", "--password", "pw", "--display-name", "Bob", "--db", db],
            monkeypatch,
            capsys,
        )[0]
        == 0
    )
    code, out, err = run(
        ["add", "bob@example.com", "--password", "pw", "--db", db], monkeypatch, capsys
    )
    assert code == 1 and "already exists" in err
    assert run(["disable", "bob@example.com", "--db", db], monkeypatch, capsys)[0] == 0

    code, out, _ = run(["list", "--json", "--db", db], monkeypatch, capsys)
    assert code == 0
    listed = json.loads(out)
    assert [(u["username"], u["enabled"], u["display_name"]) for u in listed] == [
        ("alice", True, None),
        ("bob", False, "Bob"),
    ]
    assert all(not key.startswith("ha1") for u in listed for key in u)

    code, out, _ = run(["list", "--db", db], monkeypatch, capsys)
    assert out.splitlines() == [
        "alice@example.com\trealm=example.com\tenabled",
        "bob@example.com\trealm=example.com\tdisabled\tBob",
    ]
    subs = SqliteSubscriberStore(db)
    assert subs.ha1("alice", "example.com", Algorithm.MD5) == compute_ha1(
        Algorithm.MD5, "alice", "example.com", "s3cret"
    )
    subs.close()

    assert run(["del", "alice@example.com", "--db", db], monkeypatch, capsys)[0] == 0
    code, _, err = run(["del", "alice@example.com", "--db", db], monkeypatch, capsys)
    assert code == 1 and "no subscriber" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["add", "alice@example.com"],  # no password option
        ["add", "alice@example.com", "--password", "x", "--password-stdin"],
        ["frobnicate"],
    ],
)
def test_cli_usage_errors_exit_2(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        run([*argv, "--db", str(tmp_path / "x.db")] if argv else argv, monkeypatch, capsys)[0] == 2
    )


def test_cli_rejects_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "cli.db")
    assert run(["add", "nodomain", "--password", "x", "--db", db], monkeypatch, capsys)[0] == 1
    assert (
        run(["add", "a@example.com", "--password-stdin", "--db", db], monkeypatch, capsys, "\n")[0]
        == 1
    )
    assert run(["list", "--db", str(tmp_path / "missing" / "x.db")], monkeypatch, capsys)[0] == 1


def test_cli_db_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("SIPWALL_SUBSCRIBERS_DB", str(db))
    assert run(["add", "a@example.com", "--password", "x"], monkeypatch, capsys)[0] == 0
    assert db.exists()


# --- end to end: REGISTER → 401 → REGISTER with credentials → 200 ------------------------


def register_msg(cseq: int, authorization: str | None = None) -> SipMessage:
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-e2e-" + str(cseq),
        "To: <sip:alice@example.com>",
        "From: <sip:alice@example.com>;tag=e2e",
        "Call-ID: e2e@10.77.0.10",
        f"CSeq: {cseq} REGISTER",
        "Contact: <sip:alice@10.77.0.10:5060>",
        "Expires: 600",
    ]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    lines.append("Content-Length: 0")
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


def test_register_with_digest_end_to_end(store: SqliteSubscriberStore) -> None:
    store.add(Subscriber.with_password("alice", "example.com", "s3cret"))
    auth = DigestAuthenticator(store, [b"k" * 32])
    registrar = Registrar(MemoryLocationStore(), ["example.com"], RegistrarPolicy())
    source = Source("198.51.100.7", 40123, "UDP")

    def attempt(msg: SipMessage, now: float) -> tuple[int, Challenge | None]:
        verdict = auth.verify(msg, "example.com", now)
        identity = verdict.identity if isinstance(verdict, Authenticated) else None
        decision = registrar.handle(msg, identity, source, now)
        if decision.response.needs_challenge:
            assert isinstance(verdict, Challenge)
            return verdict.status, verdict
        return decision.response.status, None

    status, challenge = attempt(register_msg(1), T0)
    assert status == 401 and challenge is not None
    nonce = challenge.headers[0][1].split(b'nonce="')[1].split(b'"')[0].decode()

    def creds(password: str, nc: str) -> str:
        ha1 = compute_ha1(Algorithm.SHA256, "alice", "example.com", password)
        response = compute_response(
            Algorithm.SHA256, ha1, nonce, "REGISTER", "sip:example.com", "auth", nc, "abc"
        )
        return (
            f'Digest username="alice", realm="example.com", nonce="{nonce}", '
            f'uri="sip:example.com", response="{response}", algorithm=SHA-256, '
            f'qop=auth, nc={nc}, cnonce="abc"'
        )

    assert attempt(register_msg(2, creds("wrong", "00000001")), T0 + 1)[0] == 401
    assert attempt(register_msg(3, creds("s3cret", "00000001")), T0 + 1)[0] == 200
    assert [b.contact for b in registrar.store.lookup("sip:alice@example.com", T0 + 2)] == [
        "sip:alice@10.77.0.10:5060"
    ]
    # the same authenticated request replayed is refused
    assert attempt(register_msg(3, creds("s3cret", "00000001")), T0 + 2)[0] == 401
