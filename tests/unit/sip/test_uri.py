from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.sip import AbsoluteUri, SipParseError, SipUri, TelUri, is_ip_literal, parse_uri
from alg.sip.uri import _FAST_SIP, _parse_sip

USER = st.text(alphabet="abcdefghijXYZ0123456789-_.!~*'()%&=+$,;?/", min_size=1, max_size=10)
HOST = st.one_of(
    st.sampled_from(
        [
            "example.com",
            "a-b.example.org",
            "host_1.lab",
            "h",
            "10.77.0.10",
            "255.255.255.255",
            "999.1.1.1",
            "[2001:db8::10]",
            "[::ffff:192.0.2.1]",
        ]
    ),
)
PARAM = st.tuples(
    st.text(alphabet="abcxyz-._!~*'()%/:&+$[]", min_size=1, max_size=6),
    st.one_of(st.none(), st.text(alphabet="abc0123-._!~*'()%/:&+$[]=", min_size=1, max_size=6)),
)


@given(
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.one_of(st.none(), USER),
    password=st.one_of(st.none(), st.text(alphabet="abc123&=+$,", max_size=5)),
    host=HOST,
    port=st.one_of(st.none(), st.integers(0, 70000)),
    params=st.lists(PARAM, max_size=3),
)
def test_fast_path_agrees_with_the_general_parser(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: list[tuple[str, str | None]],
) -> None:
    text = f"{scheme}:"
    if user is not None:
        text += user + (f":{password}" if password is not None else "") + "@"
    text += host + (f":{port}" if port is not None else "")
    text += "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)
    try:
        general: SipUri | None = _parse_sip(scheme, text.split(":", 1)[1], text)
    except SipParseError:
        general = None
    try:
        parsed = parse_uri(text)
    except SipParseError:
        assert general is None, "fast path rejected what the general parser accepts"
        return
    if _FAST_SIP.fullmatch(text):
        assert parsed == general
    assert str(parsed) == text


def test_sip_uri_parts() -> None:
    uri = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password) == ("sips", "alice", "secret")
    assert (uri.host, uri.host_kind, uri.port) == ("2001:db8::1", "ipv6", 5061)
    assert uri.param("TRANSPORT") == "tcp" and uri.has_param("lr") and uri.param("lr") is None
    assert uri.headers == "subject=hi"
    assert str(uri) == "sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi"


def test_with_changes_reassembles() -> None:
    uri = parse_uri("sip:alice@10.77.0.10:5060;transport=udp")
    assert isinstance(uri, SipUri)
    moved = uri.with_changes(host="203.0.113.1", port=40000)
    assert str(moved) == "sip:alice@203.0.113.1:40000;transport=udp"
    assert moved.host_kind == "ipv4"
    v6 = uri.with_changes(host="[2001:db8::5]", port=None, user=None)
    assert str(v6) == "sip:[2001:db8::5];transport=udp"


def test_with_changes_keeps_every_part_it_is_not_told_to_change() -> None:
    uri = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi")
    assert isinstance(uri, SipUri)
    same = uri.with_changes()
    assert same == uri and str(same) == str(uri)
    assert (same.password, same.headers) == ("secret", "subject=hi")
    params = uri.with_changes(params=(("maddr", "192.0.2.1"),))
    assert str(params) == "sips:alice:secret@[2001:db8::1]:5061;maddr=192.0.2.1?subject=hi"
    assert params.is_sips and params.host_kind == "ipv6"


def test_tel_and_other_schemes() -> None:
    tel = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(tel, TelUri)
    assert tel.is_global and tel.digits == "+12015550123"
    assert tel.param("phone-context") == "example.com"
    other = parse_uri("soap.beep://192.0.2.103:3002")
    assert isinstance(other, AbsoluteUri) and other.scheme == "soap.beep"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sip:",
        "sip:alice@",
        "sip:@host",
        "sip:host:99999",
        "sip:host:12a",
        "sip:ho st",
        "sip:[::1",
        "sip:-host",
        ":nothing",
        "tel:",
        "tel:12x",
        "sip:host;=v",
        "sip:a@b;;c",
    ],
)
def test_malformed_uris(bad: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(bad)


def _ipaddress_says(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "host",
    [
        "10.77.0.10",
        "[10.77.0.10]",
        "255.255.255.255",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.",
        "example.com",
        "",
        "[]",
        "::1",
        "[2001:db8::5]",
        "[2001:db8::5",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "2001:db8:::1",
        "gw:5060",
    ],
)
def test_is_ip_literal_agrees_with_ipaddress(host: str) -> None:
    assert is_ip_literal(host) is _ipaddress_says(host)


@given(st.text(alphabet="0123456789.:[]abcdef%", max_size=24))
def test_is_ip_literal_agrees_with_ipaddress_on_any_text(host: str) -> None:
    assert is_ip_literal(host) is _ipaddress_says(host)
