"""RFC 3261 §10.3 REGISTER processing with a virtual clock."""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from alg.auth import Identity
from alg.errors import LocationStoreError
from alg.location import (
    Binding,
    Change,
    MemoryLocationStore,
    Source,
    SqliteLocationStore,
    canonical_aor,
)
from alg.registrar import (
    RegisterDecision,
    Registrar,
    RegistrarPolicy,
    process_register,
    uri_equivalent,
)
from alg.sip import SipMessage, SipUri, parse_uri

T0 = 1_700_000_000.0  # the virtual clock (the conftest builders use no clock)
RegisterBuilder = Callable[..., SipMessage]
SOURCE = Source("198.51.100.7", 40123, "UDP")
ALICE = Identity("alice", "example.com")
AOR = "sip:alice@example.com"
POLICY = RegistrarPolicy(min_expires=60, max_expires=7200, default_expires=3600, max_contacts=4)


def make(policy: RegistrarPolicy = POLICY, store: object | None = None) -> Registrar:
    return Registrar(store or MemoryLocationStore(), ["example.com"], policy)  # type: ignore[arg-type]


def handle(
    registrar: Registrar, msg: SipMessage, now: float = T0, who: Identity | None = ALICE
) -> RegisterDecision:
    return registrar.handle(msg, who, SOURCE, now)


def header(decision: RegisterDecision, name: str) -> list[bytes]:
    return [v for k, v in decision.response.headers if k == name]


def status(decision: RegisterDecision) -> tuple[int, str]:
    return decision.response.status, decision.response.reason


# --- basic add / fetch / refresh / expiry / remove ----------------------------------------


def test_fetch_with_no_bindings(register: RegisterBuilder) -> None:
    decision = handle(make(), register())
    assert status(decision) == (200, "OK")
    assert header(decision, "Contact") == []
    (date,) = header(decision, "Date")
    assert email.utils.parsedate_to_datetime(date.decode()).timestamp() == T0
    assert decision.changes == ()


def test_add_binding_records_source_path_and_user_agent(register: RegisterBuilder) -> None:
    registrar = make()
    msg = register(
        contacts=['<sip:alice@10.77.0.10:5060>;+sip.instance="<urn:uuid:1>";reg-id=1'],
        extra=["Path: <sip:edge.example.com;lr>"],
    )
    decision = handle(registrar, msg)
    assert status(decision) == (200, "OK")
    assert header(decision, "Contact") == [
        b'<sip:alice@10.77.0.10:5060>;+sip.instance="<urn:uuid:1>";reg-id=1;expires=3600'
    ]
    (stored,) = registrar.store.lookup(AOR, T0)
    assert stored.source == SOURCE
    assert stored.path == ("<sip:edge.example.com;lr>",)
    assert stored.user_agent == "test-phone/1.0"
    assert (stored.instance_id, stored.reg_id) == ("<urn:uuid:1>", 1)
    assert (stored.call_id, stored.cseq, stored.expires_at) == ("reg-1@10.77.0.10", 1, T0 + 3600)
    # a later fetch (no Contact) lists it with the remaining time
    later = handle(registrar, register(cseq=2), T0 + 600)
    assert header(later, "Contact")[0].endswith(b";expires=3000")


def test_expires_param_beats_header_and_header_beats_default(register: RegisterBuilder) -> None:
    registrar = make()
    msg = register(contacts=["<sip:a@10.0.0.1>;expires=120", "<sip:b@10.0.0.2>"], expires=300)
    decision = handle(registrar, msg)
    assert sorted(header(decision, "Contact")) == [
        b"<sip:a@10.0.0.1>;expires=120",
        b"<sip:b@10.0.0.2>;expires=300",
    ]


def test_expiry_is_capped_at_max_and_malformed_means_3600(register: RegisterBuilder) -> None:
    registrar = make()
    msg = register(contacts=["<sip:a@10.0.0.1>;expires=99999999999", "<sip:b@10.0.0.2>;expires=x"])
    decision = handle(registrar, msg)
    assert sorted(header(decision, "Contact")) == [
        b"<sip:a@10.0.0.1>;expires=7200",
        b"<sip:b@10.0.0.2>;expires=3600",
    ]


