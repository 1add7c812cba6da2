"""All 49 RFC 4475 torture messages: valid ones parse, pass the proxy checks and
round-trip byte-exact; invalid ones fail with the status and fault RFC 4475 names."""

from __future__ import annotations

from pathlib import Path

import pytest

from alg.sip import (
    BadMessage,
    MessageReceived,
    SipParseError,
    SipStreamReader,
    check_request,
    check_response,
    parse_message,
)

DATA = Path(__file__).parents[2] / "data" / "rfc4475"

# name -> None (acceptable) or (status, words of the reason phrase). Section numbers are
# RFC 4475's. Where the RFC allows either rejecting or tolerating, the choice is noted.
EXPECTED: dict[str, tuple[int, str] | None] = {
    # 3.1.1 valid messages
    "wsinv": None,
    "intmeth": None,
    "esc01": None,
    "escnull": None,
    "esc02": None,
    "lwsdisp": None,
    "longreq": None,
    "dblreq": None,
    "semiuri": None,
    "transports": None,
    "mpart01": None,
    "unreason": None,
    "noreason": None,
    # 3.1.2 invalid messages
    "badinv01": (400, "Malformed Via"),
    "clerr": (400, "Content-Length larger"),
    "ncl": (400, "Malformed Content-Length"),
    "scalar02": (400, "Malformed CSeq"),
    "scalarlg": (400, "Malformed CSeq"),  # a response: dropped
    "quotbal": (400, "Unterminated quoted string"),
    "ltgtruri": (400, "enclosed in <>"),
    "lwsruri": (400, "Malformed Request-Line"),
    "lwsstart": (400, "Malformed Request-Line"),  # RFC: rejecting is acceptable
    "trws": (400, "Malformed Request-Line"),  # RFC: rejecting is acceptable
    "escruri": (400, "must not contain headers"),
    "baddate": None,  # RFC: a proxy that does not use Date need not reject it
    "regbadct": (400, "Malformed Contact"),
    "badaspec": (400, "Malformed To"),
    "baddn": (400, "Malformed From"),
    "badvers": (505, "Version Not Supported"),
    "mismatch01": (400, "CSeq method does not match"),
    "mismatch02": (400, "CSeq method does not match"),
    "bigcode": (400, "Malformed Status-Line"),  # a response: dropped
    # 3.2 transaction layer: a bare magic cookie falls back to RFC 2543 matching
    "badbranch": None,
    # 3.3 application layer
    "insuf": (400, "Missing To"),
    "unkscm": (416, "Unsupported URI Scheme"),
    "novelsc": (416, "Unsupported URI Scheme"),
    "unksm2": None,  # a proxy forwards it; only a registrar rejects the To scheme
    "bext01": None,  # 420 is the proxy core's answer (Proxy-Require), not a parse error
    "invut": None,
    "regaut01": None,
    "multi01": (400, "Multiple"),
    "mcl01": (400, "Multiple Content-Length"),
    "bcast": None,  # the proxy core drops it (broadcast Via), the parser must not
    "zeromf": None,  # 483 is the proxy core's answer
    "cparam01": None,
    "cparam02": None,
    "regescrt": None,
    "sdp01": None,
    # 3.4 backward compatibility
    "inv2543": None,
}


def test_every_torture_message_has_an_expectation() -> None:
    on_disk = {path.stem for path in DATA.glob("*.dat")}
    assert len(on_disk) == 49
    assert on_disk == set(EXPECTED)


def _check(data: bytes) -> None:
    msg = parse_message(data)
    if msg.is_request:
        check_request(msg)
    else:
        check_response(msg)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torture_message(name: str) -> None:
    data = (DATA / f"{name}.dat").read_bytes()
    expected = EXPECTED[name]
    if expected is None:
        _check(data)
        msg = parse_message(data)
        if name == "dblreq":
            # §3.1.1.12: the bytes after Content-Length are noise, not part of the message
            assert data.startswith(msg.serialize())
            assert msg.method == "REGISTER"
            assert data[len(msg.serialize()) :].lstrip(b"\r\n").startswith(b"INVITE ")
        else:
            assert msg.serialize() == data
    else:
        status, words = expected
        with pytest.raises(SipParseError) as caught:
            _check(data)
        assert caught.value.status == status
        assert words in caught.value.reason


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torture_message_over_a_stream_never_crashes(name: str) -> None:
    data = (DATA / f"{name}.dat").read_bytes()
    reader = SipStreamReader()
    events = []
    for i in range(0, len(data), 7):  # dribble it in, 7 bytes at a time
        events += reader.feed(data[i : i + 7])
    for event in events:
        assert isinstance(event, MessageReceived | BadMessage)


def test_wsinv_values() -> None:
    msg = parse_message((DATA / "wsinv.dat").read_bytes())
    check_request(msg)
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert not msg.top_via.is_rfc3261_branch
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.from_.display_name == '"J Rosenberg \\\\\\""'
    assert msg.max_forwards == 68
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    (contact,) = msg.contact.contacts
    assert contact.param("q") == "0.33"
    assert contact.param("newparam") == "newvalue"
    assert msg.routes[0].uri.params[0] == ("lr", None)  # type: ignore[union-attr]
    assert msg.header("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.header("subject") == ""
    assert msg.header("unknownheaderwithunusualvalue") == ";;,,;;,;"


def test_intmeth_values() -> None:
    msg = parse_message((DATA / "intmeth.dat").read_bytes())
    check_request(msg)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = msg.request_uri
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"  # type: ignore[union-attr]
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"  # type: ignore[union-attr]
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"


def test_esc02_method_is_not_unescaped() -> None:
    msg = parse_message((DATA / "esc02.dat").read_bytes())
    check_request(msg)
    assert msg.method == "RE%47IST%45R"  # §3.1.1.5: % is not an escape in a method
    # "C%6Fntact" is an unknown header, not a Contact
    assert len(msg.contact.contacts) == 2
    assert msg.header("c%6fntact") == "<sip:alias2@host2.example.com>"


def test_semiuri_user_contains_parameters() -> None:
    msg = parse_message((DATA / "semiuri.dat").read_bytes())
    uri = msg.request_uri
    assert uri.user == "user;par=u%40example.net"  # type: ignore[union-attr]
    assert uri.host == "example.com"  # type: ignore[union-attr]


def test_noreason_has_empty_reason() -> None:
    msg = parse_message((DATA / "noreason.dat").read_bytes())
    assert msg.status == 100
    assert msg.start_line.reason == ""  # type: ignore[union-attr]


def test_badbranch_falls_back_to_rfc2543_matching() -> None:
    msg = parse_message((DATA / "badbranch.dat").read_bytes())
    assert msg.top_via.branch == "z9hG4bK"
    assert not msg.top_via.is_rfc3261_branch
