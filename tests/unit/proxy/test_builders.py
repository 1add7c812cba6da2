from __future__ import annotations

from alg.builders import build_ack, build_cancel, build_response
from alg.sip import check_request, check_response, parse_message
from alg.transaction_keys import client_key, server_key

INVITE = (
    b"INVITE sip:bob@203.0.113.20 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKproxy1;rport\r\n"
    b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK776asdhds;received=10.77.0.10\r\n"
    b"Route: <sip:198.51.100.1;lr>\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: Bob <sip:bob@example.net>\r\n"
    b"From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@10.77.0.10\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_response_copies_the_matching_fields_and_adds_a_to_tag() -> None:
    request = parse_message(INVITE)
    response = parse_message(build_response(request, 486, to_tag="abc"))
    check_response(response)
    assert response.status == 486
    assert response.start_line.reason == "Busy Here"  # type: ignore[union-attr]
    assert [v.branch for v in response.vias] == ["z9hG4bKproxy1", "z9hG4bK776asdhds"]
    assert response.to.tag == "abc"
    assert response.from_.tag == "1928301774"
    assert response.call_id == request.call_id and response.cseq == request.cseq
    assert client_key(response) == client_key(request)


def test_100_has_no_to_tag_and_copies_timestamp() -> None:
    trying = parse_message(build_response(parse_message(INVITE), 100))
    assert trying.to.tag is None
    assert trying.header("timestamp") == "54"


def test_existing_to_tag_is_kept() -> None:
    in_dialog = INVITE.replace(
        b"To: Bob <sip:bob@example.net>", b"To: Bob <sip:bob@example.net>;tag=x1"
    )
    response = parse_message(build_response(parse_message(in_dialog), 200))
    assert response.to.tag == "x1"


def test_ack_for_failure_joins_the_invite_transaction() -> None:
    invite = parse_message(INVITE)
    failure = parse_message(build_response(invite, 486, to_tag="t9"))
    ack = parse_message(build_ack(invite, failure))
    check_request(ack)
    assert ack.method == "ACK" and ack.cseq.number == 314159
    assert len(ack.vias) == 1 and ack.top_via.branch == "z9hG4bKproxy1"
    assert ack.to.tag == "t9"
    assert [str(r.uri) for r in ack.routes] == ["sip:198.51.100.1;lr"]
    assert server_key(ack) == server_key(invite)


def test_cancel_matches_its_invite() -> None:
    invite = parse_message(INVITE)
    cancel = parse_message(build_cancel(invite))
    check_request(cancel)
    assert cancel.method == "CANCEL" and cancel.cseq.method == "CANCEL"
    assert cancel.top_via.branch == "z9hG4bKproxy1" and len(cancel.vias) == 1
    assert server_key(cancel, for_method="INVITE") == server_key(invite)
    assert cancel.to.tag is None
