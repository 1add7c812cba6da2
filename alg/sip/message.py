"""Lossless SIP messages: the original bytes plus the span of every part (RFC 3261 §7).

Theory of operation
-------------------
`parse_message` does the minimum a proxy always needs, in one pass over the header
block: it finds the start line, cuts the header block into fields (one `HeaderField` per
field line, folded continuation lines included) and frames the body by Content-Length.
It copies nothing but the short field names; values stay as offsets into `raw`.

Everything else is lazy: `SipMessage.via`, `.cseq`, `.from_` and friends parse their
field on first use and cache the result (a message is immutable, so the cache is too).
Changing a message never mutates it: `alg.sip.edit.MessageEditor` records span edits and
produces new bytes, and an unedited message serialises to exactly its original bytes.

Errors are `SipParseError` with the status a server answers (400, 413, 505) and a reason
phrase that names the fault. No input can raise anything else (property-tested).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeVar

from alg.errors import SipParseError
from alg.sip import headers as h
from alg.sip.uri import TOKEN_CHARS, Uri, parse_uri

T = TypeVar("T")

DEFAULT_MAX_SIZE: Final = 65_535
_METHOD_RE: Final = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+")

# Compact forms (RFC 3261 §7.3.3 and the extensions that define one).
COMPACT_FORMS: Final[dict[str, str]] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "r": "refer-to",  # RFC 3515
    "b": "referred-by",  # RFC 3892
    "o": "event",  # RFC 6665
    "u": "allow-events",  # RFC 6665
    "x": "session-expires",  # RFC 4028
    "a": "accept-contact",  # RFC 3841
    "j": "reject-contact",  # RFC 3841
    "d": "request-disposition",  # RFC 3841
    "y": "identity",  # RFC 8224
}

# Field names seen on the wire → canonical lower-case name. Filled lazily; bounded so a
# flood of distinct unknown names cannot grow it without limit.
_NAME_CACHE: dict[bytes, str] = {}
_NAME_CACHE_LIMIT: Final = 4096

# Headers that may appear once only (§20; RFC 4475 §3.3.8 multi01, §3.3.9 mcl01).
SINGLE_VALUED: Final = (
    "call-id",
    "cseq",
    "from",
    "to",
    "max-forwards",
    "content-length",
    "content-type",
)


def canonical_name(raw_name: bytes) -> str:
    """Canonical lower-case header name for a field name as written (compact expanded)."""
    cached = _NAME_CACHE.get(raw_name)
    if cached is not None:
        return cached
    stripped = raw_name.rstrip(b" \t")
    if not stripped or not TOKEN_CHARS.issuperset(stripped):
        raise SipParseError(400, "Malformed header field name")
    lowered = stripped.decode("ascii").lower()
    name = COMPACT_FORMS.get(lowered, lowered)
    if len(_NAME_CACHE) < _NAME_CACHE_LIMIT:
        _NAME_CACHE[raw_name] = name
    return name


def decode_text(value: bytes) -> str:
    """Header text as str; UTF-8 (§7.3.1 TEXT-UTF8) with undecodable bytes preserved."""
    return value.decode("utf-8", "surrogateescape")


Span = tuple[str, int, int, int, bool]


class HeaderField(NamedTuple):
    """One header field line. Offsets index `SipMessage.raw`:

    `line_start`..`line_end` is the whole field (name, colon, value, continuation lines)
    without its final CRLF; `value_start`..`line_end` is the raw value, which for a
    folded field (`folded`) contains CRLF + whitespace (§7.3.1)."""

    name: str
    line_start: int
    value_start: int
    line_end: int
    folded: bool


@dataclass(frozen=True, slots=True)
class RequestLine:
    method: str
    uri_text: str
    version: str


@dataclass(frozen=True, slots=True)
class StatusLine:
    version: str
    status: int
    reason: str


class SipMessage:
    """A parsed SIP request or response over its original bytes (immutable)."""

    __slots__ = (
        "_cache",
        "_spans",
        "body_end",
        "body_start",
        "headers_end",
        "headers_start",
        "index",
        "raw",
        "start_line",
    )

    def __init__(  # noqa: PLR0917
        self,
        raw: bytes,
        start_line: RequestLine | StatusLine,
        spans: list[Span],
        index: dict[str, tuple[int, ...]],
        headers_start: int,
        headers_end: int,
        body_start: int,
        body_end: int,
    ) -> None:
        self.raw = raw
        self.start_line = start_line
        # HeaderField-shaped plain tuples (3x cheaper to build than NamedTuples). Tuples
        # of tuples of atoms, like the index's tuples of ints, are untracked by the
        # garbage collector: a message kept by a transaction for 32 s (Timer J, L) adds
        # no container the collector scans again and again.
        self._spans = tuple(spans)
        self.index = index
        self.headers_start = headers_start  # offset of the first header field line
        self.headers_end = headers_end  # offset of the empty line's CRLF
        self.body_start = body_start
        self.body_end = body_end
        # Parsed views, filled on first use. A plain dict rather than cached_property:
        # in Python 3.11 cached_property takes a lock on every first access.
        self._cache: dict[str, object] = {}

    # --- basic views ---------------------------------------------------------------

    @property
    def is_request(self) -> bool:
        return isinstance(self.start_line, RequestLine)

    @property
    def method(self) -> str:
        """Request method, or the CSeq method of a response."""
        if isinstance(self.start_line, RequestLine):
            return self.start_line.method
        return self.cseq.method

    @property
    def status(self) -> int:
        if isinstance(self.start_line, StatusLine):
            return self.start_line.status
        raise AttributeError("a request has no status")

    @property
    def body(self) -> bytes:
        return self.raw[self.body_start : self.body_end]

    def serialize(self) -> bytes:
        """The message bytes (exactly those parsed; trailing datagram junk excluded)."""
        return self.raw

    def __repr__(self) -> str:
        line = self.start_line
        if isinstance(line, RequestLine):
            return f"<SipMessage {line.method} {line.uri_text}>"
        return f"<SipMessage {line.status} {line.reason}>"

    # --- raw header access ---------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.index

    @property
    def fields(self) -> tuple[HeaderField, ...]:
        """Every header field, in order."""
        return tuple(HeaderField._make(span) for span in self._spans)

    @property
    def spans(self) -> tuple[Span, ...]:
        """Every header field as its plain tuple (HeaderField's order), for scans that look
        at every field and act on few: no NamedTuple built per field (`field_at` builds
        one for a position)."""
        return self._spans

    def field_at(self, position: int) -> HeaderField:
        return HeaderField._make(self._spans[position])

    def fields_named(self, name: str) -> list[HeaderField]:
        return [HeaderField._make(self._spans[i]) for i in self.index.get(name, ())]

    def field_value(self, field: HeaderField | Span) -> bytes:
        """The value of a field, unfolded and without surrounding whitespace."""
        _, _, value_start, line_end, folded = field
        value = self.raw[value_start:line_end]
        if folded:
            value = b" ".join(part.strip(b" \t") for part in value.split(b"\r\n"))
        return value.strip(b" \t")

    def header(self, name: str) -> str | None:
        """Text value of the first field with this (canonical, lower-case) name."""
        positions = self.index.get(name)
        if not positions:
            return None
        return decode_text(self.field_value(self._spans[positions[0]]))

    def header_values(self, name: str) -> list[str]:
        """Text values of all fields with this name, in order (not comma-split)."""
        spans = self._spans
        return [decode_text(self.field_value(spans[i])) for i in self.index.get(name, ())]

    def _text(self, position: int) -> str:
        """`decode_text(field_value(...))` of one field, inlined for the unfolded case:
        every typed view of every message comes through here."""
        _, _, value_start, line_end, folded = self._spans[position]
        if folded:
            return decode_text(self.field_value(self._spans[position]))
        return self.raw[value_start:line_end].strip(b" \t").decode("utf-8", "surrogateescape")

    def _single(self, name: str, display: str) -> str:
        positions = self.index.get(name)
        if not positions:
            raise SipParseError(400, f"Missing {display} header")
        if len(positions) > 1:
            raise SipParseError(400, f"Multiple {display} headers")
        return self._text(positions[0])

    def _joined(self, name: str) -> str:
        """All values of a list header, as one comma-separated value (§7.3.1)."""
        positions = self.index.get(name)
        if not positions:
            return ""
        if len(positions) == 1:
            return self._text(positions[0])
        return ",".join([self._text(position) for position in positions])

    # --- typed, lazily parsed views ------------------------------------------------

    @property
    def vias(self) -> tuple[h.Via, ...]:
        cache = self._cache
        if "vias" in cache:
            return cache["vias"]  # type: ignore[return-value]
        value = self._parse_vias()
        cache["vias"] = value
        return value

    def _parse_vias(self) -> tuple[h.Via, ...]:
        if "via" not in self.index:
            raise SipParseError(400, "Missing Via header")
        return h.parse_via_tuple(self._joined("via"))

    @property
    def top_via(self) -> h.Via:
        return self.vias[0]

    @property
    def cseq(self) -> h.CSeq:
        cache = self._cache
        if "cseq" in cache:
            return cache["cseq"]  # type: ignore[return-value]
        value = self._parse_cseq()
        cache["cseq"] = value
        return value

    def _parse_cseq(self) -> h.CSeq:
        return h.parse_cseq(self._single("cseq", "CSeq"))

    @property
    def call_id(self) -> str:
        cache = self._cache
        if "call_id" in cache:
            return cache["call_id"]  # type: ignore[return-value]
        value = self._parse_call_id()
        cache["call_id"] = value
        return value

    def _parse_call_id(self) -> str:
        return h.parse_call_id(self._single("call-id", "Call-ID"))

    @property
    def from_(self) -> h.NameAddress:
        cache = self._cache
        if "from_" in cache:
            return cache["from_"]  # type: ignore[return-value]
        value = self._parse_from_()
        cache["from_"] = value
        return value

    def _parse_from_(self) -> h.NameAddress:
        return h.parse_name_address(self._single("from", "From"), "From")

    @property
    def to(self) -> h.NameAddress:
        cache = self._cache
        if "to" in cache:
            return cache["to"]  # type: ignore[return-value]
        value = self._parse_to()
        cache["to"] = value
        return value

    def _parse_to(self) -> h.NameAddress:
        return h.parse_name_address(self._single("to", "To"), "To")

    @property
    def max_forwards(self) -> int | None:
        cache = self._cache
        if "max_forwards" in cache:
            return cache["max_forwards"]  # type: ignore[return-value]
        value = self._parse_max_forwards()
        cache["max_forwards"] = value
        return value

    def _parse_max_forwards(self) -> int | None:
        if "max-forwards" not in self.index:
            return None
        return h.parse_uint(self._single("max-forwards", "Max-Forwards"), "Max-Forwards", 255)

    @property
    def contact(self) -> h.ContactList:
        cache = self._cache
        if "contact" in cache:
            return cache["contact"]  # type: ignore[return-value]
        value = self._parse_contact()
        cache["contact"] = value
        return value

    def _parse_contact(self) -> h.ContactList:
        if "contact" not in self.index:
            return h.ContactList(False, ())
        return h.parse_contacts(self._joined("contact"))

    @property
    def routes(self) -> tuple[h.NameAddress, ...]:
        cache = self._cache
        if "routes" in cache:
            return cache["routes"]  # type: ignore[return-value]
        value = self._parse_routes()
        cache["routes"] = value
        return value

    def _parse_routes(self) -> tuple[h.NameAddress, ...]:
        if "route" not in self.index:
            return ()
        return tuple(h.parse_name_address_list(self._joined("route"), "Route"))

    @property
    def record_routes(self) -> tuple[h.NameAddress, ...]:
        cache = self._cache
        if "record_routes" in cache:
            return cache["record_routes"]  # type: ignore[return-value]
        value = self._parse_record_routes()
        cache["record_routes"] = value
        return value

    def _parse_record_routes(self) -> tuple[h.NameAddress, ...]:
        if "record-route" not in self.index:
            return ()
        return tuple(h.parse_name_address_list(self._joined("record-route"), "Record-Route"))

    @property
    def content_type(self) -> h.MediaType | None:
        cache = self._cache
        if "content_type" in cache:
            return cache["content_type"]  # type: ignore[return-value]
        value = self._parse_content_type()
        cache["content_type"] = value
        return value

    def _parse_content_type(self) -> h.MediaType | None:
        if "content-type" not in self.index:
            return None
        return h.parse_media_type(self._single("content-type", "Content-Type"))

    @property
    def request_uri(self) -> Uri:
        cache = self._cache
        if "request_uri" in cache:
            return cache["request_uri"]  # type: ignore[return-value]
        value = self._parse_request_uri()
        cache["request_uri"] = value
        return value

    def _parse_request_uri(self) -> Uri:
        line = self.start_line
        if not isinstance(line, RequestLine):
            raise AttributeError("a response has no Request-URI")  # noqa: TRY004
        return parse_uri(line.uri_text)

    def derived(self, key: str, compute: Callable[[SipMessage], T]) -> T:
        """A value computed from this message once and kept with its parsed views (e.g.
        the proxy's loop-detection hash, needed for the check and again for the branch)."""
        cache = self._cache
        if key in cache:
            return cache[key]  # type: ignore[return-value]
        value = compute(self)
        cache[key] = value
        return value

    def token_list(self, name: str, display: str) -> tuple[str, ...]:
        if name not in self.index:
            return ()
        return h.parse_token_list(self._joined(name), display)


# --- parsing ------------------------------------------------------------------------


def _parse_request_line(line: bytes) -> RequestLine:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        # RFC 4475 §3.1.2.8-10 (lwsruri, lwsstart, trws): exactly one SP between elements.
        raise SipParseError(400, "Malformed Request-Line")
    method, uri, version = parts
    if _METHOD_RE.fullmatch(method) is None:
        raise SipParseError(400, "Malformed method")
    _check_version(version)
    if uri.startswith(b"<"):
        raise SipParseError(400, "Request-URI must not be enclosed in <>")  # RFC 4475 §3.1.2.7
    try:
        uri_text = uri.decode("ascii")
    except UnicodeDecodeError:
        raise SipParseError(400, "Malformed Request-URI") from None
    return RequestLine(method.decode("ascii"), uri_text, "SIP/2.0")


# Start lines recur ("SIP/2.0 180 Ringing", the Request-URIs of the same phones) and
# parse to immutable values: a bounded table, cleared when full (as alg.sip.memo).
_START_LINES: dict[bytes, RequestLine | StatusLine] = {}
_START_LINES_LIMIT: Final = 4096


def _parse_start_line(line: bytes) -> RequestLine | StatusLine:
    is_status = line[:4].upper() == b"SIP/"
    parsed = _parse_status_line(line) if is_status else _parse_request_line(line)
    if len(_START_LINES) >= _START_LINES_LIMIT:
        _START_LINES.clear()
    _START_LINES[line] = parsed  # errors raise above and are not remembered
    return parsed


def _check_version(version: bytes) -> None:
    upper = version.upper()
    if upper == b"SIP/2.0":
        return
    if upper.startswith(b"SIP/"):
        raise SipParseError(505, "Version Not Supported")  # RFC 4475 §3.1.2.16
    raise SipParseError(400, "Malformed SIP version")


def _parse_status_line(line: bytes) -> StatusLine:
    version, _, rest = line.partition(b" ")
    _check_version(version)
    code, sep, reason = rest.partition(b" ")
    if len(code) != 3 or not code.isdigit() or not sep:
        raise SipParseError(400, "Malformed Status-Line")  # RFC 4475 §3.1.2.19 (bigcode)
    status = int(code)
    if not 100 <= status <= 699:
        raise SipParseError(400, "Malformed Status-Line")
    return StatusLine("SIP/2.0", status, decode_text(reason))


def _split_unfolded(
    block: bytes, pos: int, fields: list[Span], index: dict[str, tuple[int, ...]]
) -> None:
    """Cut a header block without continuation lines into fields (the common case)."""
    cache = _NAME_CACHE
    append = fields.append
    for line in block.split(b"\r\n"):
        colon = line.find(b":")
        if colon <= 0:
            raise SipParseError(400, "Malformed header field")
        raw_name = line[:colon]
        name = cache.get(raw_name) or canonical_name(raw_name)
        end = pos + len(line)
        positions = index.get(name)
        index[name] = (len(fields),) if positions is None else (*positions, len(fields))
        append((name, pos, pos + colon + 1, end, False))
        pos = end + 2


def _split_folded(
    block: bytes, pos: int, fields: list[Span], index: dict[str, tuple[int, ...]]
) -> None:
    """Cut a header block into fields, joining continuation lines (§7.3.1 folding)."""
    lines = block.split(b"\r\n")
    count = len(lines)
    i = 0
    while i < count:
        line = lines[i]
        colon = line.find(b":")
        if colon <= 0 or line[0] in b" \t":
            raise SipParseError(400, "Malformed header field")
        name = canonical_name(line[:colon])
        value_start = pos + colon + 1
        end = pos + len(line)
        folded = False
        # continuation lines start with SP/HT
        while i + 1 < count and lines[i + 1][:1] in (b" ", b"\t"):
            i += 1
            end += 2 + len(lines[i])
            folded = True
        positions = index.get(name)
        index[name] = (len(fields),) if positions is None else (*positions, len(fields))
        fields.append((name, pos, value_start, end, folded))
        pos = end + 2
        i += 1


def parse_message(
    data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, datagram: bool = True
) -> SipMessage:
    """Parse one SIP message from `data`.

    `datagram=True` (UDP, RFC 3261 §18.3): the message is the datagram; bytes past
    Content-Length are ignored, and a missing Content-Length means "the rest". With
    `datagram=False` (a message framed by `SipStreamReader`) Content-Length must match
    exactly. Leading CRLFs (keep-alives, §7.5) are skipped.
    """
    if len(data) > max_size:
        raise SipParseError(413, "Message Too Large")
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    head_end = data.find(b"\r\n\r\n", start)
    if head_end < 0:
        raise SipParseError(400, "Missing end of header fields")
    line_end = data.find(b"\r\n", start)
    first = data[start:line_end]
    start_line = _START_LINES.get(first)
    if start_line is None:
        start_line = _parse_start_line(first)

    fields: list[Span] = []
    index: dict[str, tuple[int, ...]] = {}
    headers_start = line_end + 2
    if head_end > line_end:
        block = data[headers_start:head_end]
        if b"\r\n " in block or b"\r\n\t" in block or block[:1] in (b" ", b"\t"):
            _split_folded(block, headers_start, fields, index)
        else:
            _split_unfolded(block, headers_start, fields, index)
    body_start = head_end + 4
    available = len(data) - body_start
    lengths = index.get("content-length")
    if lengths is None:
        if not datagram and available:
            raise SipParseError(400, "Missing Content-Length header")
        length = available
    else:
        length_field = fields[lengths[0]]
        value = data[length_field[2] : length_field[3]].strip()
        for i in lengths[1:]:
            if data[fields[i][2] : fields[i][3]].strip() != value:
                raise SipParseError(400, "Multiple Content-Length values")  # RFC 4475 §3.3.9
        if not value.isdigit() or len(value) > 10:
            raise SipParseError(400, "Malformed Content-Length header")  # §3.1.2.3 (ncl)
        length = int(value)
        if length > available:
            raise SipParseError(400, "Content-Length larger than message")  # §3.1.2.2
        if not datagram and length < available:
            raise SipParseError(400, "Content-Length smaller than message")
    end = body_start + length
    if start or end != len(data):
        # keep only the message itself (RFC 4475 §3.1.1.12 dblreq: the rest is noise)
        raw = data[start:end]
        if start:
            fields = [(n, a - start, b - start, c - start, f) for n, a, b, c, f in fields]
        return SipMessage(
            raw,
            start_line,
            fields,
            index,
            headers_start - start,
            head_end - start,
            body_start - start,
            end - start,
        )
    return SipMessage(data, start_line, fields, index, headers_start, head_end, body_start, end)
