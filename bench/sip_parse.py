"""SIP hot path: parse, check, rewrite and serialize an INVITE with SDP and a 200 OK.

The headline is the conservative full path: besides what the rewrite reads, the proxy
validates every header it relies on (the whole Via chain, CSeq, From/To, Call-ID,
Request-URI, Contact, Content-Type). The line "parse + rewrite + serialize (views used
only)" is the narrower definition, without those extra checks.

What the ALG does to every INVITE it forwards from the inside to the outside:
parse, run the proxy checks (Via, CSeq, Call-ID, From/To, Max-Forwards, R-URI, Contact),
add its Via and Record-Route, lower Max-Forwards, mask the Contact, anchor the SDP (c=,
o=, m= port, a=rtcp, strip ICE) and serialize. For the 200 OK: parse, check, pop our Via,
mask Contact, anchor the SDP, serialize.

Each figure is the median over several rounds of the mean CPU time (process time, so
other load on the machine does not inflate it) per message, on one core,
with the garbage collector on as in the proxy. Last line: the headline figure.
Run: .venv/bin/python bench/sip_parse.py
"""

from __future__ import annotations

import ipaddress
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alg.sdp import AnchorPlan, MediaAnchor, anchor, parse_sdp
from alg.sip import (
    MessageEditor,
    SipMessage,
    check_request,
    check_response,
    find_sdp,
    parse_message,
)

PHONES = 500  # distinct phones: their URIs and Contacts recur, as on a real edge
POOL = 4096  # distinct calls: Call-ID, tags, branch, CSeq and ports are all unique


def make_sdp(user: str, address: str, port: int) -> bytes:
    return (
        f"v=0\r\n"
        f"o={user} 2890844526 2890844526 IN IP4 {address}\r\n"
        f"s=-\r\n"
        f"c=IN IP4 {address}\r\n"
        f"t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 101\r\n"
        f"a=rtpmap:0 PCMU/8000\r\n"
        f"a=rtpmap:8 PCMA/8000\r\n"
        f"a=rtpmap:101 telephone-event/8000\r\n"
        f"a=fmtp:101 0-16\r\n"
        f"a=ptime:20\r\n"
        f"a=sendrecv\r\n"
    ).encode()


def make_invite(call: int) -> bytes:
    phone = call % PHONES
    user, address = f"alice{phone}", f"10.77.{phone // 250}.{phone % 250 + 2}"
    sdp = make_sdp(user, address, 10000 + 2 * (call % 20000))
    return (
        f"INVITE sip:bob{call % 997}@example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {address}:5060;branch=z9hG4bK{call:08x}a1;rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"To: Bob <sip:bob{call % 997}@example.net>\r\n"
        f"From: Alice <sip:{user}@example.com>;tag={call * 7919:x}\r\n"
        f"Call-ID: {call:08x}-4c76e66710@{address}\r\n"
        f"CSeq: {call + 1} INVITE\r\n"
        f"Contact: <sip:{user}@{address}:5060;transport=udp>\r\n"
        f"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, REFER, NOTIFY\r\n"
        f"Supported: replaces, timer, 100rel\r\n"
        f"User-Agent: baresip v1.0.0 (x86_64/linux)\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n"
    ).encode() + sdp


def make_200(call: int) -> bytes:
    phone = call % PHONES
    user, address = f"alice{phone}", f"10.77.{phone // 250}.{phone % 250 + 2}"
    callee = f"bob{call % 997}"
    sdp = make_sdp(callee, f"198.51.100.{call % 200 + 20}", 20000 + 2 * (call % 10000))
    return (
        f"SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKsw{call:08x};rport=5060\r\n"
        f"Via: SIP/2.0/UDP {address}:5060;branch=z9hG4bK{call:08x}a1;rport=5060;"
        f"received={address}\r\n"
        f"Record-Route: <sip:203.0.113.1;lr>\r\n"
        f"To: Bob <sip:{callee}@example.net>;tag={call * 104729:x}\r\n"
        f"From: Alice <sip:{user}@example.com>;tag={call * 7919:x}\r\n"
        f"Call-ID: {call:08x}-4c76e66710@{address}\r\n"
        f"CSeq: {call + 1} INVITE\r\n"
        f"Contact: <sip:{callee}@198.51.100.{call % 200 + 20}:5060>\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n"
    ).encode() + sdp


INVITES = [make_invite(call) for call in range(POOL)]
OKS = [make_200(call) for call in range(POOL)]
SDPS = [parse_message(data).body for data in INVITES]

PUBLIC = ipaddress.IPv4Address("203.0.113.1")
PRIVATE = ipaddress.IPv4Address("10.77.0.1")
PLAN_OUT = AnchorPlan(
    media={0: MediaAnchor(PUBLIC, 40000, 40001)}, origin_address=PUBLIC, strip_ice=True
)
PLAN_IN = AnchorPlan(
    media={0: MediaAnchor(PRIVATE, 40002, 40003)}, origin_address=PRIVATE, strip_ice=True
)


