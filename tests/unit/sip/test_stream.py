from __future__ import annotations

from alg.sip import BadMessage, KeepAlivePing, MessageReceived, SipStreamReader

from .messages import SDP, invite, ok_200


def test_frames_back_to_back_messages_split_anywhere() -> None:
    stream = invite() + b"\r\n" + ok_200() + invite()
    for chunk in (1, 5, 64, len(stream)):
        reader = SipStreamReader()
        events = []
        for i in range(0, len(stream), chunk):
            events += reader.feed(stream[i : i + chunk])
        kinds = [type(e) for e in events]
        assert kinds == [MessageReceived] * 3, chunk
        assert [e.message.raw for e in events if isinstance(e, MessageReceived)] == [
            invite(),
            ok_200(),
            invite(),
        ]


def test_keepalive_ping_and_pong() -> None:
    reader = SipStreamReader()
    assert reader.feed(b"\r\n") == []
    assert reader.feed(b"\r\n") == [KeepAlivePing()]
    assert reader.feed(b"\r\n") == []  # lone CRLF (a pong) is waited on, then skipped
    events = reader.feed(invite())
    assert [type(e) for e in events] == [MessageReceived]


def test_missing_content_length_breaks_the_stream() -> None:
    reader = SipStreamReader()
    data = invite().replace(b"Content-Length", b"X-Length")
    (event,) = reader.feed(data)
    assert isinstance(event, BadMessage) and event.fatal
    assert event.error.status == 400 and "Content-Length" in event.error.reason
    assert reader.broken
    assert reader.feed(invite()) == []


def test_malformed_but_framed_message_keeps_the_stream() -> None:
    reader = SipStreamReader()
    bad = (
        invite()
        .replace(b"CSeq: 314159 INVITE", b"CSeq: x INVITE")
        .replace(b"Via: SIP/2.0/UDP", b"Via: SIP/2.0 UDP")
    )
    events = reader.feed(bad + invite())
    assert isinstance(events[0], MessageReceived)  # framing is fine; fields parse lazily
    assert isinstance(events[1], MessageReceived)
    broken_line = b"INVITE  sip:x SIP/2.0"
    events = reader.feed(invite().replace(b"INVITE sip:bob@203.0.113.20 SIP/2.0", broken_line))
    assert isinstance(events[0], BadMessage) and not events[0].fatal
    assert not reader.broken


def test_oversized_header_block_is_refused() -> None:
    reader = SipStreamReader(max_size=1000)
    (event,) = reader.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"a" * 2000)
    assert isinstance(event, BadMessage) and event.fatal and event.error.status == 413


def test_oversized_body_is_refused_before_it_arrives() -> None:
    reader = SipStreamReader(max_size=2000)
    head, _, _ = invite().partition(b"\r\n\r\n")
    head = head.replace(b"Content-Length: " + str(len(SDP)).encode(), b"Content-Length: 99999")
    assert b"99999" in head
    (event,) = reader.feed(head + b"\r\n\r\n")
    assert isinstance(event, BadMessage) and event.error.status == 413