def test_refresh_extends_and_expiry_removes(register: RegisterBuilder) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:a@10.0.0.1>"], expires=300))
    refreshed = handle(
        registrar, register(contacts=["<sip:a@10.0.0.1>"], expires=300, cseq=2), T0 + 200
    )
    assert header(refreshed, "Contact") == [b"<sip:a@10.0.0.1>;expires=300"]
    assert len(registrar.store.lookup(AOR, T0 + 499)) == 1
    assert registrar.store.lookup(AOR, T0 + 500) == ()
    assert header(handle(registrar, register(cseq=3), T0 + 500), "Contact") == []
    assert registrar.store.purge(T0 + 500) == 0  # the registrar purged it on that REGISTER


def test_expires_zero_removes_only_that_contact(register: RegisterBuilder) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:a@10.0.0.1>", "<sip:b@10.0.0.2>"]))
    decision = handle(registrar, register(contacts=["<sip:a@10.0.0.1>;expires=0"], cseq=2))
    assert header(decision, "Contact") == [b"<sip:b@10.0.0.2>;expires=3600"]
    # removing a binding that does not exist is not an error
    again = handle(registrar, register(contacts=["<sip:a@10.0.0.1>"], expires=0, cseq=3))
    assert status(again) == (200, "OK")


def test_refresh_matches_by_uri_comparison_not_text(register: RegisterBuilder) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:%61lice@PHONE.example.com;transport=TCP>"]))
    decision = handle(
        registrar, register(contacts=["<sip:alice@phone.example.com;transport=tcp>"], cseq=2)
    )
    assert header(decision, "Contact") == [
        b"<sip:alice@phone.example.com;transport=tcp>;expires=3600"
    ]
    assert len(registrar.store.lookup(AOR, T0)) == 1


def test_transport_makes_a_different_binding(register: RegisterBuilder) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:alice@10.0.0.1>"]))
    handle(registrar, register(contacts=["<sip:alice@10.0.0.1;transport=tcp>"], cseq=2))
    assert len(registrar.store.lookup(AOR, T0)) == 2


def test_duplicate_contact_in_one_request_last_wins(register: RegisterBuilder) -> None:
    registrar = make()
    decision = handle(
        registrar,
        register(contacts=["<sip:a@10.0.0.1>;expires=100", "<sip:a@10.0.0.1>;expires=200"]),
    )
    assert header(decision, "Contact") == [b"<sip:a@10.0.0.1>;expires=200"]


# --- several contacts and q ------------------------------------------------------------


def test_several_contacts_listed_by_q(register: RegisterBuilder) -> None:
    registrar = make()
    msg = register(
        contacts=["<sip:low@10.0.0.1>;q=0.1, <sip:high@10.0.0.2>;q=1.0", "<sip:mid@10.0.0.3>;q=0.5"]
    )
    decision = handle(registrar, msg)
    assert header(decision, "Contact") == [
        b"<sip:high@10.0.0.2>;q=1;expires=3600",
        b"<sip:mid@10.0.0.3>;q=0.5;expires=3600",
        b"<sip:low@10.0.0.1>;q=0.1;expires=3600",
    ]
    assert [b.contact for b in decision.bindings] == [
        "sip:high@10.0.0.2",
        "sip:mid@10.0.0.3",
        "sip:low@10.0.0.1",
    ]


@pytest.mark.parametrize("q", ["1.5", "0.1234", "abc", "-1", "1.001", ".5"])
def test_bad_q_value_is_400(register: RegisterBuilder, q: str) -> None:
    registrar = make()
    decision = handle(registrar, register(contacts=[f"<sip:a@10.0.0.1>;q={q}"]))
    assert decision.response.status == 400
    assert registrar.store.lookup(AOR, T0) == ()


