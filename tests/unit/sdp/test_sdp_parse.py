"""Parsing views of alg.sdp: lossless model, o=/c=/m=/a=rtcp, directions, ICE, stream helpers."""

from __future__ import annotations

import pytest

from alg.errors import SdpParseError
from alg.sdp import (
    Candidate,
    Connection,
    Direction,
    MediaLine,
    Origin,
    RtcpAttribute,
    parse_candidate,
    parse_sdp,
)


def crlf(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


# RFC 8866 §5 example, plus a video stream with a port block and unknown lines.
EXAMPLE = crlf(
    "v=0",
    "o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1",
    "s=Call to John Smith",
    "i=SDP Offer #1",
    "u=http://www.jdoe.example.com/home.html",
    "e=Jane Doe <jane@jdoe.example.com>",
    "p=+1 617 555-6011",
    "c=IN IP4 198.51.100.1",
    "t=0 0",
    "x=unknown line type",
    "a=tool:made-up/1.0",
    "m=audio 49170 RTP/AVP 0",
    "m=audio 49180 RTP/AVP 0",
    "m=video 51372/2 RTP/AVP 99",
    "c=IN IP6 2001:db8::2",
    "a=rtpmap:99 h263-1998/90000",
    "a=rtcp:53020 IN IP4 192.0.2.7",
    "a=sendonly",
)


def test_unedited_model_serializes_byte_identical() -> None:
    sdp = parse_sdp(EXAMPLE)
    assert sdp.to_bytes() == EXAMPLE
    assert bytes(sdp) == EXAMPLE
    assert len(sdp.lines) == 18


def test_bare_lf_and_missing_final_terminator_are_kept() -> None:
    body = b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0"
    sdp = parse_sdp(body)
    assert sdp.to_bytes() == body
    assert sdp.line_ending == b"\n"
    assert sdp.media[0].media_line.port == 4000


def test_mixed_line_endings_are_kept_per_line() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\ns=-\r\nt=0 0\nm=audio 4000 RTP/AVP 0\r\n"
    sdp = parse_sdp(body)
    assert sdp.to_bytes() == body
    assert sdp.line_ending == b"\r\n"


def test_origin_view() -> None:
    assert parse_sdp(EXAMPLE).origin == Origin(
        "jdoe", "3724394400", "3724394405", "IN", "IP4", "198.51.100.1"
    )


def test_sections_split_at_m_lines() -> None:
    sdp = parse_sdp(EXAMPLE)
    assert len(sdp.session.lines) == 11
    assert [len(m.lines) for m in sdp.media] == [1, 1, 5]
    assert sdp.media[2].first_line == 13
    assert sdp.session.attribute("tool") is not None


def test_connection_views_session_and_media() -> None:
    sdp = parse_sdp(EXAMPLE)
    assert sdp.session.connection == Connection("IN", "IP4", "198.51.100.1")
    assert sdp.media[0].connection is None
    assert sdp.media[2].connection == Connection("IN", "IP6", "2001:db8::2")
    assert sdp.effective_connection(0) == Connection("IN", "IP4", "198.51.100.1")
    assert sdp.effective_connection(2) == Connection("IN", "IP6", "2001:db8::2")


def test_media_line_view_with_port_count() -> None:
    sdp = parse_sdp(EXAMPLE)
    assert sdp.media[2].media_line == MediaLine("video", 51372, 2, "RTP/AVP", ("99",))
    assert sdp.media[0].media_line == MediaLine("audio", 49170, None, "RTP/AVP", ("0",))
    assert sdp.stream(2).port_count == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("IN IP4 224.2.36.42/127", Connection("IN", "IP4", "224.2.36.42", 127, None)),
        ("IN IP4 224.2.1.1/127/3", Connection("IN", "IP4", "224.2.1.1", 127, 3)),
        ("IN IP6 FF15::101/3", Connection("IN", "IP6", "FF15::101", None, 3)),
        ("IN IP4 host.example.com", Connection("IN", "IP4", "host.example.com")),
        ("TN RFC2543 +1-555-1234", Connection("TN", "RFC2543", "+1-555-1234")),
    ],
)
def test_multicast_and_other_connection_forms(value: str, expected: Connection) -> None:
    body = crlf("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", f"c={value}", "t=0 0")
    assert parse_sdp(body).session.connection == expected


