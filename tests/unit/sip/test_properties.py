"""Property tests of the SIP core (Hypothesis).

* an unedited parse → serialize is the identity;
* random and mutated bytes raise nothing but SipParseError, whatever is asked of the
  message afterwards (every lazy view, the proxy checks, SDP lookup, the stream framer);
* an edit followed by a re-parse yields the intended value and leaves the rest alone.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alg.sip import (
    MessageEditor,
    SipMessage,
    SipParseError,
    SipStreamReader,
    check_request,
    check_response,
    find_sdp,
    parse_message,
)

from .messages import invite, ok_200

CORPUS = [
    p.read_bytes() for p in sorted((Path(__file__).parents[2] / "data" / "rfc4475").glob("*.dat"))
]
CORPUS += [invite(), ok_200()]

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
VALUE_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=40
)


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    name = draw(TOKEN)
    spacing = draw(st.sampled_from(["", " ", "  ", "\t"]))
    words = draw(st.lists(VALUE_TEXT.filter(bool), min_size=0, max_size=4))
    separator = draw(st.sampled_from([" ", "\r\n ", "\r\n\t", "  "]))
    return f"{name}{spacing}: {separator.join(words)}".encode()


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        start = f"{draw(TOKEN)} sip:{draw(TOKEN)}@example.com SIP/2.0".encode()
    else:
        start = f"SIP/2.0 {draw(st.integers(100, 699))} {draw(VALUE_TEXT)}".encode()
    lines = draw(st.lists(header_lines(), max_size=12))
    body = draw(st.binary(max_size=200))
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return start + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body


@given(messages())
def test_unedited_round_trip_is_identity(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError:
        return  # a generated header name can collide with a compact form (e.g. "l")
    assert msg.serialize() == data
    assert MessageEditor(msg).apply() == data


@given(st.lists(header_lines(), min_size=1, max_size=8), st.binary(max_size=100))
def test_header_values_are_recovered_unfolded(lines: list[bytes], body: bytes) -> None:
    lines = [
        line
        for line in lines
        if line.split(b":")[0].strip().lower() not in {b"l", b"content-length"}
    ]
    data = (
        b"OPTIONS sip:a@example.com SIP/2.0\r\n"
        + b"".join(line + b"\r\n" for line in lines)
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    msg = parse_message(data)
    assert msg.body == body
    for line, field in zip(lines, msg.fields, strict=False):
        expected = b" ".join(line.split(b":", 1)[1].replace(b"\r\n", b" ").split())
        got = b" ".join(msg.field_value(field).split())
        assert got == expected


def exercise(msg: SipMessage) -> None:
    """Ask every question of a message that the proxy may ask."""
    if msg.is_request:
        check_request(msg)
    else:
        check_response(msg)
    for view in (
        "vias",
        "cseq",
        "call_id",
        "from_",
        "to",
        "max_forwards",
        "contact",
        "routes",
        "record_routes",
        "content_type",
    ):
        getattr(msg, view)
    if msg.is_request:
        msg.request_uri  # noqa: B018
    msg.token_list("require", "Require")
    msg.token_list("proxy-require", "Proxy-Require")
    find_sdp(msg)
    _ = [(v.branch, v.received, v.rport, v.maddr, v.sent_by) for v in msg.vias]


def only_parse_errors(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert 400 <= exc.status <= 599
        return
    try:
        exercise(msg)
    except SipParseError as exc:
        assert exc.status in {400, 413, 416, 505}
    reader = SipStreamReader()
    reader.feed(data)


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    only_parse_errors(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(
                st.sampled_from(
                    [
                        b";",
                        b",",
                        b"<",
                        b">",
                        b'"',
                        b"\\",
                        b" ",
                        b"\r\n",
                        b"\r\n ",
                        b":",
                        b"[",
                        b"]",
                        b"@",
                        b"\x00",
                        b"\xff",
                        b"%",
                        b"=",
                    ]
                )
            )
        elif kind == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "dup" and data:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 40))]
    return bytes(data)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_raise_only_parse_errors(data: bytes) -> None:
    only_parse_errors(data)


@given(
    branch=TOKEN,
    max_forwards=st.integers(0, 255),
    body=st.binary(max_size=300),
    contact_user=TOKEN,
)
def test_edit_then_reparse_gives_intended_values(
    branch: str, max_forwards: int, body: bytes, contact_user: str
) -> None:
    msg = parse_message(invite())
    edit = MessageEditor(msg)
    via = f"SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bK{branch}".encode()
    edit.prepend("via", via)
    edit.replace_value(msg.fields_named("max-forwards")[0], str(max_forwards).encode())
    edit.replace_value(msg.fields_named("contact")[0], f"<sip:{contact_user}@203.0.113.1>".encode())
    edit.set_body(body)
    out = parse_message(edit.apply())
    check_request(out)
    assert out.top_via.branch == f"z9hG4bK{branch}"
    assert out.vias[1] == msg.vias[0]
    assert out.max_forwards == max_forwards
    assert out.contact.contacts[0].uri.user == contact_user  # type: ignore[union-attr]
    assert out.body == body
    # untouched fields are byte-identical
    for name in ("to", "from", "call-id", "cseq", "allow", "supported", "user-agent"):
        assert out.header_values(name) == msg.header_values(name)