def test_too_many_contacts_is_403(register: RegisterBuilder) -> None:
    registrar = make()
    handle(registrar, register(contacts=[f"<sip:c{i}@10.0.0.1>" for i in range(3)]))
    decision = handle(
        registrar, register(contacts=["<sip:x@10.0.0.9>", "<sip:y@10.0.0.9>"], cseq=2)
    )
    assert decision.response.status == 403
    assert len(registrar.store.lookup(AOR, T0)) == 3
    assert handle(registrar, register(contacts=["<sip:x@10.0.0.9>"], cseq=3)).response.status == 200


# --- wildcard -------------------------------------------------------------------------


def test_wildcard_with_expires_zero_removes_all(register: RegisterBuilder) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:a@10.0.0.1>", "<sip:b@10.0.0.2>"]))
    handle(registrar, register(contacts=["<sip:c@10.0.0.3>"], call_id="other-call", cseq=7))
    decision = handle(registrar, register(contacts=["*"], expires=0, cseq=2))
    assert status(decision) == (200, "OK")
    assert header(decision, "Contact") == []
    assert registrar.store.lookup(AOR, T0) == ()


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [
        (["*"], None),  # no Expires header
        (["*"], 3600),  # not zero
        (["*", "<sip:a@10.0.0.1>"], 0),  # not alone (two header fields)
        (["*, <sip:a@10.0.0.1>"], 0),  # not alone (one field)
        (["<sip:a@10.0.0.1>", "*"], 0),
    ],
)
def test_invalid_wildcard_is_400(
    register: RegisterBuilder, contacts: list[str], expires: int | None
) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:a@10.0.0.1>"]))
    decision = handle(registrar, register(contacts=contacts, expires=expires, cseq=2))
    assert decision.response.status == 400
    assert len(registrar.store.lookup(AOR, T0)) == 1


def test_wildcard_from_same_call_id_with_old_cseq_fails(register: RegisterBuilder) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:a@10.0.0.1>"], cseq=5))
    decision = handle(registrar, register(contacts=["*"], expires=0, cseq=5))
    assert decision.response.status == 500
    assert len(registrar.store.lookup(AOR, T0)) == 1


# --- ordering (§10.3 step 7) -------------------------------------------------------------


@pytest.mark.parametrize("cseq", [4, 5])
def test_same_call_id_with_lower_or_equal_cseq_fails(register: RegisterBuilder, cseq: int) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:a@10.0.0.1>"], expires=300, cseq=5))
    decision = handle(
        registrar,
        register(contacts=["<sip:b@10.0.0.2>", "<sip:a@10.0.0.1>;expires=0"], cseq=cseq),
    )
    assert status(decision) == (500, "Out of Order Request")
    assert decision.changes == ()
    # nothing of the failed request was committed: b was not added, a not removed
    assert [b.contact for b in registrar.store.lookup(AOR, T0)] == ["sip:a@10.0.0.1"]


def test_other_call_id_may_have_any_cseq(register: RegisterBuilder) -> None:
    registrar = make()
    handle(registrar, register(contacts=["<sip:a@10.0.0.1>"], expires=300, cseq=50))
    decision = handle(
        registrar, register(contacts=["<sip:a@10.0.0.1>"], call_id="rebooted", cseq=1), T0 + 10
    )
    assert status(decision) == (200, "OK")
    (stored,) = registrar.store.lookup(AOR, T0 + 10)
    assert (stored.call_id, stored.cseq, stored.expires_at) == ("rebooted", 1, T0 + 10 + 3600)


# --- 423 -----------------------------------------------------------------------------


def test_interval_too_brief(register: RegisterBuilder) -> None:
    registrar = make()
    decision = handle(
        registrar, register(contacts=["<sip:a@10.0.0.1>", "<sip:b@10.0.0.2>;expires=30"])
    )
    assert status(decision) == (423, "Interval Too Brief")
    assert header(decision, "Min-Expires") == [b"60"]
    assert registrar.store.lookup(AOR, T0) == ()  # nothing added, not even a


