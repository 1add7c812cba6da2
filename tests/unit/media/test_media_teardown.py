"""A 2xx the ALG cannot anchor, or a confirmed call without pinholes: the ALG ends the
dialogs itself (ACK + BYE, RFC 3261 §13.3.1.4, §16.7; alg.media.teardown)."""

from __future__ import annotations

from media_testing import ALICE, BOB, Alg, request, response, sdp

from alg.media.actions import OwnRequest, Refused, Reject
from alg.media.agents import AgentSettings
from alg.media.teardown import EndedByAlg
from alg.sip import parse_message

FAST = AgentSettings(attempts=1, deadline=1.0, threshold=5)
OUR_INSIDE_RR = "<sip:10.77.0.1:5060;transport=udp;lr;r2=on>"
OUR_OUTSIDE_RR = "<sip:203.0.113.1:5060;transport=udp;lr;r2=on>"


def incoming_invite(alg: Alg, call_id: str = "in-1@203.0.113.20") -> bytes:
    invite = request(
        "INVITE",
        uri="sip:alice@10.77.0.10",
        via="SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKb1",
        from_="<sip:bob@203.0.113.20>;tag=b1",
        to="<sip:alice@example.com>",
        call_id=call_id,
        contact="<sip:bob@203.0.113.20>",
        body=sdp("203.0.113.20", 50000),
    )
    down = alg.forward_request(invite, BOB, ALICE)
    assert not isinstance(down, Reject), down
    return down


def inside_ok(down: bytes, body: bytes, *, record_route: str | None = None) -> bytes:
    """alice's 2xx; `record_route` as a UAS copies it (§12.1.1), maybe with an inside
    proxy of its own in front of ours."""
    rr = record_route or parse_message(down).header("record-route") or ""
    return response(
        down,
        200,
        to_tag="a9",
        body=body,
        contact="<sip:alice@10.77.0.10:5060>",
        extra=f"Record-Route: {rr}\r\n",
    )


def by_method(requests: list[OwnRequest]) -> dict[str, tuple[OwnRequest, object]]:
    return {r.method: (r, parse_message(r.data)) for r in requests}


def test_inside_2xx_refused_after_agent_failure_is_acked_and_byed() -> None:
    alg = Alg(settings=FAST)
    down = incoming_invite(alg)
    assert alg.core.call_count == 1
    # a proxy of alice's own records its route between us and her
    rr = f"<sip:10.77.0.5;lr>, {OUR_INSIDE_RR}, {OUR_OUTSIDE_RR}"
    ok = inside_ok(down, sdp(), record_route=rr)
    alg.down.add("gw1")  # the agent dies after the 2xx arrived: no binding
    assert alg.forward_response(ok, ALICE, BOB) == Reject(0, "still parked")
    alg.advance(1.5)
    [refused] = [r for r in alg.resolutions if isinstance(r, Refused)]
    assert refused.status == 503
    sent = by_method(alg.core.take_requests())
    assert set(sent) == {"ACK", "BYE"}
    for own, msg in sent.values():
        assert own.side == "inside" and own.next_hop == "sip:10.77.0.5;lr"
        assert msg.request_uri.text == "sip:alice@10.77.0.10:5060"  # type: ignore[attr-defined]
        assert msg.header("route") == "<sip:10.77.0.5;lr>"  # type: ignore[attr-defined]
        assert msg.from_.tag == "b1" and msg.to.tag == "a9"  # type: ignore[attr-defined]
        assert msg.call_id == "in-1@203.0.113.20"  # type: ignore[attr-defined]
        assert msg.top_via.host == "10.77.0.1" and msg.top_via.port == 5060  # type: ignore[attr-defined]
    assert sent["ACK"][1].cseq.number == 1  # type: ignore[attr-defined]
    bye = sent["BYE"][1]
    assert bye.cseq.number == 2 and bye.cseq.method == "BYE"  # type: ignore[attr-defined]
    assert "cause=503" in (bye.header("reason") or "")  # type: ignore[attr-defined]
    assert alg.core.call_count == 0
    assert alg.outside_wire == []  # nothing of alice's 2xx went out
    # a late retransmission of the same 2xx starts nothing and is not forwarded
    alg.down.clear()
    late = alg.forward_response(ok, ALICE, BOB)
    assert isinstance(late, Reject) and alg.core.call_count == 0
    assert alg.core.take_requests() == []
    alg.close()


