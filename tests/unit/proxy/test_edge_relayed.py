"""Registering with an upstream provider through sipwall (alg/edge.py, issue #6): the
REGISTER leaves with its Contact masked, the provider's challenge and the phone's
credentials pass untouched, and a call the provider sends to the masked Contact reaches
the phone — from the provider only, and only while the registration lasts."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator

import pytest
from proxy_harness import ALICE, BOB, sent_to

from alg.assemble import AlgServices, assemble
from alg.builders import build_response
from alg.config import parse_config
from alg.proxy_model import Endpoint
from alg.relayed import RelayedRegistrations
from alg.sip import SipMessage, SipUri, parse_message, parse_uri

PROVIDER = Endpoint("outside", "UDP", "198.51.100.10", 5060)
CONTACT = "sip:alice-1@10.77.0.10:5060;transport=udp"
CHALLENGE = 'Digest realm="provider.example", nonce="n0nce", qop="auth", algorithm=MD5'
CREDENTIALS = (
    'Digest username="alice", realm="provider.example", nonce="n0nce", '
    'uri="sip:provider.example", response="0123456789abcdef0123456789abcdef", '
    'algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"'
)


@pytest.fixture
def alg() -> Iterator[AlgServices]:
    text = """
[inside]
address = "10.77.0.1"
[outside]
address = "203.0.113.1"
[proxy]
inside_networks = ["10.77.0.0/24"]
upstream = "198.51.100.10:5060"
[registrar]
database = ":memory:"
[media]
enabled = true
[[media.agents]]
name = "gw1"
address = "127.0.0.1:7700"
"""
    built = assemble(parse_config(tomllib.loads(text)))
    yield built
    built.close()


def register(branch: str, cseq: int, *, expires: int = 600, extra: str = "") -> bytes:
    return (
        f"REGISTER sip:provider.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.77.0.10:5060;branch={branch};rport\r\n"
        f"Route: <sip:10.77.0.1:5060;lr>\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:alice@provider.example>\r\n"
        f"From: <sip:alice@provider.example>;tag=r1\r\nCall-ID: reg-1@10.77.0.10\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <{CONTACT}>;expires={expires}\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def call_to(request_uri: str, via_host: str, branch: str) -> bytes:
    return (
        f"INVITE {request_uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host}:5060;branch={branch}\r\n"
        f"Record-Route: <sip:198.51.100.10;lr>\r\n"
        f"Max-Forwards: 69\r\nTo: <sip:alice@provider.example>\r\n"
        f"From: <sip:carol@provider.example>;tag=c1\r\nCall-ID: {branch}@203.0.113.20\r\n"
        f"CSeq: 1 INVITE\r\nContact: <sip:carol@203.0.113.20:5060>\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def registered(alg: AlgServices, now: float = 0.0, cseq: int = 1) -> str:
    """Register alice through the ALG (the provider challenges once); the masked
    Contact the provider got."""
    core = alg.core
    (first,) = sent_to(core.receive(register(f"z9hG4bKr{cseq}", cseq), ALICE, now), PROVIDER)
    challenge = build_response(
        first, 401, to_tag="p1", extra_headers=(("WWW-Authenticate", CHALLENGE.encode()),)
    )
    (relayed,) = sent_to(core.receive(challenge, PROVIDER, now + 0.1), ALICE)
    assert relayed.status == 401
    assert relayed.header("www-authenticate") == CHALLENGE  # untouched
    retry = register(f"z9hG4bKr{cseq + 1}", cseq + 1, extra=f"Authorization: {CREDENTIALS}\r\n")
    (second,) = sent_to(core.receive(retry, ALICE, now + 0.2), PROVIDER)
    assert second.header("authorization") == CREDENTIALS  # not our realm: passed on
    masked = second.contact.contacts[0].uri
    # the provider lists the binding it stored: back inside, it is alice's own Contact
    stored = (("Contact", f"<{masked}>;expires=600".encode()),)
    ok = build_response(second, 200, to_tag="p1", extra_headers=stored)
    (answer,) = sent_to(core.receive(ok, PROVIDER, now + 0.3), ALICE)
    assert answer.status == 200 and CONTACT in (answer.header("contact") or "")
    return str(masked)


def test_register_leaves_masked_and_goes_to_the_upstream(alg: AlgServices) -> None:
    (sent,) = sent_to(alg.core.receive(register("z9hG4bKm1", 1), ALICE, 0.0), PROVIDER)
    assert str(sent.request_uri) == "sip:provider.example"
    assert b"10.77.0." not in sent.raw
    uri = sent.contact.contacts[0].uri
    assert isinstance(uri, SipUri) and (uri.host, uri.port) == ("203.0.113.1", 5060)
    assert sent.contact.contacts[0].param("expires") == "600"


def test_a_call_from_the_provider_to_the_masked_contact_reaches_the_phone(
    alg: AlgServices,
) -> None:
    masked = registered(alg)
    out = alg.core.receive(call_to(masked, "198.51.100.10", "z9hG4bKc1"), PROVIDER, 1.0)
    (to_alice,) = sent_to(out, ALICE)  # where she registered from
    assert to_alice.method == "INVITE"
    assert str(to_alice.request_uri) == CONTACT  # the contact she registered
    assert [m.status for m in sent_to(out, PROVIDER)] == [100]


def test_only_the_registrar_it_went_to_may_use_a_registration(alg: AlgServices) -> None:
    masked = registered(alg)
    # carol learnt the masked contact somehow: she may not call it directly
    out = alg.core.receive(call_to(masked, "203.0.113.20", "z9hG4bKc2"), BOB, 1.0)
    assert sent_to(out, ALICE) == []
    assert [m.status for m in sent_to(out, BOB)] == [100, 403]
    # nor may the provider reach an inside address nobody registered through us
    out = alg.core.receive(
        call_to("sip:bob@10.77.0.11:5060", "198.51.100.10", "z9hG4bKc3"), PROVIDER, 1.0
    )
    assert [m.status for m in sent_to(out, PROVIDER)] == [100, 403]


def test_unregistering_or_expiry_ends_the_route_in(alg: AlgServices) -> None:
    masked = registered(alg)
    # the registration lasts what alice asked for (600 s): then the route in is gone
    out = alg.core.receive(call_to(masked, "198.51.100.10", "z9hG4bKe1"), PROVIDER, 601.0)
    assert sent_to(out, ALICE) == []
    assert [m.status for m in sent_to(out, PROVIDER)][-1] == 403
    masked = registered(alg, now=700.0, cseq=3)
    out = alg.core.receive(call_to(masked, "198.51.100.10", "z9hG4bKe2"), PROVIDER, 700.5)
    assert [m.method for m in sent_to(out, ALICE)] == ["INVITE"]  # registered again
    alg.core.receive(register("z9hG4bKu1", 5, expires=0), ALICE, 701.0)
    out = alg.core.receive(call_to(masked, "198.51.100.10", "z9hG4bKe3"), PROVIDER, 702.0)
    assert sent_to(out, ALICE) == []
    assert [m.status for m in sent_to(out, PROVIDER)][-1] == 403


def _register_message(contact: str, *, expires: str = "", header: str = "") -> SipMessage:
    params = f";expires={expires}" if expires else ""
    return parse_message(
        (
            "REGISTER sip:provider.example SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bKx\r\n"
            "To: <sip:alice@provider.example>\r\nFrom: <sip:alice@provider.example>;tag=1\r\n"
            f"Call-ID: x\r\nCSeq: 1 REGISTER\r\nContact: {contact}{params}\r\n{header}"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


UPSTREAM = frozenset({"198.51.100.10"})


def test_relayed_contacts_compare_as_rfc3261_uris_and_expire() -> None:
    table = RelayedRegistrations()
    table.note(_register_message(f"<{CONTACT}>", expires="60"), ALICE, UPSTREAM, 0.0)
    assert len(table) == 1
    # §19.1.4: host case-insensitive, parameter order irrelevant
    same = parse_uri("sip:alice-1@10.77.0.10:5060;TRANSPORT=udp")
    found = table.lookup(same, "198.51.100.10", 59.0)
    assert found is not None and found.reach == ALICE and found.aor == "sip:alice@provider.example"
    assert table.lookup(parse_uri("sip:alice-1@10.77.0.10:5062"), "198.51.100.10", 1.0) is None
    assert table.lookup(same, "198.51.100.99", 1.0) is None  # not where it was relayed to
    assert table.lookup(same, "198.51.100.10", 60.0) is None  # expired ...
    assert len(table) == 0  # ... and gone


def test_expires_header_wildcard_and_bounds() -> None:
    table = RelayedRegistrations(capacity=2, max_expires=100)
    table.note(_register_message(f"<{CONTACT}>", header="Expires: 5000\r\n"), ALICE, UPSTREAM, 0.0)
    uri = parse_uri(CONTACT)
    assert table.lookup(uri, "198.51.100.10", 99.0) is not None  # capped at max_expires
    assert table.lookup(uri, "198.51.100.10", 100.0) is None
    table.note(_register_message(f"<{CONTACT}>"), ALICE, UPSTREAM, 200.0)  # default 3600 s
    assert table.lookup(uri, "198.51.100.10", 250.0) is not None
    table.note(_register_message("*", header="Expires: 0\r\n"), ALICE, UPSTREAM, 260.0)
    assert table.lookup(uri, "198.51.100.10", 261.0) is None
    for port in (5061, 5062, 5063):
        table.note(_register_message(f"<sip:a@10.77.0.10:{port}>"), ALICE, UPSTREAM, 300.0)
    assert len(table) == 2  # the oldest went
    assert table.lookup(parse_uri("sip:a@10.77.0.10:5061"), "198.51.100.10", 301.0) is None
    assert table.lookup(parse_uri("sip:a@10.77.0.10:5063"), "198.51.100.10", 301.0) is not None