def edit_invite(msg: SipMessage) -> MessageEditor:
    """The ALG's rewrite of a checked INVITE: every edit recorded, nothing serialized."""
    edit = MessageEditor(msg)
    edit.prepend("via", b"SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKsw1a2b3c;rport")
    edit.prepend("record-route", b"<sip:203.0.113.1;lr>")
    edit.prepend("record-route", b"<sip:10.77.0.1;lr>")  # RFC 5658 double Record-Route
    max_forwards = msg.max_forwards
    edit.replace_value(msg.fields_named("max-forwards")[0], str((max_forwards or 70) - 1).encode())
    edit.replace_value(msg.fields_named("contact")[0], b"<sip:alice-x7f3@203.0.113.1:5060>")
    location = find_sdp(msg)
    if location is not None:
        sdp = anchor(parse_sdp(location.extract(msg.body)), PLAN_OUT)
        edit.set_body(location.replace(msg.body, sdp.to_bytes()))
    return edit


def edit_200(msg: SipMessage) -> MessageEditor:
    edit = MessageEditor(msg)
    edit.remove_first_value("via")
    edit.replace_value(msg.fields_named("contact")[0], b"<sip:bob-a91c@10.77.0.1:5060>")
    location = find_sdp(msg)
    if location is not None:
        sdp = anchor(parse_sdp(location.extract(msg.body)), PLAN_IN)
        edit.set_body(location.replace(msg.body, sdp.to_bytes()))
    return edit


def rewrite_invite(data: bytes) -> bytes:
    msg = parse_message(data)
    check_request(msg)
    return edit_invite(msg).apply()


def rewrite_200(data: bytes) -> bytes:
    msg = parse_message(data)
    check_response(msg)
    return edit_200(msg).apply()


def checked(messages: list[bytes], check: Callable[[SipMessage], None]) -> list[SipMessage]:
    parsed = [parse_message(data) for data in messages]
    for msg in parsed:
        check(msg)
    return parsed


def measure(
    label: str, operation: Callable[[Any], object], inputs: list[Any], rounds: int = 7
) -> float:
    for data in inputs[:100]:
        operation(data)  # warm up (regex compile, name cache)
    per_op = []
    for _ in range(rounds):
        start = time.process_time_ns()
        for data in inputs:
            operation(data)
        per_op.append((time.process_time_ns() - start) / len(inputs) / 1000)
    value = statistics.median(per_op)
    print(f"{label:<56}{value:8.2f} us")
    return value


def main() -> None:
    # sanity: the rewrites do what they claim before we time them
    out = parse_message(rewrite_invite(INVITES[3]))
    assert b"10.77." not in out.body and b"203.0.113.1" in out.body
    assert out.max_forwards == 69 and out.top_via.branch == "z9hG4bKsw1a2b3c"
    back = parse_message(rewrite_200(OKS[3]))
    assert len(back.vias) == 1 and b"IN IP4 10.77.0.1\r\n" in back.body

    print(
        f"{POOL} distinct calls from {PHONES} phones; INVITE ~{len(INVITES[0])} bytes, "
        f"200 OK ~{len(OKS[0])} bytes; Python {sys.version.split()[0]}; per message:"
    )
    invites, oks = checked(INVITES, check_request), checked(OKS, check_response)
    for name, messages, parsed, check, edit in (
        ("INVITE", INVITES, invites, check_request, edit_invite),
        ("200 OK", OKS, oks, check_response, edit_200),
    ):
        parse = measure(f"{name} parse (frame + header spans)", parse_message, messages)
        measure(f"{name} parse + proxy checks", lambda d, c=check: c(parse_message(d)), messages)
        # the rewrite runs on a fresh parse each time, so that the lazy views it needs
        # are paid for; the rewrite alone is the difference
        both = measure(
            f"{name} parse + rewrite (Via, RR, Max-Forwards, Contact, SDP)",
            lambda m, e=edit: e(parse_message(m.raw)),
            parsed,
        )
        print(f"{name + ' rewrite alone (difference)':<56}{both - parse:8.2f} us")
        editors = [edit(msg) for msg in parsed]
        measure(f"{name} serialize (apply the edits)", MessageEditor.apply, editors)
    measure(
        "SDP parse + anchor + serialize (alone)",
        lambda s: anchor(parse_sdp(s), PLAN_OUT).to_bytes(),
        SDPS,
    )
    measure(
        "INVITE parse + rewrite + serialize (views used only)",
        lambda d: edit_invite(parse_message(d)).apply(),
        INVITES,
    )
    measure("200 OK parse + checks + rewrite + serialize", rewrite_200, OKS)
    headline = measure("INVITE parse + checks + rewrite + serialize", rewrite_invite, INVITES)
    print(f"sip_invite_parse_rewrite_serialize: {headline:.1f} us")


if __name__ == "__main__":
    main()