def test_rtcp_attribute_with_and_without_address() -> None:
    sdp = parse_sdp(EXAMPLE)
    assert sdp.media[2].rtcp == RtcpAttribute(53020, "IN", "IP4", "192.0.2.7")
    assert sdp.effective_rtcp_port(2) == 53020
    assert sdp.stream(2).rtcp_address == "192.0.2.7"
    body = crlf("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0", "m=audio 4000 RTP/AVP 0")
    body += b"c=IN IP4 10.0.0.1\r\na=rtcp:4005\r\n"
    sdp = parse_sdp(body)
    assert sdp.media[0].rtcp == RtcpAttribute(4005)
    assert sdp.stream(0).rtcp_address == "10.0.0.1"


def test_session_level_rtcp_is_not_a_media_rtcp() -> None:
    body = crlf("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "a=rtcp:9", "t=0 0")
    body += crlf("m=audio 4000 RTP/AVP 0", "c=IN IP4 10.0.0.1")
    sdp = parse_sdp(body)
    assert sdp.media[0].rtcp is None
    assert sdp.effective_rtcp_port(0) == 4001


def test_rtcp_mux_gives_the_rtp_port() -> None:
    body = crlf(
        "v=0",
        "o=- 1 1 IN IP4 10.0.0.1",
        "s=-",
        "c=IN IP4 10.0.0.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0",
        "a=rtcp:4001",
        "a=rtcp-mux",
        "a=rtcp-fb:* nack",
    )
    sdp = parse_sdp(body)
    assert sdp.media[0].rtcp_mux
    assert sdp.effective_rtcp_port(0) == 4000
    assert sdp.stream(0).rtcp_mux


def test_default_rtcp_port_and_disabled_stream() -> None:
    sdp = parse_sdp(EXAMPLE)
    assert sdp.effective_rtcp_port(0) == 49171
    body = crlf("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0")
    sdp = parse_sdp(body + crlf("m=audio 0 RTP/AVP 0", "m=video 65535 RTP/AVP 31"))
    assert sdp.is_disabled(0)
    assert not sdp.is_disabled(1)
    assert sdp.effective_rtcp_port(0) is None
    assert sdp.effective_rtcp_port(1) is None  # 65536 does not exist
    assert sdp.stream(0).disabled


def test_direction_session_default_and_media_override() -> None:
    body = crlf(
        "v=0",
        "o=- 1 1 IN IP4 10.0.0.1",
        "s=-",
        "c=IN IP4 10.0.0.1",
        "t=0 0",
        "a=sendonly",
        "m=audio 4000 RTP/AVP 0",
        "m=audio 4002 RTP/AVP 0",
        "a=recvonly",
        "m=audio 4004 RTP/AVP 0",
        "a=inactive",
    )
    sdp = parse_sdp(body)
    assert sdp.session.direction is Direction.SENDONLY
    assert [sdp.effective_direction(i) for i in range(3)] == [
        Direction.SENDONLY,
        Direction.RECVONLY,
        Direction.INACTIVE,
    ]
    assert [sdp.is_on_hold(i) for i in range(3)] == [True, False, True]
    plain = parse_sdp(crlf("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0", "m=audio 1 R 0"))
    assert plain.effective_direction(0) is Direction.SENDRECV


@pytest.mark.parametrize("address", ["IN IP4 0.0.0.0", "IN IP6 ::", "IN IP6 0:0::0"])
def test_hold_by_unspecified_address(address: str) -> None:
    body = crlf("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", f"c={address}", "t=0 0")
    sdp = parse_sdp(body + crlf("m=audio 4000 RTP/AVP 0"))
    assert sdp.is_on_hold(0)
    assert sdp.stream(0).on_hold


def test_real_address_is_not_hold() -> None:
    assert not parse_sdp(EXAMPLE).is_on_hold(0)
    assert parse_sdp(EXAMPLE).is_on_hold(2)  # a=sendonly


ICE_BODY = crlf(
    "v=0",
    "o=- 1 1 IN IP4 10.0.0.1",
    "s=-",
    "a=ice-lite",
    "a=ice-options:trickle ice2",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0",
    "c=IN IP4 10.0.0.1",
    "a=ice-ufrag:8hhY",
    "a=ice-pwd:asd88fgpdd777uzjYhagZg",
    "a=candidate:1 1 UDP 2130706431 10.0.0.1 4000 typ host",
    "a=candidate:2 1 UDP 1694498815 192.0.2.3 45664 typ srflx raddr 10.0.0.1 rport 4000",
    "a=candidate:3 1 TCP 2128609279 10.0.0.1 9 typ host tcptype active",
    "a=remote-candidates:1 192.0.2.3 45664",
    "a=end-of-candidates",
    "a=ice-mismatch",
)


def test_ice_attributes_session_and_media() -> None:
    sdp = parse_sdp(ICE_BODY)
    assert sdp.session.ice.lite
    assert sdp.session.ice.options == ("trickle", "ice2")
    ice = sdp.media[0].ice
    assert (ice.ufrag, ice.pwd) == ("8hhY", "asd88fgpdd777uzjYhagZg")
    assert ice.mismatch and ice.end_of_candidates and ice.present
    assert ice.remote_candidates == "1 192.0.2.3 45664"
    assert ice.candidates[0] == Candidate("1", 1, "UDP", 2130706431, "10.0.0.1", 4000, "host")
    assert ice.candidates[1].related_address == "10.0.0.1"
    assert ice.candidates[1].related_port == 4000
    assert ice.candidates[2].extensions == (("tcptype", "active"),)
    assert not parse_sdp(EXAMPLE).media[0].ice.present


@pytest.mark.parametrize(
    "value",
    [
        "1 1 UDP 2130706431 10.0.0.1 4000 host",  # no "typ"
        "1 1 UDP 2130706431 10.0.0.1 4000 typ",  # no type
        "1 x UDP 2130706431 10.0.0.1 4000 typ host",  # component
        "1 1 UDP 99999999999 10.0.0.1 4000 typ host",  # priority > 10 digits
        "1 1 UDP 1 10.0.0.1 70000 typ host",  # port
        "1 1 UDP 1 10.0.0.1 4000 typ host raddr",  # dangling extension
        "f*o 1 UDP 1 10.0.0.1 4000 typ host",  # foundation chars
    ],
)
def test_bad_candidate_raises_parse_error(value: str) -> None:
    with pytest.raises(SdpParseError):
        parse_candidate(value, 7)


def test_bad_candidate_surfaces_as_parse_error_from_the_view() -> None:
    body = crlf("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0", "m=audio 1 RTP/AVP 0")
    sdp = parse_sdp(body + b"a=candidate:garbage\r\n")
    with pytest.raises(SdpParseError) as raised:
        _ = sdp.media[0].ice
    assert raised.value.line_number == 6


def test_attributes_keep_unknown_ones_in_order() -> None:
    sdp = parse_sdp(EXAMPLE)
    names = [a.name for a in sdp.media[2].attributes]
    assert names == ["rtpmap", "rtcp", "sendonly"]
    assert sdp.media[2].attributes[0].value == "99 h263-1998/90000"
    assert sdp.media[2].attributes[2].value is None


def test_streams_summary() -> None:
    streams = parse_sdp(EXAMPLE).streams
    assert [s.rtp_port for s in streams] == [49170, 49180, 51372]
    assert [s.rtcp_port for s in streams] == [49171, 49181, 53020]
    assert streams[2].direction is Direction.SENDONLY


def test_streams_are_resolved_once_per_description() -> None:
    sdp = parse_sdp(EXAMPLE)
    assert sdp.stream(1) is sdp.stream(1) is sdp.streams[1]
    assert parse_sdp(EXAMPLE).stream(1) == sdp.stream(1)  # equal, not shared


def test_trailing_blank_line_is_tolerated_and_kept() -> None:
    body = EXAMPLE + b"\r\n"
    assert parse_sdp(body).to_bytes() == body


@pytest.mark.parametrize(
    ("body", "line_number"),
    [
        (b"", None),
        (b"v=1\r\n", 1),
        (b"o=- 1 1 IN IP4 1.1.1.1\r\nv=0\r\n", 1),
        (b"v=0\r\ns=-\r\n", None),  # no o=
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\no=- 1 1 IN IP4 1.1.1.1\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4\r\n", 2),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nS=-\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns -\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\rt=0 0\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\n\r\ns=-\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nv=0\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nc=IN IP4\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nc=IN IP4 a\r\nc=IN IP4 b\r\n", 4),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nc=IN IP4 224.1.1.1/256\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nc=IN IP6 ff15::1/3/2\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nc=IN IP4 \xff\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio x RTP/AVP 0\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 65536 RTP/AVP 0\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio +1 RTP/AVP 0\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 1/0 RTP/AVP 0\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 1\r\n", 3),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 1 R 0\r\na=rtcp:x\r\n", 4),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 1 R 0\r\na=rtcp:1 IN IP4\r\n", 4),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 1 R 0\r\na=rtcp:1\r\na=rtcp:2\r\n", 5),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 1 R 0\r\no=- 1 1 IN IP4 1.1.1.1\r\n", 4),
        (b"v=0\x00\r\n", None),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio " + b"9" * 5000 + b" RTP/AVP 0\r\n", 3),
    ],
)
def test_malformed_input_raises_sdp_parse_error_with_line(
    body: bytes, line_number: int | None
) -> None:
    with pytest.raises(SdpParseError) as raised:
        parse_sdp(body)
    assert raised.value.line_number == line_number
