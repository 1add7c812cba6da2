from __future__ import annotations

import pytest

from alg.sip import MessageEditor, SipEditError, check_request, parse_message

from .messages import SDP, invite


def test_no_edits_is_byte_identical() -> None:
    data = invite()
    assert MessageEditor(parse_message(data)).apply() == data


def test_proxy_forwarding_edits() -> None:
    msg = parse_message(invite())
    edit = MessageEditor(msg)
    edit.prepend("via", b"SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKproxy1")
    edit.prepend("record-route", b"<sip:203.0.113.1;lr>")
    edit.replace_value(msg.fields_named("max-forwards")[0], b"69")
    out = parse_message(edit.apply())
    check_request(out)
    assert [v.branch for v in out.vias] == ["z9hG4bKproxy1", "z9hG4bK776asdhds"]
    assert out.max_forwards == 69
    assert str(out.record_routes[0].uri) == "sip:203.0.113.1;lr"
    assert out.body == SDP
    # everything else untouched
    assert out.header("user-agent") == "test-phone/1.0"
    assert out.raw.endswith(SDP)


def test_body_change_recomputes_content_length() -> None:
    msg = parse_message(invite())
    edit = MessageEditor(msg)
    new_body = SDP.replace(b"10.77.0.10", b"203.0.113.1")
    edit.set_body(new_body)
    out = parse_message(edit.apply())
    assert out.body == new_body
    assert out.header("content-length") == str(len(new_body))


def test_compact_content_length_keeps_compact_name() -> None:
    data = invite().replace(b"Content-Length:", b"l:")
    edit = MessageEditor(parse_message(data))
    edit.set_body(b"")
    out = edit.apply()
    assert b"\r\nl: 0\r\n" in out
    assert parse_message(out).body == b""


def test_missing_content_length_is_added() -> None:
    data = invite().replace(b"Content-Length: " + str(len(SDP)).encode() + b"\r\n", b"")
    msg = parse_message(data)  # datagram: body is the rest
    assert msg.body == SDP
    edit = MessageEditor(msg)
    edit.set_body(b"v=0\r\n")
    out = parse_message(edit.apply())
    assert out.body == b"v=0\r\n" and out.header("content-length") == "5"


def test_set_body_with_content_type() -> None:
    msg = parse_message(invite())
    edit = MessageEditor(msg)
    edit.set_body(b"--b\r\n\r\n--b--\r\n", b"multipart/mixed;boundary=b")
    out = parse_message(edit.apply())
    assert out.content_type is not None and out.content_type.param("boundary") == "b"


def test_delete_and_request_uri() -> None:
    msg = parse_message(invite())
    edit = MessageEditor(msg)
    edit.delete_field(msg.fields_named("user-agent")[0])
    edit.set_request_uri("sip:bob@198.51.100.7:5070")
    out = parse_message(edit.apply())
    assert not out.has("user-agent")
    assert str(out.request_uri) == "sip:bob@198.51.100.7:5070"
    check_request(out)


def test_remove_first_route_value() -> None:
    data = invite().replace(
        b"Max-Forwards: 70\r\n",
        b"Max-Forwards: 70\r\nRoute: <sip:203.0.113.1;lr>, <sip:198.51.100.9;lr>\r\n"
        b"Route: <sip:198.51.100.10;lr>\r\n",
    )
    edit = MessageEditor(parse_message(data))
    edit.remove_first_value("route")
    out = parse_message(edit.apply())
    assert [str(r.uri) for r in out.routes] == ["sip:198.51.100.9;lr", "sip:198.51.100.10;lr"]
    edit = MessageEditor(out)
    edit.remove_first_value("route")
    again = parse_message(edit.apply())
    assert [str(r.uri) for r in again.routes] == ["sip:198.51.100.10;lr"]
    assert len(again.fields_named("route")) == 1


def test_overlapping_edits_are_refused() -> None:
    msg = parse_message(invite())
    field = msg.fields_named("contact")[0]
    edit = MessageEditor(msg)
    edit.replace_value(field, b"<sip:a@203.0.113.1>")
    edit.delete_field(field)
    with pytest.raises(SipEditError):
        edit.apply()


def test_insert_before_and_append_order() -> None:
    msg = parse_message(invite())
    edit = MessageEditor(msg)
    edit.append("x-first", b"1")
    edit.append("x-second", b"2")
    edit.insert_before(msg.fields_named("to")[0], "x-zero", b"0")
    out = parse_message(edit.apply())
    names = [f.name for f in out.fields]
    assert names.index("x-zero") == names.index("to") - 1
    assert names[-2:] == ["x-first", "x-second"]
