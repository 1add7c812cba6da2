"""A provider challenges the inside caller's INVITE (407); the retry with credentials
(same Call-ID and From tag, CSeq + 1, RFC 3261 §22.2) keeps the call's binding instead of
racing its release — and a challenge nobody answers releases it after Timer B."""

from __future__ import annotations

from proxy_harness import ALICE, BOB, invite, sent_to
from test_proxy_media import PUBLIC, Rig

from alg.builders import build_response
from alg.sip import parse_message

ANSWER = (
    b"v=0\r\no=b 1 1 IN IP4 203.0.113.20\r\ns=-\r\nc=IN IP4 203.0.113.20\r\n"
    b"t=0 0\r\nm=audio 12000 RTP/AVP 0\r\n"
)


def _ids(rig: Rig) -> list[str]:
    return [b.binding_id for b in rig.bindings()]  # type: ignore[attr-defined]


def _challenged(rig: Rig) -> list[str]:
    out = rig.receive(invite(), ALICE)
    (first,) = [parse_message(s.data) for s in out if s.to == BOB]
    out = rig.receive(build_response(first, 407, to_tag="p1"), BOB, at=0.5)
    assert [m.status for m in sent_to(out, ALICE)] == [407]
    return _ids(rig)


def test_the_retry_after_407_keeps_the_binding() -> None:
    rig = Rig()
    try:
        before = _challenged(rig)
        assert len(before) == 1  # kept for the retry
        retry = invite(branch="z9hG4bKalice2").replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE")
        out = rig.receive(retry, ALICE, at=1.0)
        (second,) = [parse_message(s.data) for s in out if s.to == BOB]
        assert f"c=IN IP4 {PUBLIC}".encode() in second.body
        assert _ids(rig) == before  # the same binding, nothing reserved again
        out = rig.receive(build_response(second, 200, to_tag="b2", body=ANSWER), BOB, at=1.5)
        assert [m.status for m in sent_to(out, ALICE)] == [200]
        rig.advance(40.0)  # past the challenge grace: the answered call keeps its binding
        assert _ids(rig) == before
    finally:
        rig.loop.close()


def test_a_challenge_nobody_answers_releases_after_timer_b() -> None:
    rig = Rig()
    try:
        assert len(_challenged(rig)) == 1
        rig.advance(30.0)
        assert len(rig.bindings()) == 1
        rig.advance(40.0)
        assert rig.bindings() == []
    finally:
        rig.loop.close()
