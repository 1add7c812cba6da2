"""Topology hiding with sealed tokens (alg.media.rewrite.hide_outbound / restore_inbound).

What the outside sees of an inside dialog (Contact, Record-Route, From/To host, Call-ID)
comes back restored with nothing but the key: after 100,000 other tokens, and in an ALG
restarted with the same secret. Host tokens are DNS names (RFC 1035 §2.3.4 labels under
RFC 2606's `.invalid`), IPv6 hosts included. What is not ours stays as it is."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alg.media.masking import MAX_TEXT_BYTES, InsideNetworks, TokenTable, ViaStash
from alg.media.rewrite import Hiding, TopologyLeak, hide_outbound, restore_inbound
from alg.sip import MessageEditor, SipMessage, parse_message

SECRET = b"k" * 32
NOW = 1_700_000_000.0
HIDING = Hiding("203.0.113.1", 5060, InsideNetworks.of("10.77.0.0/16", "fd00:77::/64"))
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def invite(
    *,
    host: str = "10.77.0.10",
    call_id: str = "c1@10.77.0.10",
    contact: str | None = None,
) -> bytes:
    contact = contact or f"<sip:alice@{host}:5060>"
    return (
        "INVITE sip:bob@203.0.113.20 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKout1\r\n"
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bKa1;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@{host}:5060>;tag=a1\r\n"
        "To: <sip:bob@203.0.113.20>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: {contact}\r\n"
        "Record-Route: <sip:10.77.0.1;lr>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def hide(data: bytes, tokens: TokenTable, stash: ViaStash | None = None) -> SipMessage:
    edit = MessageEditor(parse_message(data))
    hide_outbound(edit, tokens, stash or ViaStash(), HIDING, NOW)
    out = edit.apply()
    assert HIDING.inside.find_in(out) is None, out
    return parse_message(out)


def bye_from_outside(sent: SipMessage) -> bytes:
    """The callee's BYE, built from what it received (RFC 3261 §12.2.1.1)."""
    contact = sent.contact.contacts[0].uri
    return (
        f"BYE {contact} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKb2\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {sent.header('record-route')}\r\n"
        "From: <sip:bob@203.0.113.20>;tag=b1\r\n"
        f"To: {sent.header('from')}\r\n"
        f"Call-ID: {sent.call_id}\r\n"
        "CSeq: 2 BYE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def assert_restored(data: bytes, host: str = "10.77.0.10", call_id: str = "c1@10.77.0.10") -> None:
    msg = parse_message(data)
    assert msg.start_line.uri_text == f"sip:alice@{host}:5060"  # type: ignore[union-attr]
    assert msg.call_id == call_id
    assert msg.header("to") == f"<sip:alice@{host}:5060>;tag=a1"
    assert msg.header("route") == "<sip:10.77.0.1;lr>"


def test_a_dialog_restores_through_the_same_table() -> None:
    tokens = TokenTable(SECRET)
    bye = bye_from_outside(hide(invite(), tokens))
    assert_restored(restore_inbound(bye, tokens, ViaStash(), NOW))


def test_restoring_leaves_no_reference_cycles() -> None:
    # A cycle per message would be freed only by a collection, and one that lived
    # through a freeze only by the full pass the ALG defers under load (sipwall.heap).
    import gc

    tokens = TokenTable(SECRET)
    bye = bye_from_outside(hide(invite(), tokens))
    while gc.collect():
        pass
    gc.disable()
    try:
        for _ in range(10):
            assert_restored(restore_inbound(bye, tokens, ViaStash(), NOW))
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_an_ipv6_dialog_restores_and_its_host_token_is_a_dns_name() -> None:
    tokens = TokenTable(SECRET)
    host = "[fd00:77::ffff:ffff:ffff:ffff]"  # the longest inside literal: 2 labels
    sent = hide(invite(host=host, call_id=f"c6@{host}"), tokens)
    name = sent.from_.uri.host  # type: ignore[union-attr]
    labels = name.split(".")
    assert labels[-1] == "invalid" and len(labels) >= 3, name  # the token needs 2 labels
    assert all(LABEL.fullmatch(label) for label in labels), name
    bye = bye_from_outside(sent)
    assert_restored(restore_inbound(bye, tokens, ViaStash(), NOW), host, f"c6@{host}")


@settings(max_examples=200, deadline=None)
@given(
    address=st.one_of(
        st.integers(0, 2**64 - 1).map(lambda n: ipaddress.IPv6Address((0xFD00_0077 << 96) | n)),
        st.integers(0, 2**16 - 1).map(lambda n: ipaddress.IPv4Address((10 << 24) | (77 << 16) | n)),
    ),
    port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_host_tokens_are_valid_dns_names_for_any_inside_host(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None
) -> None:
    tokens = TokenTable(SECRET)
    host = f"[{address}]" if address.version == 6 else str(address)
    hostport = host if port is None else f"{host}:{port}"
    data = invite().replace(
        b"From: <sip:alice@10.77.0.10:5060>", f"From: <sip:alice@{hostport}>".encode()
    )
    sent = hide(data, tokens)
    name = sent.from_.uri.host  # type: ignore[union-attr]
    assert len(name) <= 253 and name.endswith(".invalid")
    assert all(LABEL.fullmatch(label) for label in name.split(".")), name
    response = (
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKout1\r\n"
        f"From: {sent.header('from')}\r\nTo: <sip:bob@203.0.113.20>;tag=b1\r\n"
        f"Call-ID: {sent.call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    back = parse_message(restore_inbound(response, tokens, ViaStash(), NOW))
    assert back.header("from") == f"<sip:alice@{hostport}>;tag=a1"


def test_a_restarted_alg_with_the_same_secret_restores_the_dialog() -> None:
    bye = bye_from_outside(hide(invite(), TokenTable(SECRET)))
    assert_restored(restore_inbound(bye, TokenTable(SECRET), ViaStash(), NOW + 86_400.0))
    # another secret (no secret_file: a fresh random one) opens none of them
    assert restore_inbound(bye, TokenTable(b"z" * 32), ViaStash(), NOW) == bye


def test_a_dialog_survives_more_than_100000_other_tokens() -> None:
    """Fails on the LRU this replaced: the early dialog's Contact and Call-ID were evicted
    and the BYE stayed masked."""
    tokens = TokenTable(SECRET)
    bye = bye_from_outside(hide(invite(), tokens))
    for n in range(100_001):
        tokens.token(f"cid\x00x{n}@10.77.1.1", NOW + n * 0.01)
    assert_restored(restore_inbound(bye, tokens, ViaStash(), NOW + 3 * 3600.0))


def _swap_char(token: str) -> str:
    index = len(token) // 2
    return token[:index] + ("a" if token[index] != "a" else "b") + token[index + 1 :]


def test_tampered_foreign_and_misplaced_tokens_stay_as_they_are() -> None:
    tokens = TokenTable(SECRET)
    sent = hide(invite(), tokens)
    bye = bye_from_outside(sent).decode()
    uri_token = str(sent.contact.contacts[0].uri)[4:].split("@")[0]
    cid_token = sent.call_id
    host_name = sent.from_.uri.host  # type: ignore[union-attr]
    host_token = host_name.removesuffix(".invalid").replace(".", "")
    foreign = TokenTable(b"z" * 32).token("sip:alice@10.77.0.10:5060", NOW, "uri")
    forged = [  # (what replaces what, in the BYE)
        (uri_token, _swap_char(uri_token)),  # one character changed
        (uri_token, uri_token[:-2]),  # cut
        (uri_token, uri_token + "aaaa"),  # extended
        (uri_token, foreign),  # sealed under another key
        (cid_token, cid_token[:40]),
        (cid_token, "sw-" + "a" * 60),  # made up
        (cid_token, uri_token),  # a URI token as the Call-ID
        (f"BYE sip:{uri_token}@", f"BYE sip:{cid_token}@"),  # a Call-ID token as the URI
        (host_name, f"{uri_token}.invalid"),  # a URI token as the host
        (host_name, f"{host_token[:10]}.{host_token[10:]}.invalid"),  # not cut as we cut
        (host_name, f"sw-{'a' * 60}.{'b' * 63}.invalid"),
    ]
    for old, new in forged:
        data = bye.replace(old, new, 1).encode()
        assert data != bye.encode()
        restored = restore_inbound(data, tokens, ViaStash(), NOW)
        assert new.encode() in restored, (old, new)
        # and the genuine tokens beside it were still restored
        assert b"Route: <sip:10.77.0.1;lr>" in restored


def test_nothing_in_a_message_full_of_fake_tokens_is_restored_or_raises() -> None:
    tokens = TokenTable(SECRET)
    fakes = " ".join(f"sw-{'a' * (26 + n % 40)}" for n in range(200))
    data = (
        "OPTIONS sip:sw-aaaaaaaaaaaaaaaaaaaaaaaaaa@203.0.113.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKo1\r\n"
        f"From: <sip:x@sw-{'b' * 60}.{'c' * 63}.invalid>;tag=1\r\nTo: <sip:y@203.0.113.1>\r\n"
        f"Call-ID: sw-{'q' * 900}\r\nCSeq: 1 OPTIONS\r\nSubject: {fakes}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    assert restore_inbound(data, tokens, ViaStash(), NOW) == data


class CountingTokens(TokenTable):
    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        self.tries = 0

    def restore(self, token: str, now: float, kind: str = "") -> str | None:
        self.tries += 1
        return super().restore(token, now, kind)


@pytest.mark.interpreted_only  # subclasses the compiled TokenTable to count tries
def test_an_inbound_message_gets_a_bounded_number_of_token_tries() -> None:
    """A real message carries a handful of tokens; a hostile one packed with candidates
    may not make us decrypt thousands (each try is a base32 decoding and an AES-SIV
    decryption)."""
    tokens = CountingTokens(SECRET)
    sent = hide(invite(), tokens)
    bye = bye_from_outside(sent)
    assert_restored(restore_inbound(bye, tokens, ViaStash(), NOW))
    assert 0 < tokens.tries <= 8
    tokens.tries = 0
    fakes = " ".join(
        f"sw-{'a' * 30}{n:0>4}".translate(str.maketrans("0189", "abcd")) for n in range(1000)
    )
    hostile = bye.replace(b"CSeq:", f"Subject: {fakes}\r\nCSeq:".encode())
    restore_inbound(hostile, tokens, ViaStash(), NOW)
    assert tokens.tries <= 64


def test_an_inside_text_too_long_to_seal_refuses_the_message_rather_than_leak() -> None:
    tokens = TokenTable(SECRET)
    contact = f"<sip:alice@10.77.0.10:5060;x={'a' * MAX_TEXT_BYTES}>"
    with pytest.raises(TopologyLeak):
        hide(invite(contact=contact), tokens)
    call_id = "c" * MAX_TEXT_BYTES + "@10.77.0.10"
    with pytest.raises(TopologyLeak):
        hide(invite(call_id=call_id), tokens)


TLS_HIDING = Hiding("203.0.113.1", 5060, InsideNetworks.of("10.77.0.0/16"), outside_tls_port=5061)


@pytest.mark.parametrize(
    ("our_via", "contact_end"),
    [
        ("SIP/2.0/TLS 203.0.113.1:5061", "@203.0.113.1:5061;transport=tls>"),
        ("SIP/2.0/TCP 203.0.113.1:5060", "@203.0.113.1:5060;transport=tcp>"),
        ("SIP/2.0/UDP 203.0.113.1:5060", "@203.0.113.1:5060>"),
    ],
)
def test_a_masked_contact_names_the_transport_and_port_of_its_hop(
    our_via: str, contact_end: str
) -> None:
    tokens = TokenTable(SECRET)
    data = invite().replace(b"SIP/2.0/UDP 203.0.113.1:5060", our_via.encode())
    edit = MessageEditor(parse_message(data))
    hide_outbound(edit, tokens, ViaStash(), TLS_HIDING, NOW)
    sent = parse_message(edit.apply())
    contact = sent.header("contact") or ""
    assert contact.startswith("<sip:sw-") and contact.endswith(contact_end), contact
    # Record-Route entries are masked as before: they are not a next hop for anyone
    assert (sent.header("record-route") or "").endswith("@203.0.113.1:5060;lr>")
    # the callee's in-dialog request to that Contact reaches alice's own URI, without
    # our transport parameter (her phone has its own transport)
    assert_restored(restore_inbound(bye_from_outside(sent), tokens, ViaStash(), NOW))


def test_a_response_going_out_names_the_transport_of_the_callers_hop() -> None:
    tokens = TokenTable(SECRET)
    ok = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 10.77.0.1:5060;branch=z9hG4bKin1\r\n"
        b"Via: SIP/2.0/TLS 198.51.100.7:5061;branch=z9hG4bKk1;received=198.51.100.7\r\n"
        b"From: <sip:carol@198.51.100.7>;tag=c1\r\n"
        b"To: <sip:alice@203.0.113.1>;tag=a1\r\n"
        b"Call-ID: in1@198.51.100.7\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:alice@10.77.0.10:5060>\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    edit = MessageEditor(parse_message(ok))
    hide_outbound(edit, tokens, ViaStash(), TLS_HIDING, NOW)
    contact = parse_message(edit.apply()).header("contact") or ""
    assert contact.endswith("@203.0.113.1:5061;transport=tls>"), contact


def test_a_sips_contact_stays_sips_at_our_tls_port_and_restores_exactly() -> None:
    tokens = TokenTable(SECRET)
    data = invite(contact="<sips:alice@10.77.0.10:5061>").replace(
        b"SIP/2.0/UDP 203.0.113.1:5060", b"SIP/2.0/TLS 203.0.113.1:5061"
    )
    edit = MessageEditor(parse_message(data))
    hide_outbound(edit, tokens, ViaStash(), TLS_HIDING, NOW)
    sent = parse_message(edit.apply())
    contact = sent.header("contact") or ""
    assert re.fullmatch(r"<sips:sw-[a-z2-7]+@203\.0\.113\.1:5061>", contact), contact
    uri = contact.strip("<>")
    request = (
        f"BYE {uri} SIP/2.0\r\nVia: SIP/2.0/TLS 203.0.113.20:5061;branch=z9hG4bKb3\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:bob@203.0.113.20>;tag=b1\r\n"
        f"To: <sip:alice@203.0.113.1>;tag=a1\r\nCall-ID: {sent.call_id}\r\n"
        "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    restored = parse_message(restore_inbound(request, tokens, ViaStash(), NOW))
    assert restored.start_line.uri_text == "sips:alice@10.77.0.10:5061"  # type: ignore[union-attr]
