"""Offer/answer placements through the ALG (RFC 3264, RFC 3262, RFC 3311, RFC 6337)."""

from __future__ import annotations

from media_testing import ALICE, BOB, PUBLIC, Alg, incoming_invite, request, response, sdp

from alg.media.actions import Reject
from alg.sdp import parse_sdp
from alg.sip import find_sdp, parse_message
from fcp.types import BindingKind


def body_of(data: bytes | Reject) -> bytes:
    assert not isinstance(data, Reject), data
    msg = parse_message(data)
    location = find_sdp(msg)
    assert location is not None
    return location.extract(msg.body)


def invite_out(alg: Alg, body: bytes = sdp(), **kw: object) -> bytes:
    data = alg.forward_request(request("INVITE", body=body, **kw), ALICE, BOB)  # type: ignore[arg-type]
    assert not isinstance(data, Reject), data
    return data


def test_invite_2xx_reserves_rewrites_and_restricts(alg: Alg) -> None:
    sent = invite_out(alg)
    offer = parse_sdp(body_of(sent))
    stream = offer.stream(0)
    assert stream.connection is not None and stream.connection.address == str(PUBLIC)
    assert stream.rtp_port % 2 == 0 and offer.origin.address == str(PUBLIC)
    [binding] = alg.bindings()
    assert binding.kind is BindingKind.RTP_PAIR  # type: ignore[attr-defined]
    assert str(binding.internal) == "10.77.0.10:40000"  # type: ignore[attr-defined]
    assert alg.rules() == []  # nothing open before the answer
    ok = response(sent, 200, body=sdp("203.0.113.20", 50000))
    back = alg.forward_response(ok, BOB, ALICE)
    assert not isinstance(back, Reject)
    [rule] = alg.rules()
    assert str(rule.remote_address) == "203.0.113.20"  # type: ignore[attr-defined]
    # BYE from the inside releases the group
    bye = request("BYE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2)
    alg.forward_request(bye, ALICE, BOB)
    assert alg.bindings() == [] and alg.rules() == []
    [record] = alg.core.take_records()
    assert record.call_id == "c1@10.77.0.10" and len(record.media["bindings"]) == 1


def test_answer_restores_inside_vias_and_call_id(alg: Alg) -> None:
    sent = invite_out(alg)
    assert b"Via: SIP/2.0/UDP 10.77" not in sent
    ok = response(sent, 200, body=sdp("203.0.113.20", 50000))
    restored = alg.core.inbound(ok, alg.now)
    msg = parse_message(restored)
    assert msg.call_id == "c1@10.77.0.10"
    assert [v.host for v in msg.vias] == ["203.0.113.1", "10.77.0.10"]


def test_100rel_answer_in_reliable_183_then_prack(alg: Alg) -> None:
    sent = invite_out(alg, extra="Supported: 100rel\r\n")
    ringing = response(
        sent, 183, body=sdp("203.0.113.20", 50000), extra="Require: 100rel\r\nRSeq: 1\r\n"
    )
    alg.forward_response(ringing, BOB, ALICE)
    assert len(alg.rules()) == 1  # early media flows before the 2xx
    prack = request(
        "PRACK", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2, extra="RAck: 1 1 INVITE\r\n"
    )
    assert not isinstance(alg.forward_request(prack, ALICE, BOB), Reject)
    ok = response(sent, 200, body=sdp("203.0.113.20", 50000))
    alg.forward_response(ok, BOB, ALICE)
    assert len(alg.rules()) == 1 and len(alg.bindings()) == 1


def test_offer_in_reliable_1xx_answer_in_prack(alg: Alg) -> None:
    sent = invite_out(alg, body=b"")
    assert alg.bindings() == []
    early = response(sent, 183, body=sdp("203.0.113.20", 50000), extra="RSeq: 1\r\n")
    alg.forward_response(early, BOB, ALICE)
    prack = request("PRACK", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2, body=sdp(port=40002))
    out = alg.forward_request(prack, ALICE, BOB)
    answer = parse_sdp(body_of(out))
    assert answer.stream(0).connection.address == str(PUBLIC)  # type: ignore[union-attr]
    assert len(alg.bindings()) == 1 and len(alg.rules()) == 1


def test_late_offer_in_2xx_answer_in_ack(alg: Alg) -> None:
    sent = invite_out(alg, body=b"")
    ok = response(sent, 200, body=sdp("203.0.113.20", 50000))
    alg.forward_response(ok, BOB, ALICE)
    assert alg.bindings() == []
    ack = request("ACK", to="<sip:bob@203.0.113.20>;tag=b1", cseq=1, body=sdp())
    out = alg.forward_request(ack, ALICE, BOB)
    assert parse_sdp(body_of(out)).origin.address == str(PUBLIC)
    assert len(alg.bindings()) == 1 and len(alg.rules()) == 1


def test_update_offer_answered_in_2xx(alg: Alg) -> None:
    sent = invite_out(alg)
    alg.forward_response(response(sent, 200, body=sdp("203.0.113.20", 50000)), BOB, ALICE)
    update = request(
        "UPDATE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2, body=sdp(port=40010, version=2)
    )
    up = alg.forward_request(update, ALICE, BOB)
    assert len(alg.bindings()) == 2  # the new port is reserved, the old one still used
    alg.forward_response(response(up, 200, body=sdp("203.0.113.20", 50010)), BOB, ALICE)  # type: ignore[arg-type]
    [binding] = alg.bindings()
    assert binding.internal.port == 40010  # type: ignore[attr-defined]
    [rule] = alg.rules()
    assert rule.binding_id == binding.binding_id  # type: ignore[attr-defined]


def test_incoming_call_answer_from_inside_is_parked_and_anchored(alg: Alg) -> None:
    down = alg.forward_request(incoming_invite(), BOB, ALICE)
    assert not isinstance(down, Reject)
    ok = response(down, 200, to_tag="a9", body=sdp(), contact="<sip:alice@10.77.0.10:5060>")
    up = alg.forward_response(ok, ALICE, BOB)
    answer = parse_sdp(body_of(up))
    assert answer.stream(0).connection.address == str(PUBLIC)  # type: ignore[union-attr]
    assert len(alg.rules()) == 1
    assert b"Contact: <sip:sw-" in up  # type: ignore[operator]


def test_486_releases_everything(alg: Alg) -> None:
    sent = invite_out(alg)
    alg.forward_response(response(sent, 486), BOB, ALICE)
    assert alg.bindings() == [] and alg.core.call_count == 0


def test_cancel_releases(alg: Alg) -> None:
    sent = invite_out(alg)
    alg.forward_response(response(sent, 180), BOB, ALICE)
    cancel = request("CANCEL", cseq=1)
    alg.forward_request(cancel, ALICE, BOB)
    assert alg.bindings() == [] and alg.core.call_count == 0


def test_port_zero_gets_nothing(alg: Alg) -> None:
    body = sdp(streams="m=video 0 RTP/AVP 31\r\n")
    sent = invite_out(alg, body=body)
    assert len(alg.bindings()) == 1
    assert b"m=video 0 " in body_of(sent)


def test_rtcp_mux_fallback_freed_when_answer_accepts(alg: Alg) -> None:
    sent = invite_out(alg, body=sdp(media_extra="a=rtcp-mux\r\n"))
    kinds = sorted(b.kind.value for b in alg.bindings())  # type: ignore[attr-defined]
    assert kinds == ["single", "single"]  # RTP + the RTCP fallback (RFC 5761 §5.1.3)
    assert b"a=rtcp:" in body_of(sent)
    alg.forward_response(
        response(sent, 200, body=sdp("203.0.113.20", 50000, media_extra="a=rtcp-mux\r\n")),
        BOB,
        ALICE,
    )
    [binding] = alg.bindings()
    assert binding.internal.port == 40000  # type: ignore[attr-defined]


def test_rtcp_mux_refused_keeps_fallback(alg: Alg) -> None:
    sent = invite_out(alg, body=sdp(media_extra="a=rtcp-mux\r\n"))
    alg.forward_response(response(sent, 200, body=sdp("203.0.113.20", 50000)), BOB, ALICE)
    assert len(alg.bindings()) == 2 and len(alg.rules()) == 2


def test_port_block_is_one_block_binding(alg: Alg) -> None:
    body = (
        b"v=0\r\no=u 1 1 IN IP4 10.77.0.10\r\ns=-\r\nc=IN IP4 10.77.0.10\r\nt=0 0\r\n"
        b"m=video 40000/2 RTP/AVP 31\r\n"
    )
    sent = invite_out(alg, body=body)
    [binding] = alg.bindings()
    assert binding.kind is BindingKind.BLOCK and len(binding.external_ports) == 4  # type: ignore[attr-defined]
    assert b"/2 RTP/AVP" in body_of(sent)


def test_in_dialog_request_from_outside_restores_masked_contact(alg: Alg) -> None:
    sent = invite_out(alg)
    contact = parse_message(sent).contact.contacts[0].uri
    assert str(contact).startswith("sip:sw-") and "203.0.113.1" in str(contact)
    alg.forward_response(response(sent, 200, body=sdp("203.0.113.20", 50000)), BOB, ALICE)
    bye = request(
        "BYE",
        uri=str(contact),
        via="SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKb2",
        from_="<sip:bob@203.0.113.20>;tag=b1",
        to=parse_message(sent).header("from") or "",
        call_id=parse_message(sent).call_id,
        cseq=5,
    )
    restored = parse_message(alg.core.inbound(bye, alg.now))
    assert restored.start_line.uri_text == "sip:alice@10.77.0.10:5060"  # type: ignore[union-attr]
    assert restored.call_id == "c1@10.77.0.10"
    assert restored.from_.tag == "b1"
    alg.forward_request(bye, BOB, ALICE)
    assert alg.core.call_count == 0 and alg.bindings() == []


def test_forged_token_is_not_restored(alg: Alg) -> None:
    bye = request("BYE", uri="sip:sw-aaaaaaaaaaaaaaaa@203.0.113.1:5060", call_id="x")
    assert alg.core.inbound(bye, alg.now) == bye


def test_anchored_calls_leave_no_reference_cycles(alg: Alg) -> None:
    # The ALG's collector frees a cycle that lived through a freeze only in its deferred
    # full pass (sipwall.heap): what an anchored call creates must go by refcount.
    import gc

    def one_call(number: int) -> None:
        call_id = f"gc{number}@10.77.0.10"
        sent = invite_out(alg, call_id=call_id)
        ok = response(sent, 200, body=sdp("203.0.113.20", 50000))
        assert not isinstance(alg.forward_response(ok, BOB, ALICE), Reject)
        bye = request("BYE", to="<sip:bob@203.0.113.20>;tag=b1", cseq=2, call_id=call_id)
        alg.forward_request(bye, ALICE, BOB)
        alg.core.take_records()

    one_call(0)  # first-use caches and the harness's own objects
    while gc.collect():
        pass
    gc.disable()
    try:
        for number in range(1, 6):
            one_call(number)
        assert alg.bindings() == [] and alg.rules() == []
        assert gc.collect() == 0
    finally:
        gc.enable()
