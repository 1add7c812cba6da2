"""Lossless, sans-I/O SIP (RFC 3261) parsing and editing.

    msg = parse_message(datagram)          # frames + splits; fields parsed lazily
    check_request(msg)                     # what a proxy must verify, SipParseError(status)
    msg.top_via.branch, msg.cseq, msg.to.tag, msg.request_uri, find_sdp(msg) ...
    edit = MessageEditor(msg)
    edit.prepend("via", b"SIP/2.0/UDP 203.0.113.1;branch=z9hG4bK...")
    edit.set_body(new_sdp)                 # Content-Length follows
    wire = edit.apply()                    # unedited parts byte-identical

`SipStreamReader` frames messages on TCP. Every error is an `alg.errors.SipParseError`.
"""

from alg.errors import SipParseError
from alg.sip.edit import MessageEditor, SipEditError
from alg.sip.headers import ContactList, CSeq, MediaType, NameAddress, Via
from alg.sip.message import (
    DEFAULT_MAX_SIZE,
    HeaderField,
    RequestLine,
    SipMessage,
    StatusLine,
    parse_message,
)
from alg.sip.multipart import SdpLocation, find_sdp
from alg.sip.stream import (
    BadMessage,
    KeepAlivePing,
    MessageReceived,
    SipStreamReader,
    StreamEvent,
)
from alg.sip.uri import (
    AbsoluteUri,
    SipUri,
    TelUri,
    Uri,
    address_port,
    is_ip_literal,
    parse_uri,
)
from alg.sip.validate import check_request, check_response

__all__ = [
    "DEFAULT_MAX_SIZE",
    "AbsoluteUri",
    "BadMessage",
    "CSeq",
    "ContactList",
    "HeaderField",
    "KeepAlivePing",
    "MediaType",
    "MessageEditor",
    "MessageReceived",
    "NameAddress",
    "RequestLine",
    "SdpLocation",
    "SipEditError",
    "SipMessage",
    "SipParseError",
    "SipStreamReader",
    "SipUri",
    "StatusLine",
    "StreamEvent",
    "TelUri",
    "Uri",
    "Via",
    "check_request",
    "check_response",
    "find_sdp",
    "is_ip_literal",
    "parse_message",
    "parse_uri",
    "address_port",
]