def test_no_423_for_an_hour_or_more_even_below_minimum(register: RegisterBuilder) -> None:
    policy = RegistrarPolicy(min_expires=7200, default_expires=7200, max_expires=7200)
    decision = handle(make(policy), register(contacts=["<sip:a@10.0.0.1>;expires=3600"]))
    assert status(decision) == (200, "OK")
    assert header(decision, "Contact") == [b"<sip:a@10.0.0.1>;expires=3600"]


def test_expires_zero_is_never_too_brief(register: RegisterBuilder) -> None:
    decision = handle(make(), register(contacts=["<sip:a@10.0.0.1>"], expires=0))
    assert decision.response.status == 200


# --- domains, To, authorization, Require ---------------------------------------------


def test_request_uri_of_a_foreign_domain_is_403(register: RegisterBuilder) -> None:
    decision = handle(make(), register(ruri="sip:elsewhere.example.net"))
    assert decision.response.status == 403


def test_aor_of_a_foreign_domain_is_404(register: RegisterBuilder) -> None:
    decision = handle(make(), register(to="<sip:alice@elsewhere.example.net>"))
    assert status(decision) == (404, "Not Found")


def test_rfc4475_unksm2_non_sip_to_is_400(rfc4475: Callable[[str], SipMessage]) -> None:
    registrar = Registrar(MemoryLocationStore(), ["example.com"], RegistrarPolicy())
    decision = registrar.handle(rfc4475("unksm2"), None, SOURCE, T0)
    assert decision.response.status == 400
    assert "To" in decision.response.reason


def test_unauthenticated_needs_challenge(register: RegisterBuilder) -> None:
    decision = handle(make(), register(contacts=["<sip:a@10.0.0.1>"]), who=None)
    assert status(decision) == (401, "Unauthorized")
    assert decision.response.needs_challenge
    assert decision.changes == ()


def test_auth_can_be_off(register: RegisterBuilder) -> None:
    policy = RegistrarPolicy(require_auth=False)
    decision = handle(make(policy), register(contacts=["<sip:a@10.0.0.1>"]), who=None)
    assert decision.response.status == 200


@pytest.mark.parametrize(
    "who", [Identity("bob", "example.com"), Identity("alice", "other.example.net")]
)
def test_identity_must_own_the_aor(register: RegisterBuilder, who: Identity) -> None:
    decision = handle(make(), register(contacts=["<sip:a@10.0.0.1>"]), who=who)
    assert status(decision) == (403, "Forbidden")


def test_authorization_hook(register: RegisterBuilder) -> None:
    def admin_may_all(identity: Identity, aor: SipUri) -> bool:
        return identity.username == "admin"

    policy = RegistrarPolicy(authorize=admin_may_all)
    ok = handle(make(policy), register(contacts=["<sip:a@10.0.0.1>"]), who=Identity("admin", "x"))
    assert ok.response.status == 200
    assert handle(make(policy), register(), who=ALICE).response.status == 403


def test_unsupported_require_is_420(register: RegisterBuilder) -> None:
    decision = handle(make(), register(extra=["Require: path, foo, bar"]))
    assert status(decision) == (420, "Bad Extension")
    assert header(decision, "Unsupported") == [b"foo, bar"]
    assert handle(make(), register(extra=["Require: path"])).response.status == 200


def test_path_echoed_only_when_the_ua_supports_it(register: RegisterBuilder) -> None:
    paths = [
        "Path: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        "Path: <sip:p3.example.com;lr>",
    ]
    with_support = handle(
        make(), register(contacts=["<sip:a@10.0.0.1>"], extra=[*paths, "Supported: path"])
    )
    assert header(with_support, "Path") == [
        b"<sip:p1.example.com;lr>",
        b"<sip:p2.example.com;lr>",
        b"<sip:p3.example.com;lr>",
    ]
    without = handle(make(), register(contacts=["<sip:a@10.0.0.1>"], extra=paths))
    assert header(without, "Path") == []
    assert without.bindings[0].path == (
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    )


def test_malformed_path_is_400(register: RegisterBuilder) -> None:
    decision = handle(make(), register(contacts=["<sip:a@10.0.0.1>"], extra=["Path: <bad"]))
    assert decision.response.status == 400


