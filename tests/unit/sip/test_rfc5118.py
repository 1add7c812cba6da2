"""RFC 5118 (SIP torture tests for IPv6), §4: written from the RFC's messages."""

from __future__ import annotations

import pytest

from alg.sip import SipParseError, SipUri, check_request, parse_message


def register(
    request_uri: str, via: str, contact: str = '"Caller" <sip:caller@[2001:db8::1]>'
) -> bytes:
    return (
        f"REGISTER {request_uri} SIP/2.0\r\n"
        "To: sip:user@example.com\r\n"
        "From: sip:user@example.com;tag=81x2\r\n"
        f"Via: {via}\r\n"
        "Call-ID: SSG9559905523997077@hlau_4100\r\n"
        "Max-Forwards: 70\r\n"
        f"Contact: {contact}\r\n"
        "CSeq: 98176 REGISTER\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_4_1_valid_ipv6_reference() -> None:
    data = register("sip:[2001:db8::10]", "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111")
    msg = parse_message(data)
    check_request(msg)
    uri = msg.request_uri
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.host_kind, uri.port) == ("2001:db8::10", "ipv6", None)
    assert (msg.top_via.host, msg.top_via.host_kind) == ("2001:db8::9:1", "ipv6")
    contact_uri = msg.contact.contacts[0].uri
    assert isinstance(contact_uri, SipUri) and contact_uri.host == "2001:db8::1"
    assert msg.serialize() == data


def test_4_2_ipv6_without_brackets_is_rejected() -> None:
    data = register("sip:2001:db8::10", "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111")
    with pytest.raises(SipParseError) as caught:
        check_request(parse_message(data))
    assert caught.value.status == 400


def test_4_3_port_ambiguous_uri_has_no_port() -> None:
    msg = parse_message(
        register("sip:[2001:db8::10:5070]", "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111")
    )
    check_request(msg)
    uri = msg.request_uri
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port) == ("2001:db8::10:5070", None)


def test_4_4_port_unambiguous_uri() -> None:
    msg = parse_message(
        register("sip:[2001:db8::10]:5070", "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111")
    )
    check_request(msg)
    uri = msg.request_uri
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port, uri.host_port) == ("2001:db8::10", 5070, "[2001:db8::10]:5070")


@pytest.mark.parametrize("received", ["[2001:db8::9:255]", "2001:db8::9:255"])
def test_4_5_via_received_with_and_without_delimiters(received: str) -> None:
    via = f"SIP/2.0/UDP [2001:db8::9:1];received={received};branch=z9hG4bKas3-111"
    msg = parse_message(register("sip:[2001:db8::10]", via))
    check_request(msg)
    assert msg.top_via.received == "2001:db8::9:255"
    assert msg.top_via.branch == "z9hG4bKas3-111"


def test_4_7_multiple_ip_addresses_in_headers() -> None:
    data = (
        b"BYE sip:[2001:db8::10] SIP/2.0\r\n"
        b"To: sip:user@example.com;tag=bd76ya\r\n"
        b"From: sip:user@example.com;tag=81x2\r\n"
        b"Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144\r\n"
        b"Via: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200\r\n"
        b"Call-ID: 997077@lau_4100\r\n"
        b"Max-Forwards: 70\r\n"
        b"CSeq: 89187 BYE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    check_request(msg)
    assert [(v.host_kind, v.port) for v in msg.vias] == [
        ("ipv6", 6050),
        ("ipv4", None),
        ("ipv6", None),
    ]
    assert msg.vias[2].received == "192.0.2.200"
    assert msg.vias[0].sent_by == "[2001:db8::9:1]:6050"


def test_4_10_ipv4_mapped_ipv6_reference() -> None:
    data = register(
        "sip:[::ffff:192.0.2.10]",
        "SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19",
        '"T. desk phone" <sip:ted@[::ffff:192.0.2.10]:19823>',
    )
    msg = parse_message(data)
    check_request(msg)
    assert msg.top_via.host == "::ffff:192.0.2.10"
    contact_uri = msg.contact.contacts[0].uri
    assert isinstance(contact_uri, SipUri)
    assert (contact_uri.host, contact_uri.port) == ("::ffff:192.0.2.10", 19823)


@pytest.mark.parametrize(
    "bad", ["sip:[2001:db8::10", "sip:[2001:db8::zz]", "sip:[2001:db8::10]5070", "sip:[192.0.2.1]"]
)
def test_malformed_ipv6_references(bad: str) -> None:
    data = register(bad, "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111")
    with pytest.raises(SipParseError) as caught:
        check_request(parse_message(data))
    assert caught.value.status == 400
