from __future__ import annotations

from alg.sip import parse_message
from alg.transaction_keys import ClientKey, LegacyServerKey, ServerKey, client_key, server_key

INVITE = (
    b"INVITE sip:bob@example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"To: <sip:bob@example.net>\r\n"
    b"From: <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@10.77.0.10\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def derived(method: str, to_tag: bytes = b"") -> bytes:
    data = INVITE.replace(b"INVITE sip:", method.encode() + b" sip:")
    data = data.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 " + method.encode())
    return data.replace(b"<sip:bob@example.net>", b"<sip:bob@example.net>" + to_tag)


def test_rfc3261_keys_match_retransmission_ack_and_cancel() -> None:
    invite = parse_message(INVITE)
    key = server_key(invite)
    assert key == ServerKey("z9hG4bK776asdhds", "10.77.0.10:5060", "INVITE")
    assert server_key(parse_message(INVITE)) == key  # retransmission
    ack = parse_message(derived("ACK", b";tag=xyz"))
    assert server_key(ack) == key  # ACK for a non-2xx joins the INVITE transaction
    cancel = parse_message(derived("CANCEL"))
    assert server_key(cancel) != key  # CANCEL is a transaction of its own ...
    assert server_key(cancel, for_method="INVITE") == key  # ... that finds its INVITE


def test_different_sent_by_is_a_different_transaction() -> None:
    other = INVITE.replace(b"10.77.0.10:5060;branch", b"10.77.0.11:5060;branch")
    assert server_key(parse_message(other)) != server_key(parse_message(INVITE))


def test_legacy_keys_without_magic_cookie() -> None:
    old = INVITE.replace(b"branch=z9hG4bK776asdhds", b"branch=776asdhds")
    key = server_key(parse_message(old))
    assert isinstance(key, LegacyServerKey)
    ack = old.replace(b"INVITE sip:", b"ACK sip:").replace(b"314159 INVITE", b"314159 ACK")
    ack = ack.replace(b"<sip:bob@example.net>", b"<sip:bob@example.net>;tag=abc")
    assert server_key(parse_message(ack)) == key
    other_call = old.replace(b"a84b4c76e66710", b"ffffffff")
    assert server_key(parse_message(other_call)) != key


def test_client_key_uses_branch_and_cseq_method() -> None:
    response = parse_message(
        b"SIP/2.0 486 Busy Here\r\n"
        b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK776asdhds;received=10.77.0.10\r\n"
        b"To: <sip:bob@example.net>;tag=a6c85cf\r\n"
        b"From: <sip:alice@example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@10.77.0.10\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert client_key(response) == ClientKey("z9hG4bK776asdhds", "INVITE")
    assert client_key(response) == client_key(parse_message(INVITE))