def test_non_sip_contact_is_400(register: RegisterBuilder) -> None:
    decision = handle(make(), register(contacts=["<tel:+15551234567>"]))
    assert decision.response.status == 400


def test_not_a_register_is_400(register: RegisterBuilder) -> None:
    decision = handle(make(), register(method="OPTIONS"))
    assert decision.response.status == 400


# --- RFC 4475 REGISTER messages -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "contact"),
    [
        # RFC 4475 §3.3.12 cparam01: addr-spec form, ;unknownparam is a header parameter
        ("cparam01", b"<sip:+19725552222@gw1.example.net>;unknownparam;expires=3600"),
        # §3.3.13 cparam02: name-addr form, ;unknownparam belongs to the URI
        ("cparam02", b"<sip:+19725552222@gw1.example.net;unknownparam>;expires=3600"),
        # §3.3.14 regescrt: an escaped header in the contact URI is stored as is
        ("regescrt", b"<sip:user@example.com?Route=%3Csip:sip.example.com%3E>;expires=3600"),
    ],
)
def test_rfc4475_registers_accepted(
    rfc4475: Callable[[str], SipMessage], name: str, contact: bytes
) -> None:
    registrar = Registrar(
        MemoryLocationStore(), ["example.com"], RegistrarPolicy(require_auth=False)
    )
    decision = registrar.handle(rfc4475(name), None, SOURCE, T0)
    assert decision.response.status == 200
    assert header(decision, "Contact") == [contact]


def test_rfc4475_regbadct_is_400(rfc4475: Callable[[str], SipMessage]) -> None:
    registrar = Registrar(
        MemoryLocationStore(), ["example.com"], RegistrarPolicy(require_auth=False)
    )
    assert registrar.handle(rfc4475("regbadct"), None, SOURCE, T0).response.status == 400


# --- store failures and persistence --------------------------------------------------


class BrokenStore(MemoryLocationStore):
    def apply(self, changes: Sequence[Change]) -> None:
        raise LocationStoreError("disk full")


def test_commit_failure_is_500(register: RegisterBuilder) -> None:
    registrar = make(store=BrokenStore())
    decision = handle(registrar, register(contacts=["<sip:a@10.0.0.1>"]))
    assert status(decision) == (500, "Server Internal Error")
    assert decision.changes == ()


def test_registrations_survive_restart(register: RegisterBuilder, tmp_path: Path) -> None:
    path = tmp_path / "location.db"
    first = make(store=SqliteLocationStore(path))
    handle(first, register(contacts=["<sip:a@10.0.0.1>;q=0.5", "<sip:b@10.0.0.2>"], cseq=9))
    first.store.close()

    second = make(store=SqliteLocationStore(path))
    fetched = handle(second, register(cseq=10), T0 + 100)
    assert header(fetched, "Contact") == [
        b"<sip:b@10.0.0.2>;expires=3500",
        b"<sip:a@10.0.0.1>;q=0.5;expires=3500",
    ]
    # the ordering state survived too: an old CSeq from the same Call-ID still fails
    old = handle(second, register(contacts=["<sip:a@10.0.0.1>"], cseq=9), T0 + 100)
    assert old.response.status == 500
    second.store.close()


# --- the pure function and the helpers ---------------------------------------------


def test_process_register_is_pure(register: RegisterBuilder) -> None:
    current = (
        Binding(AOR, "sip:a@10.0.0.1", T0 + 100, "c", 1, T0 - 100),
        Binding(AOR, "sip:b@10.0.0.2", T0 - 1, "c", 1, T0 - 3600),  # already dead
    )
    decision = process_register(
        register(contacts=["<sip:z@10.0.0.3>"]),
        identity=ALICE,
        source=SOURCE,
        domains={"example.com"},
        policy=POLICY,
        current=current,
        now=T0,
    )
    assert [b.contact for b in decision.bindings] == ["sip:z@10.0.0.3", "sip:a@10.0.0.1"]
    assert len(decision.changes) == 1