def test_forged_inside_2xx_is_refused_acked_and_byed(alg: Alg) -> None:
    down = incoming_invite(alg)
    ok = inside_ok(down, sdp("10.77.0.99"))  # alice names another inside host
    out = alg.forward_response(ok, ALICE, BOB)
    assert isinstance(out, Reject) and out.status == 488
    sent = by_method(alg.core.take_requests())
    assert set(sent) == {"ACK", "BYE"}
    ack, ack_msg = sent["ACK"]
    # no Route below ours: straight to alice's Contact
    assert ack.next_hop == "sip:alice@10.77.0.10:5060"
    assert ack_msg.header("route") is None  # type: ignore[attr-defined]
    assert alg.core.call_count == 0 and alg.bindings() == []


def test_forwarded_2xx_needs_no_teardown(alg: Alg) -> None:
    down = incoming_invite(alg)
    up = alg.forward_response(inside_ok(down, sdp()), ALICE, BOB)
    assert not isinstance(up, Reject)
    assert alg.core.take_requests() == []
    assert alg.core.call_count == 1


def test_refused_reinvite_2xx_byes_both_parties() -> None:
    alg = Alg(settings=FAST)
    down = incoming_invite(alg)
    assert not isinstance(alg.forward_response(inside_ok(down, sdp()), ALICE, BOB), Reject)
    reinvite = request(
        "INVITE",
        uri="sip:alice@10.77.0.10:5060",
        via="SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKb2",
        from_="<sip:bob@203.0.113.20>;tag=b1",
        to="<sip:alice@example.com>;tag=a9",
        call_id="in-1@203.0.113.20",
        cseq=2,
        contact="<sip:bob@203.0.113.20>",
        body=sdp("203.0.113.20", 50002, version=2),
    )
    down2 = alg.forward_request(reinvite, BOB, ALICE)
    assert not isinstance(down2, Reject)
    alg.down.add("gw1")
    ok2 = response(
        down2, 200, to_tag=None, body=sdp(port=40100, version=2), contact="<sip:alice@10.77.0.10>"
    )
    alg.forward_response(ok2, ALICE, BOB)  # a new port: a new binding, which never comes
    alg.advance(1.5)
    assert any(isinstance(r, Refused) for r in alg.resolutions)
    requests = alg.core.take_requests()
    inside = [r for r in requests if r.side == "inside"]
    outside = [r for r in requests if r.side == "outside"]
    assert [r.method for r in inside] == ["ACK", "BYE"]
    [bye_out] = outside
    assert bye_out.method == "BYE" and bye_out.next_hop == "sip:bob@203.0.113.20"
    msg = parse_message(bye_out.data)
    # to bob, the ALG stands in for alice: From is alice's side (her tag), To is bob's
    assert msg.from_.tag == "a9" and msg.to.tag == "b1"
    assert msg.top_via.host == "203.0.113.1"
    assert b"10.77." not in bye_out.data  # masked like everything that goes out
    bye_in = parse_message(inside[1].data)
    assert bye_in.cseq.number == 3  # after bob's re-INVITE (CSeq 2)
    assert alg.core.call_count == 0
    # the answered call ended here, by the ALG: its CDR is told when and why
    assert alg.core.take_endings() == [
        EndedByAlg("in-1@203.0.113.20", alg.now, 503, "Service Unavailable (media)")
    ]
    alg.close()


def test_confirmed_call_without_pinholes_is_ended_both_ways() -> None:
    alg = Alg(settings=FAST)
    sent = alg.forward_request(request("INVITE", body=sdp()), ALICE, BOB)
    assert not isinstance(sent, Reject)
    alg.down.add("gw1")  # bindings are in; the rules will never be
    rr = parse_message(sent).header("record-route")
    ok = response(sent, 200, body=sdp("203.0.113.20", 50000), extra=f"Record-Route: {rr}\r\n")
    up = alg.forward_response(ok, BOB, ALICE)
    assert not isinstance(up, Reject)  # the 2xx itself goes on: nothing to hide inward
    assert alg.core.take_requests() == []
    alg.advance(1.5)  # EnableRule times out
    requests = alg.core.take_requests()
    assert sorted(r.side for r in requests) == ["inside", "outside"]
    assert {r.method for r in requests} == {"BYE"}
    for own in requests:
        msg = parse_message(own.data)
        assert "cause=503" in (msg.header("reason") or "")
    to_alice = next(r for r in requests if r.side == "inside")
    assert to_alice.next_hop == "sip:alice@10.77.0.10:5060"
    to_bob = next(r for r in requests if r.side == "outside")
    assert b"10.77." not in to_bob.data
    assert alg.core.call_count == 0
    alg.close()
