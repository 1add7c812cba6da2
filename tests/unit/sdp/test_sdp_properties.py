"""Property tests of alg.sdp: lossless round trip, only SdpParseError on bad bytes, and
anchor rewrites that do what the plan says and nothing else."""

from __future__ import annotations

from ipaddress import IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alg.errors import SdpParseError, SdpRewriteError
from alg.sdp import (
    ICE_ATTRIBUTE_NAMES,
    AnchorPlan,
    MediaAnchor,
    SessionDescription,
    anchor,
    is_unspecified_address,
    parse_sdp,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
).filter(lambda s: s.strip() == s and s != "")
_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-+_.", min_size=1, max_size=12)
_IP4 = st.ip_addresses(v=4).map(str)
_IP6 = st.ip_addresses(v=6).map(str)
_PORT = st.integers(min_value=0, max_value=65535)


@st.composite
def connection_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["ip4", "ip6", "hold4", "hold6", "mcast", "fqdn"]))
    if kind == "ip4":
        return f"c=IN IP4 {draw(_IP4)}"
    if kind == "ip6":
        return f"c=IN IP6 {draw(_IP6)}"
    if kind == "hold4":
        return "c=IN IP4 0.0.0.0"
    if kind == "hold6":
        return "c=IN IP6 ::"
    if kind == "mcast":
        ttl = draw(st.integers(0, 255))
        return f"c=IN IP4 224.2.1.{draw(st.integers(0, 255))}/{ttl}"
    return f"c=IN IP4 {draw(_TOKEN)}.example.com"


_UNKNOWN_ATTRIBUTE = st.builds(
    lambda name, value: f"a={name}" + (f":{value}" if value else ""),
    _TOKEN.filter(
        lambda n: n not in ICE_ATTRIBUTE_NAMES and not n.startswith(("rtcp", "send", "recv"))
    ),
    st.one_of(st.none(), _TEXT),
)
_ICE_ATTRIBUTE = st.sampled_from(
    [
        "a=ice-ufrag:8hhY",
        "a=ice-pwd:asd88fgpdd777uzjYhagZg",
        "a=ice-options:trickle",
        "a=ice-lite",
        "a=ice-mismatch",
        "a=candidate:1 1 UDP 2130706431 10.0.0.1 4000 typ host",
        "a=candidate:2 1 UDP 1694498815 192.0.2.3 45664 typ srflx raddr 10.0.0.1 rport 4000",
        "a=remote-candidates:1 192.0.2.3 45664",
        "a=end-of-candidates",
    ]
)
_DIRECTION = st.sampled_from(["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"])
_OTHER_LINE = st.one_of(
    st.builds(lambda v: f"b=AS:{v}", st.integers(0, 9999)),
    st.builds(lambda v: f"x={v}", _TEXT),
    st.builds(lambda v: f"i={v}", _TEXT),
    st.builds(lambda v: f"k=prompt{v}", st.just("")),
)


@st.composite
def media_sections(draw: st.DrawFn) -> list[str]:
    port = draw(_PORT)
    count = draw(st.one_of(st.none(), st.integers(1, 8)))
    port_field = f"{port}/{count}" if count else str(port)
    media = draw(st.sampled_from(["audio", "video", "text", "application"]))
    formats = " ".join(draw(st.lists(st.integers(0, 127).map(str), min_size=1, max_size=4)))
    lines = [f"m={media} {port_field} RTP/AVP {formats}"]
    if draw(st.booleans()):
        lines.append(draw(connection_lines()))
    if draw(st.booleans()):
        rtcp_port = draw(st.integers(1, 65535))
        address = draw(st.one_of(st.none(), _IP4))
        lines.append(f"a=rtcp:{rtcp_port}" + (f" IN IP4 {address}" if address else ""))
    extras = draw(
        st.lists(
            st.one_of(
                _UNKNOWN_ATTRIBUTE, _ICE_ATTRIBUTE, _DIRECTION, st.just("a=rtcp-mux"), _OTHER_LINE
            ),
            max_size=6,
        )
    )
    return lines + extras


@st.composite
def sdp_bodies(draw: st.DrawFn) -> bytes:
    ip6 = draw(st.booleans())
    origin_address = draw(_IP6 if ip6 else _IP4)
    session = [
        "v=0",
        f"o={draw(_TOKEN)} {draw(st.integers(0, 2**64))} {draw(st.integers(0, 2**64))} "
        f"IN {'IP6' if ip6 else 'IP4'} {origin_address}",
        f"s={draw(_TEXT)}",
    ]
    if draw(st.booleans()):
        session.append(draw(connection_lines()))
    session.append("t=0 0")
    session += draw(
        st.lists(st.one_of(_UNKNOWN_ATTRIBUTE, _ICE_ATTRIBUTE, _DIRECTION, _OTHER_LINE), max_size=4)
    )
    lines = session
    for section in draw(st.lists(media_sections(), max_size=4)):
        lines += section
    endings = draw(st.sampled_from(["crlf", "lf", "mixed"]))
    out = bytearray()
    for line in lines:
        out += line.encode()
        if endings == "crlf":
            out += b"\r\n"
        elif endings == "lf":
            out += b"\n"
        else:
            out += draw(st.sampled_from([b"\r\n", b"\n"]))
    if draw(st.booleans()):
        out = out.rstrip(b"\r\n")
    return bytes(out)


