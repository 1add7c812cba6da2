"""Span edits over a parsed message, applied once (the idea of Kamailio's "lumps").

A proxy changes few bytes of what it forwards: it adds a Via and a Record-Route, lowers
Max-Forwards, may pop a Route, and an ALG rewrites Contact and the SDP. `MessageEditor`
records each change as (start, end, replacement) over the original bytes and `apply()`
joins the untouched slices with the replacements in one pass. Content-Length follows the
body automatically (RFC 3261 §20.14); nothing else is re-formatted, so every header the
proxy did not touch, known or unknown, is forwarded byte-identical.
"""

from __future__ import annotations

from alg.errors import AlgError
from alg.sip.headers import split_commas
from alg.sip.message import HeaderField, SipMessage

_CANONICAL_DISPLAY = {
    "via": "Via",
    "record-route": "Record-Route",
    "route": "Route",
    "max-forwards": "Max-Forwards",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
    "contact": "Contact",
}


class SipEditError(AlgError):
    """Two edits overlap, or an edit does not fit the message (a programming error)."""


class MessageEditor:
    """Collects span edits for one message; `apply()` returns the new bytes."""

    __slots__ = ("_body", "_content_type", "_edits", "_msg", "_start_line")

    def __init__(self, msg: SipMessage) -> None:
        self._msg = msg
        # (start, end, order, replacement); order keeps inserts at one offset in call order
        self._edits: list[tuple[int, int, int, bytes]] = []
        self._body: bytes | None = None
        self._content_type: bytes | None = None
        self._start_line: bytes | None = None

    @property
    def message(self) -> SipMessage:
        return self._msg

    def _add(self, start: int, end: int, data: bytes) -> None:
        self._edits.append((start, end, len(self._edits), data))

    # --- start line ------------------------------------------------------------------

    def set_request_uri(self, uri: str) -> None:
        line = self._msg.start_line
        method = getattr(line, "method", None)
        if method is None:
            raise SipEditError("a response has no Request-URI")
        self._start_line = f"{method} {uri} SIP/2.0".encode()

    def set_start_line(self, line: bytes) -> None:
        self._start_line = line

    # --- header fields ---------------------------------------------------------------

    def replace_value(self, field: HeaderField, value: bytes) -> None:
        """Replace a field's value, keeping its name exactly as written (e.g. compact)."""
        raw = self._msg.raw
        start = field.value_start
        # keep the single space most writers put after the colon
        if raw[start : start + 1] in (b" ", b"\t"):
            start += 1
        self._add(start, field.line_end, value)

    def delete_field(self, field: HeaderField) -> None:
        self._add(field.line_start, field.line_end + 2, b"")

    def insert_before(self, field: HeaderField, name: str, value: bytes) -> None:
        self._add(field.line_start, field.line_start, _line(name, value))

    def prepend(self, name: str, value: bytes) -> None:
        """Insert a field value above all existing fields of that name (e.g. our Via,
        §16.6 step 8, or our Record-Route, §16.6 step 4); at the top if there are none."""
        positions = self._msg.index.get(name)
        offset = (
            self._msg.field_at(positions[0]).line_start if positions else self._msg.headers_start
        )
        self._add(offset, offset, _line(name, value))

    def append(self, name: str, value: bytes) -> None:
        """Add a field at the end of the header block."""
        offset = self._msg.headers_end + 2
        self._add(offset, offset, _line(name, value))

    def remove_first_value(self, name: str) -> None:
        """Remove the first value of a list header (e.g. the topmost Route, §16.4), deleting
        the whole field line when it held only that value."""
        positions = self._msg.index.get(name)
        if not positions:
            raise SipEditError(f"no {name} header to remove a value from")
        field = self._msg.field_at(positions[0])
        values = split_commas(self._msg.field_value(field).decode("utf-8", "surrogateescape"))
        if len(values) <= 1:
            self.delete_field(field)
        else:
            self.replace_value(field, ", ".join(values[1:]).encode("utf-8", "surrogateescape"))

    # --- body --------------------------------------------------------------------------

    def set_body(self, body: bytes, content_type: bytes | None = None) -> None:
        """Replace the body; Content-Length is recomputed, Content-Type set if given."""
        self._body = body
        if content_type is not None:
            self._content_type = content_type

    # --- output ------------------------------------------------------------------------

    def apply(self) -> bytes:
        msg = self._msg
        raw = msg.raw
        edits = list(self._edits)
        if self._start_line is not None:
            edits.append((0, msg.headers_start - 2, -1, self._start_line))
        if self._body is not None:
            body = self._body
            cl_positions = msg.index.get("content-length")
            length = str(len(body)).encode()
            if cl_positions:
                for i in cl_positions:
                    field = msg.field_at(i)
                    start = field.value_start
                    if raw[start : start + 1] in (b" ", b"\t"):
                        start += 1
                    edits.append((start, field.line_end, len(edits), length))
            else:
                offset = msg.headers_end + 2
                edits.append((offset, offset, len(edits), _line("content-length", length)))
            if self._content_type is not None:
                ct_positions = msg.index.get("content-type")
                if ct_positions:
                    field = msg.field_at(ct_positions[0])
                    start = field.value_start
                    if raw[start : start + 1] in (b" ", b"\t"):
                        start += 1
                    edits.append((start, field.line_end, len(edits), self._content_type))
                else:
                    offset = msg.headers_end + 2
                    edits.append(
                        (offset, offset, len(edits), _line("content-type", self._content_type))
                    )
            edits.append((msg.body_start, msg.body_end, len(edits), body))
        if not edits:
            return raw
        edits.sort()
        out: list[bytes] = []
        pos = 0
        for start, end, _, data in edits:
            if start < pos:
                raise SipEditError(f"overlapping edits at offset {start}")
            out.append(raw[pos:start])
            out.append(data)
            pos = end
        out.append(raw[pos:])
        return b"".join(out)


def _line(name: str, value: bytes) -> bytes:
    display = _CANONICAL_DISPLAY.get(name) or "-".join(p.capitalize() for p in name.split("-"))
    return display.encode("ascii") + b": " + value + b"\r\n"
