"""Realistic messages shared by the SIP tests and benchmarks."""

from __future__ import annotations

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 10.77.0.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 10.77.0.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=sendrecv\r\n"
)


def invite(sdp: bytes = SDP, content_type: bytes = b"application/sdp") -> bytes:
    head = (
        b"INVITE sip:bob@203.0.113.20 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: Bob <sip:bob@example.net>\r\n"
        b"From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@10.77.0.10\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Contact: <sip:alice@10.77.0.10:5060;transport=udp>\r\n"
        b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK\r\n"
        b"Supported: replaces, timer, 100rel\r\n"
        b"User-Agent: test-phone/1.0\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(sdp)).encode() + b"\r\n\r\n"
    )
    return head + sdp


def ok_200(sdp: bytes = SDP) -> bytes:
    head = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKnashds8;received=203.0.113.1\r\n"
        b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK776asdhds;rport=5060;"
        b"received=10.77.0.10\r\n"
        b"Record-Route: <sip:203.0.113.1;lr>\r\n"
        b"To: Bob <sip:bob@example.net>;tag=a6c85cf\r\n"
        b"From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@10.77.0.10\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Contact: <sip:bob@203.0.113.20:5060>\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: " + str(len(sdp)).encode() + b"\r\n\r\n"
    )
    return head + sdp