@pytest.mark.parametrize(
    ("uri", "aor"),
    [
        ("sip:alice@Example.COM;user=phone", "sip:alice@example.com"),
        ("sips:%61lice@example.com:5061", "sip:alice@example.com"),
        ("sip:example.com", "sip:example.com"),
    ],
)
def test_canonical_aor(uri: str, aor: str) -> None:
    parsed = parse_uri(uri)
    assert isinstance(parsed, SipUri)
    assert canonical_aor(parsed) == aor


# RFC 3261 §19.1.4's own examples.
EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
]
DIFFERENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_uri_equivalent(a: str, b: str) -> None:
    assert uri_equivalent(parse_uri(a), parse_uri(b))
    assert uri_equivalent(parse_uri(b), parse_uri(a))


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_uri_different(a: str, b: str) -> None:
    assert not uri_equivalent(parse_uri(a), parse_uri(b))
    assert not uri_equivalent(parse_uri(b), parse_uri(a))


def test_policy_validates_itself() -> None:
    with pytest.raises(ValueError):
        RegistrarPolicy(min_expires=100, default_expires=50)
    with pytest.raises(ValueError):
        RegistrarPolicy(max_contacts=0)


def test_a_reboot_does_not_revive_expired_registrations(
    register: RegisterBuilder, tmp_path: Path
) -> None:
    """The core's clock is monotonic and restarts near zero with the host; the store
    keeps POSIX times (`wall_offset`), so expiry survives a reboot both ways."""
    path = tmp_path / "location.db"
    up_for_a_month = 30 * 86_400.0
    before = Registrar(SqliteLocationStore(path), ["example.com"], POLICY, wall_offset=T0)
    handle(before, register(contacts=["<sip:a@10.0.0.1>"], expires=600), up_for_a_month)
    before.store.close()
    # an hour later (POSIX), after a reboot: monotonic 100 s, hence a new offset
    wall_then = T0 + up_for_a_month + 3600
    after = Registrar(
        SqliteLocationStore(path), ["example.com"], POLICY, wall_offset=wall_then - 100
    )
    assert after.store.lookup(AOR, wall_then) == ()  # long expired
    assert header(handle(after, register(cseq=2), 100.0), "Contact") == []
    # and one registered just before the reboot is still live, with the right remainder
    handle(after, register(contacts=["<sip:b@10.0.0.2>"], cseq=3, expires=600), 100.0)
    after.store.close()
    rebooted = Registrar(
        SqliteLocationStore(path), ["example.com"], POLICY, wall_offset=wall_then + 60 - 5
    )
    assert header(handle(rebooted, register(cseq=4), 5.0), "Contact") == [
        b"<sip:b@10.0.0.2>;expires=540"
    ]
    rebooted.store.close()


def test_expired_bindings_are_purged_from_the_store(register: RegisterBuilder) -> None:
    """Lookups skip dead bindings; the registrar also deletes them (at most once a
    minute, on a REGISTER), so the database does not grow with every phone ever seen."""
    store = MemoryLocationStore()
    registrar = make(store=store)
    handle(registrar, register(contacts=["<sip:a@10.0.0.1>"], expires=60))
    handle(registrar, register(contacts=["<sip:b@10.0.0.2>"], cseq=2, expires=3600), T0 + 30)
    assert store.purge(T0 + 30) == 0  # nothing dead yet
    # a's 60 s ran out; the next REGISTER (another AOR, more than a minute on) purges it
    other = register(contacts=["<sip:c@10.0.0.3>"], to="<sip:carol@example.com>", cseq=1)
    handle(registrar, other, T0 + 100)
    assert store.purge(T0 + 100) == 0  # already done by the registrar
    assert [b.contact for b in store.lookup(AOR, T0 + 100)] == ["sip:b@10.0.0.2"]


class PurgeFails(MemoryLocationStore):
    def purge(self, now: float) -> int:
        raise LocationStoreError("database is locked")


def test_a_failed_purge_does_not_cost_the_register_its_answer(register: RegisterBuilder) -> None:
    decision = handle(make(store=PurgeFails()), register(contacts=["<sip:a@10.0.0.1>"]))
    assert status(decision) == (200, "OK")
