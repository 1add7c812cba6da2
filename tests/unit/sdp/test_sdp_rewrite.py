"""Rewrite operations of alg.sdp: each edit, its RFC rule, and that nothing else changes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from alg.errors import SdpRewriteError
from alg.sdp import (
    AnchorPlan,
    MediaAnchor,
    RtcpAttribute,
    SessionDescription,
    anchor,
    parse_sdp,
    set_media_transport,
    set_origin_address,
    set_rtcp,
    set_session_connection,
    strip_ice,
)

PUBLIC = IPv4Address("203.0.113.5")
PUBLIC6 = IPv6Address("2001:db8::5")


def crlf(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


def text(sdp: SessionDescription) -> list[str]:
    return sdp.to_bytes().decode().split("\r\n")


SESSION_C = crlf(
    "v=0",
    "o=alice 2890844526 2890844526 IN IP4 10.77.0.10",
    "s=-",
    "c=IN IP4 10.77.0.10",
    "t=0 0",
    "m=audio 49170 RTP/AVP 0 8",
    "i=voice",
    "a=rtpmap:0 PCMU/8000",
    "m=video 51372 RTP/AVP 31",
    "a=rtpmap:31 H261/90000",
)


def removed_and_added(
    before: SessionDescription, after: SessionDescription
) -> tuple[set[bytes], set[bytes]]:
    old, new = set(before.lines), set(after.lines)
    return old - new, new - old


def test_set_media_transport_adds_media_c_after_i_line() -> None:
    sdp = parse_sdp(SESSION_C)
    out = set_media_transport(sdp, 0, PUBLIC, 30000)
    lines = text(out)
    assert lines[5:9] == [
        "m=audio 30000 RTP/AVP 0 8",
        "i=voice",
        "c=IN IP4 203.0.113.5",
        "a=rtpmap:0 PCMU/8000",
    ]
    again = parse_sdp(out.to_bytes())
    assert again.effective_connection(0).address == "203.0.113.5"  # type: ignore[union-attr]
    assert again.effective_connection(1).address == "10.77.0.10"  # type: ignore[union-attr]
    removed, added = removed_and_added(sdp, out)
    assert removed == {b"m=audio 49170 RTP/AVP 0 8\r\n"}
    assert added == {b"m=audio 30000 RTP/AVP 0 8\r\n", b"c=IN IP4 203.0.113.5\r\n"}


def test_set_media_transport_same_as_session_address_adds_no_c() -> None:
    sdp = parse_sdp(SESSION_C)
    out = set_media_transport(sdp, 1, IPv4Address("10.77.0.10"), 40000)
    assert len(out.lines) == len(sdp.lines)
    assert parse_sdp(out.to_bytes()).media[1].media_line.port == 40000


def test_set_media_transport_rewrites_media_c_and_address_family() -> None:
    body = crlf("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0", "m=audio 4000/2 RTP/AVP 0")
    sdp = parse_sdp(body + b"c=IN IP4 10.0.0.1\r\n")
    out = set_media_transport(sdp, 0, PUBLIC6, 5000)
    assert text(out)[4:6] == ["m=audio 5000/2 RTP/AVP 0", "c=IN IP6 2001:db8::5"]
    out = set_media_transport(sdp, 0, PUBLIC, 5000, port_count=4)
    assert parse_sdp(out.to_bytes()).media[0].media_line.port_count == 4


def test_set_media_transport_rtcp_rules() -> None:
    body = crlf(
        "v=0",
        "o=- 1 1 IN IP4 10.0.0.1",
        "s=-",
        "c=IN IP4 10.0.0.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0",
        "a=rtcp:4001 IN IP4 10.0.0.1",
        "m=audio 4002 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
        "m=audio 4004 RTP/AVP 0",
        "a=rtcp:4005",
        "a=rtcp-mux",
    )
    sdp = parse_sdp(body)
    # An existing a=rtcp keeps its shape and gets the new address: no inside address left.
    out = parse_sdp(set_media_transport(sdp, 0, PUBLIC, 30000, rtcp_port=30001).to_bytes())
    assert out.media[0].rtcp == RtcpAttribute(30001, "IN", "IP4", "203.0.113.5")
    # A non-default RTCP port gets a new a=rtcp, before the first attribute.
    out = parse_sdp(set_media_transport(sdp, 1, PUBLIC, 30002, rtcp_port=30011).to_bytes())
    assert out.media[1].rtcp == RtcpAttribute(30011)
    assert out.media[1].lines[2] == b"a=rtcp:30011\r\n"
    # The default RTCP port needs no line.
    out = parse_sdp(set_media_transport(sdp, 1, PUBLIC, 30002, rtcp_port=30003).to_bytes())
    assert out.media[1].rtcp is None
    # rtcp_port None with rtcp-mux: the stale a=rtcp follows the RTP port.
    out = parse_sdp(set_media_transport(sdp, 2, PUBLIC, 30004).to_bytes())
    assert out.media[2].rtcp == RtcpAttribute(30004)
    assert out.effective_rtcp_port(2) == 30004


def test_set_rtcp_replace_add_and_address_part() -> None:
    sdp = parse_sdp(SESSION_C)
    out = set_rtcp(sdp, 0, 7000)
    assert parse_sdp(out.to_bytes()).media[0].rtcp == RtcpAttribute(7000)
    out = set_rtcp(out, 0, 7002, IPv4Address("192.0.2.9"))
    assert parse_sdp(out.to_bytes()).media[0].rtcp == RtcpAttribute(7002, "IN", "IP4", "192.0.2.9")
    # The address part is left out when it is the stream's connection address.
    out = set_rtcp(out, 0, 7004, IPv4Address("10.77.0.10"))
    assert parse_sdp(out.to_bytes()).media[0].rtcp == RtcpAttribute(7004)
    assert len(out.lines) == len(sdp.lines) + 1
    # A section without attributes gets the line at its end.
    bare = parse_sdp(crlf("v=0", "o=- 1 1 IN IP4 1.1.1.1", "s=-", "t=0 0", "m=audio 1 R 0"))
    assert set_rtcp(bare, 0, 9).lines[-1] == b"a=rtcp:9\r\n"


def test_set_origin_address_changes_addrtype_and_keeps_other_fields() -> None:
    sdp = parse_sdp(SESSION_C)
    out = parse_sdp(set_origin_address(sdp, PUBLIC6).to_bytes())
    assert out.origin.address == "2001:db8::5"
    assert out.origin.addrtype == "IP6"
    assert (out.origin.username, out.origin.session_id) == ("alice", "2890844526")
    assert out.lines[1] == b"o=alice 2890844526 2890844526 IN IP6 2001:db8::5\r\n"


def test_set_session_connection_replace_and_add() -> None:
    out = set_session_connection(parse_sdp(SESSION_C), PUBLIC)
    assert out.lines[3] == b"c=IN IP4 203.0.113.5\r\n"
    body = crlf("v=0", "o=- 1 1 IN IP4 1.1.1.1", "s=-", "i=x", "t=0 0", "m=audio 1 R 0")
    out = set_session_connection(parse_sdp(body), PUBLIC)
    assert out.lines[4] == b"c=IN IP4 203.0.113.5\r\n"
    assert parse_sdp(out.to_bytes()).effective_connection(0).address == "203.0.113.5"  # type: ignore[union-attr]


ICE = crlf(
    "v=0",
    "o=- 1 1 IN IP4 10.0.0.1",
    "s=-",
    "a=ice-options:trickle",
    "a=ice-pacing:50",
    "c=IN IP4 10.0.0.1",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0",
    "a=ice-ufrag:8hhY",
    "a=ice-pwd:asd88fgpdd777uzjYhagZg",
    "a=candidate:1 1 UDP 2130706431 10.0.0.1 4000 typ host",
    "a=rtpmap:0 PCMU/8000",
    "a=candidatex:not-ice",
    "a=end-of-candidates",
)


def test_strip_ice_removes_the_set_and_nothing_else() -> None:
    sdp = parse_sdp(ICE)
    out = strip_ice(sdp)
    assert text(out) == [
        "v=0",
        "o=- 1 1 IN IP4 10.0.0.1",
        "s=-",
        "c=IN IP4 10.0.0.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
        "a=candidatex:not-ice",
        "",
    ]
    again = parse_sdp(out.to_bytes())
    assert not again.session.ice.present
    assert not again.media[0].ice.present


def test_unterminated_last_line_stays_unterminated_after_delete_and_insert() -> None:
    body = ICE.rstrip(b"\r\n")
    out = strip_ice(parse_sdp(body))
    assert out.to_bytes().endswith(b"a=candidatex:not-ice")
    body = b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nt=0 0\r\nm=audio 1 R 0"
    out = set_rtcp(parse_sdp(body), 0, 9)
    assert out.to_bytes() == body + b"\r\na=rtcp:9"


def test_inserted_lines_use_the_input_line_ending() -> None:
    sdp = parse_sdp(SESSION_C.replace(b"\r\n", b"\n"))
    out = set_media_transport(sdp, 0, PUBLIC, 30000)
    assert b"\r" not in out.to_bytes()
    assert b"\nc=IN IP4 203.0.113.5\n" in out.to_bytes()


def test_anchor_all_streams_moves_session_c_and_adds_nothing() -> None:
    sdp = parse_sdp(SESSION_C)
    plan = AnchorPlan(
        media={0: MediaAnchor(PUBLIC, 30000), 1: MediaAnchor(PUBLIC, 30002)},
        origin_address=PUBLIC,
    )
    out = anchor(sdp, plan)
    assert len(out.lines) == len(sdp.lines)
    assert b"10.77.0.10" not in out.to_bytes()
    assert [s.rtp_port for s in parse_sdp(out.to_bytes()).streams] == [30000, 30002]


def test_anchor_one_of_two_streams_adds_media_c_only_there() -> None:
    sdp = parse_sdp(SESSION_C)
    out = parse_sdp(anchor(sdp, AnchorPlan(media={1: MediaAnchor(PUBLIC, 30002)})).to_bytes())
    assert out.session.connection.address == "10.77.0.10"  # type: ignore[union-attr]
    assert out.media[1].connection.address == "203.0.113.5"  # type: ignore[union-attr]
    assert out.media[0].lines == sdp.media[0].lines


def test_anchor_explicit_session_address_pins_unanchored_streams() -> None:
    sdp = parse_sdp(SESSION_C)
    plan = AnchorPlan(media={0: MediaAnchor(PUBLIC, 30000)}, session_address=PUBLIC)
    out = parse_sdp(anchor(sdp, plan).to_bytes())
    assert out.session.connection.address == "203.0.113.5"  # type: ignore[union-attr]
    assert out.media[0].connection is None
    assert out.effective_connection(1).address == "10.77.0.10"  # type: ignore[union-attr]
    assert out.media[1].lines[1] == b"c=IN IP4 10.77.0.10\r\n"


HOLD = crlf(
    "v=0",
    "o=- 1 2 IN IP4 10.0.0.1",
    "s=-",
    "c=IN IP4 0.0.0.0",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0",
    "a=rtcp:4001 IN IP4 0.0.0.0",
    "m=video 0 RTP/AVP 31",
    "m=audio 4004 RTP/AVP 0",
    "c=IN IP4 10.0.0.1",
    "a=sendonly",
)


def test_anchor_keeps_hold_address_and_port_zero() -> None:
    sdp = parse_sdp(HOLD)
    plan = AnchorPlan(
        media={
            0: MediaAnchor(PUBLIC, 30000, 30001),
            1: MediaAnchor(PUBLIC, 30002),
            2: MediaAnchor(PUBLIC, 30004),
        },
        origin_address=PUBLIC,
    )
    out = parse_sdp(anchor(sdp, plan).to_bytes())
    assert out.session.connection.address == "0.0.0.0"  # type: ignore[union-attr]
    assert out.effective_connection(0).address == "0.0.0.0"  # type: ignore[union-attr]
    assert out.media[0].media_line.port == 30000
    assert out.media[0].rtcp == RtcpAttribute(30001, "IN", "IP4", "0.0.0.0")
    assert out.media[1].lines == sdp.media[1].lines  # port 0: untouched
    assert out.media[2].connection.address == "203.0.113.5"  # type: ignore[union-attr]
    assert out.is_on_hold(2)  # sendonly hold still anchored, direction kept


def test_anchor_strip_ice_flag() -> None:
    sdp = parse_sdp(ICE)
    out = anchor(sdp, AnchorPlan(media={0: MediaAnchor(PUBLIC, 30000)}, strip_ice=True))
    assert b"ice-" not in out.to_bytes()
    assert b"a=candidate:" not in out.to_bytes()
    kept = anchor(sdp, AnchorPlan(media={0: MediaAnchor(PUBLIC, 30000)}))
    assert b"a=candidate:1" in kept.to_bytes()


def test_anchor_empty_plan_is_identity() -> None:
    sdp = parse_sdp(HOLD)
    assert anchor(sdp, AnchorPlan()).to_bytes() == HOLD


def test_plan_is_read_only_copy() -> None:
    media = {0: MediaAnchor(PUBLIC, 30000)}
    plan = AnchorPlan(media=media)
    media[1] = MediaAnchor(PUBLIC, 30002)
    assert list(plan.media) == [0]
    with pytest.raises(TypeError):
        plan.media[1] = MediaAnchor(PUBLIC, 1)  # type: ignore[index]


@pytest.mark.parametrize(
    "build",
    [
        lambda: MediaAnchor(PUBLIC, 0),
        lambda: MediaAnchor(PUBLIC, 65536),
        lambda: MediaAnchor(PUBLIC, 4000, rtcp_port=0),
        lambda: MediaAnchor(PUBLIC, 4000, port_count=0),
        lambda: MediaAnchor(ip_address("fe80::1%eth0"), 4000),
        lambda: AnchorPlan(origin_address=ip_address("fe80::1%eth0")),
    ],
)
def test_bad_plan_values_raise_rewrite_error(build: object) -> None:
    with pytest.raises(SdpRewriteError):
        build()  # type: ignore[operator]


def test_impossible_rewrites_raise_rewrite_error() -> None:
    sdp = parse_sdp(SESSION_C)
    with pytest.raises(SdpRewriteError):
        anchor(sdp, AnchorPlan(media={2: MediaAnchor(PUBLIC, 30000)}))
    with pytest.raises(SdpRewriteError):
        anchor(sdp, AnchorPlan(media={-1: MediaAnchor(PUBLIC, 30000)}))
    with pytest.raises(SdpRewriteError):
        set_media_transport(sdp, 5, PUBLIC, 30000)
    with pytest.raises(SdpRewriteError):
        set_media_transport(sdp, 0, PUBLIC, 70000)
    with pytest.raises(SdpRewriteError):
        set_rtcp(sdp, 0, 0)
    layered = crlf("v=0", "o=- 1 1 IN IP4 1.1.1.1", "s=-", "t=0 0", "m=video 1 R 0")
    layered += crlf("c=IN IP4 224.2.1.1/127", "c=IN IP4 224.2.1.2/127")
    with pytest.raises(SdpRewriteError):
        anchor(parse_sdp(layered), AnchorPlan(media={0: MediaAnchor(PUBLIC, 30000)}))


def test_rewrite_leaves_input_model_unchanged() -> None:
    sdp = parse_sdp(SESSION_C)
    anchor(sdp, AnchorPlan(media={0: MediaAnchor(PUBLIC, 30000)}, strip_ice=True))
    assert sdp.to_bytes() == SESSION_C
