from __future__ import annotations

import pytest

from alg.sip import MessageEditor, SipParseError, find_sdp, parse_message

from .messages import SDP, invite

MULTIPART = (
    b"preamble to ignore\r\n"
    b"--unique-boundary-1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Disposition: session\r\n"
    b"\r\n" + SDP + b"\r\n"
    b"--unique-boundary-1\r\n"
    b"Content-Type: application/ISUP; version=nxv3; base=etsi121\r\n"
    b"Content-Disposition: signal; handling=optional\r\n"
    b"\r\n"
    b"\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00\x00\x03\x06\r\n"
    b"--unique-boundary-1--\r\n"
    b"epilogue\r\n"
)
MULTIPART_TYPE = b'multipart/mixed; boundary="unique-boundary-1"'


def test_plain_sdp_body() -> None:
    msg = parse_message(invite())
    location = find_sdp(msg)
    assert location is not None and location.extract(msg.body) == SDP


def test_sdp_inside_multipart_mixed_is_found_and_replaced_keeping_the_rest() -> None:
    msg = parse_message(invite(MULTIPART, MULTIPART_TYPE))
    location = find_sdp(msg)
    assert location is not None
    assert location.extract(msg.body) == SDP
    new_sdp = SDP.replace(b"10.77.0.10", b"203.0.113.1")
    edit = MessageEditor(msg)
    edit.set_body(location.replace(msg.body, new_sdp))
    out = parse_message(edit.apply())
    assert out.body == MULTIPART.replace(SDP, new_sdp)
    again = find_sdp(out)
    assert again is not None and again.extract(out.body) == new_sdp


def test_nested_multipart() -> None:
    inner = b"--inner\r\nContent-Type: application/sdp\r\n\r\n" + SDP + b"\r\n--inner--\r\n"
    outer = (
        b"--outer\r\nContent-Type: multipart/alternative;boundary=inner\r\n\r\n"
        + inner
        + b"\r\n--outer--\r\n"
    )
    msg = parse_message(invite(outer, b"multipart/mixed;boundary=outer"))
    location = find_sdp(msg)
    assert location is not None and location.extract(msg.body) == SDP


def test_non_sdp_bodies() -> None:
    assert find_sdp(parse_message(invite(b"<xml/>", b"application/pidf+xml"))) is None
    msg = parse_message(
        invite(
            b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n", b"multipart/mixed;boundary=b"
        )
    )
    assert find_sdp(msg) is None


def test_multipart_without_boundary_is_a_400() -> None:
    msg = parse_message(invite(MULTIPART, b"multipart/mixed"))
    with pytest.raises(SipParseError) as caught:
        find_sdp(msg)
    assert caught.value.status == 400