def touch_every_view(sdp: SessionDescription) -> None:
    _ = sdp.origin, sdp.session.attributes, sdp.session.direction, sdp.session.ice
    for index, media in enumerate(sdp.media):
        _ = media.attributes, media.direction, media.ice, media.rtcp_mux
        _ = sdp.stream(index)


@SETTINGS
@given(sdp_bodies())
def test_unedited_round_trip_is_identity(body: bytes) -> None:
    sdp = parse_sdp(body)
    assert sdp.to_bytes() == body
    touch_every_view(sdp)
    assert parse_sdp(body).to_bytes() == body


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_sdp_parse_error(body: bytes) -> None:
    try:
        sdp = parse_sdp(body)
        touch_every_view(sdp)
    except SdpParseError:
        pass


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_after_a_valid_prefix_raise_only_sdp_parse_error(tail: bytes) -> None:
    try:
        touch_every_view(parse_sdp(b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\n" + tail))
    except SdpParseError:
        pass


@SETTINGS
@given(sdp_bodies(), st.data())
def test_mutated_valid_sdp_raises_only_sdp_parse_error(body: bytes, data: st.DataObject) -> None:
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        operation = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.sampled_from([0, 9, 10, 13, 32, 47, 48, 58, 61, 0x80, 0xFF]))
        if operation == "flip" and mutated:
            mutated[position] = byte
        elif operation == "insert":
            mutated.insert(position, byte)
        elif mutated:
            del mutated[position]
    try:
        sdp = parse_sdp(bytes(mutated))
        touch_every_view(sdp)
        assert sdp.to_bytes() == bytes(mutated)
    except SdpParseError:
        pass


_REWRITTEN_PREFIXES = (b"o=", b"c=", b"m=", b"a=rtcp:")


def _untouched(lines: tuple[bytes, ...], strip_ice: bool) -> list[bytes]:
    kept = []
    for line in lines:
        if line.startswith(_REWRITTEN_PREFIXES):
            continue
        name = line[2:].rstrip(b"\r\n").partition(b":")[0].decode()
        if strip_ice and line.startswith(b"a=") and name in ICE_ATTRIBUTE_NAMES:
            continue
        kept.append(line.rstrip(b"\r\n"))
    return kept


@st.composite
def anchor_plans(draw: st.DrawFn, media_count: int) -> AnchorPlan:
    address = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
    indices = draw(st.lists(st.integers(0, max(media_count - 1, 0)), unique=True))
    media = {
        index: MediaAnchor(
            draw(address),
            draw(st.integers(1, 65534)),
            draw(st.one_of(st.none(), st.integers(1, 65535))),
            draw(st.one_of(st.none(), st.integers(1, 4))),
        )
        for index in indices
        if media_count
    }
    return AnchorPlan(
        media=media,
        origin_address=draw(st.one_of(st.none(), address)),
        session_address=draw(st.one_of(st.none(), address)),
        strip_ice=draw(st.booleans()),
    )


@SETTINGS
@given(sdp_bodies(), st.data())
def test_anchor_gives_planned_values_and_keeps_the_rest(body: bytes, data: st.DataObject) -> None:
    sdp = parse_sdp(body)
    try:
        plan = data.draw(anchor_plans(len(sdp.media)))
        out = parse_sdp(anchor(sdp, plan).to_bytes())
    except SdpRewriteError:
        # The one impossible anchoring a valid description can ask for: layered multicast.
        assert any(len(m.connections) > 1 for m in sdp.media)
        return
    assert len(out.media) == len(sdp.media)
    assert [m.media_line.media for m in out.media] == [m.media_line.media for m in sdp.media]
    if plan.origin_address is not None:
        assert out.origin.address == str(plan.origin_address)
        assert out.origin.addrtype == ("IP6" if plan.origin_address.version == 6 else "IP4")
    else:
        assert out.origin == sdp.origin
    for index, before in enumerate(sdp.streams):
        after = out.stream(index)
        target = plan.media.get(index)
        if before.disabled:
            # Port 0 stays 0 and the section keeps its lines (ICE strip aside).
            assert out.media[index].media_line == sdp.media[index].media_line
            assert out.media[index].connections == sdp.media[index].connections
            assert out.media[index].rtcp == sdp.media[index].rtcp
            continue
        if target is None:
            assert after.connection == before.connection
            assert (after.rtp_port, after.rtcp_port) == (before.rtp_port, before.rtcp_port)
            continue
        assert after.rtp_port == target.rtp_port
        assert after.port_count == (target.port_count or before.port_count)
        if before.rtcp_mux:
            assert after.rtcp_port == target.rtp_port  # RFC 5761: muxed on the RTP port
        else:
            assert after.rtcp_port == (target.rtcp_port or target.rtp_port + 1)
        assert after.connection is not None
        if before.connection is not None and is_unspecified_address(before.connection.address):
            assert after.connection.address == before.connection.address  # hold kept
        else:
            assert after.connection.address == str(target.address)
            assert after.connection.addrtype == (
                "IP6" if isinstance(target.address, IPv6Address) else "IP4"
            )
            assert after.rtcp_address == str(target.address)
    if plan.strip_ice:
        assert not out.session.ice.present
        assert not any(m.ice.present for m in out.media)
    assert _untouched(out.lines, False) == _untouched(sdp.lines, plan.strip_ice)
