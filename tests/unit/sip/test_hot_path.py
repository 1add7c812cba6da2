"""The shortcuts the proxy's hot path takes (issue #4) agree with the general code.

* `split_commas` without quotes walks the pieces between commas instead of every
  character: it must split exactly where the character walk does;
* whole From/To/Via values are memoized: a memoized value equals a fresh parse, and a
  malformed one still fails every time, naming the right header;
* a parsed message keeps its field spans and index in tuples the garbage collector can
  stop tracking (a transaction keeps its request up to 32 s);
* `SipMessage.derived` computes a value once per message.
"""

from __future__ import annotations

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.sip import SipParseError, parse_message
from alg.sip import headers as h

from .messages import invite, ok_200


def _walk(value: str) -> list[str]:
    """The specification: a character walk that splits at commas outside quotes and
    outside <...> (RFC 3261 §7.3.1)."""
    parts: list[str] = []
    start = 0
    in_quotes = in_angle = False
    i = 0
    while i < len(value):
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    parts.append(value[start:].strip(" \t"))
    return parts


@given(st.text(alphabet="<>,; \tab:@=", max_size=40))
def test_unquoted_comma_split_matches_the_character_walk(value: str) -> None:
    assert h.split_commas(value) == _walk(value)


@given(st.text(alphabet='<>,; ab"\\', max_size=30))
def test_quoted_comma_split_matches_the_character_walk(value: str) -> None:
    assert h.split_commas(value) == _walk(value)


def test_route_list_with_commas_inside_a_uri_splits_between_entries() -> None:
    value = "<sip:a@x;lr>, <sip:b@y?subject=a,b>,<sip:c@z>"
    assert h.split_commas(value) == ["<sip:a@x;lr>", "<sip:b@y?subject=a,b>", "<sip:c@z>"]


def test_memoized_name_address_equals_a_fresh_parse() -> None:
    text = "Alice <sip:alice@example.com;transport=udp>;tag=memo-1"
    first = h.parse_name_address(text, "From")
    again = h.parse_name_address(text, "To")  # the same text in another header
    fresh = h._parse_name_address(text, "From")  # the uncached parse
    assert first is again and first == fresh
    assert (first.tag, str(first.uri)) == ("memo-1", "sip:alice@example.com;transport=udp")


def test_a_malformed_value_fails_every_time_with_its_header_name() -> None:
    bad = "Alice <sip:alice@example.com"  # no closing '>'
    with pytest.raises(SipParseError, match="Malformed From header"):
        h.parse_name_address(bad, "From")
    with pytest.raises(SipParseError, match="Malformed To header"):
        h.parse_name_address(bad, "To")


def test_memoized_via_equals_a_fresh_parse_and_bad_vias_still_fail() -> None:
    text = "SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-memo;received=10.0.0.1;rport=5070"
    assert h.parse_via(text) == h._parse_via(text)
    assert h.parse_via(text) is h.parse_via(text)
    assert h.parse_via_list(f"{text}, {text}") == [h._parse_via(text)] * 2
    for _ in range(2):
        with pytest.raises(SipParseError, match="Malformed Via header"):
            h.parse_via("SIP/2.0/UDP 10.77.0.10;rport=99999")


def test_spans_and_index_are_left_untracked_by_the_collector() -> None:
    msg = parse_message(invite())
    msg.vias  # noqa: B018  (views are cached next to them)
    # one pass untracks the tuples of atoms, the next the tuple holding them
    gc.collect()
    gc.collect()
    assert all(isinstance(positions, tuple) for positions in msg.index.values())
    assert not any(gc.is_tracked(positions) for positions in msg.index.values())
    assert not gc.is_tracked(msg.index)
    spans = msg._spans  # what it keeps, not the NamedTuple view
    assert isinstance(spans, tuple) and not gc.is_tracked(spans)


def test_duplicate_content_length_must_agree() -> None:
    data = ok_200()
    body = parse_message(data).body
    same = data.replace(b"\r\n\r\n", b"\r\nl: %d\r\n\r\n" % len(body), 1)
    assert parse_message(same).body == body
    differing = data.replace(b"\r\n\r\n", b"\r\nl: %d\r\n\r\n" % (len(body) - 1), 1)
    with pytest.raises(SipParseError, match="Multiple Content-Length"):
        parse_message(differing)


def test_derived_values_are_computed_once_per_message() -> None:
    msg = parse_message(invite())
    calls: list[str] = []

    def compute(m: object) -> str:
        calls.append("x")
        return f"{len(calls)}"

    assert msg.derived("test.key", compute) == "1"
    assert msg.derived("test.key", compute) == "1"
    assert calls == ["x"]
    assert parse_message(invite()).derived("test.key", compute) == "2"  # per message


def test_remembered_start_lines_and_cseq_equal_fresh_parses() -> None:
    first, again = parse_message(ok_200()), parse_message(ok_200())
    assert first.start_line is again.start_line  # the same immutable value
    assert (first.status, first.start_line.reason) == (200, "OK")  # type: ignore[union-attr]
    assert first.cseq is again.cseq and first.cseq == h._parse_cseq(first.header("cseq") or "")


@pytest.mark.parametrize(
    ("line", "status"),
    [(b"INVITE  sip:bob@example.net SIP/2.0", 400), (b"SIP/3.0 200 OK", 505)],
)
def test_a_bad_start_line_fails_every_time(line: bytes, status: int) -> None:
    data = line + b"\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"
    for _ in range(2):
        with pytest.raises(SipParseError) as caught:
            parse_message(data)
        assert caught.value.status == status
