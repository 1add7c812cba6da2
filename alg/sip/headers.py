"""Typed views of the header fields a proxy reads (RFC 3261 §20, grammar §25.1).

Each `parse_*` function takes one header field value (already unfolded: line folding
replaced by a single SP) and returns a frozen value object, or raises `SipParseError(400,
"Malformed <Header> header")`. They are called lazily by `SipMessage`, so a message whose
Via is never read never pays for parsing it.

LWS is allowed around the separators `/ ; = , :` and before `<` (§25.1 SWS rules); the
parsers accept it wherever the grammar does, which RFC 4475 §3.1.1.1 (wsinv) exercises.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from alg.errors import SipParseError
from alg.sip.memo import Memo
from alg.sip.uri import _IPV4, TOKEN_TEXT, HostKind, SipUri, Uri, parse_uri, split_host_port

Params = tuple[tuple[str, str | None], ...]

_TOKEN_STR: Final = TOKEN_TEXT
# Character classes as regexes: one C-level fullmatch instead of building a set from
# the string, which is what frozenset.issuperset(str) does on every call.
_TOKEN_CLASS: Final = r"[A-Za-z0-9\-.!%*_+`'~]"
_TOKEN_RE: Final = re.compile(_TOKEN_CLASS + "+")
_TOKENS_AND_WS_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ \t]+")
# gen-value = token / host / quoted-string; a bracketed IPv6 host adds '[', ']', ':'.
_GEN_VALUE_CLASS: Final = r"[A-Za-z0-9\-.!%*_+`'~\[\]:]"
_GEN_VALUE_RE: Final = re.compile(_GEN_VALUE_CLASS + "+")
# A whole parameter list without quotes or LWS: ;name[=value] repeated.
_PLAIN_PARAMS_RE: Final = re.compile(rf"(?:;{_TOKEN_CLASS}+(?:={_GEN_VALUE_CLASS}+)?)+")
_WS: Final = " \t"
# Fast path for the usual Via shape: "SIP/2.0/UDP host[:port]" with no LWS inside.
_FAST_VIA_HEAD: Final = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9_][A-Za-z0-9.\-_]*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
)
MAX_UINT32: Final = 2**32 - 1


def _bad(header: str) -> SipParseError:
    return SipParseError(400, f"Malformed {header} header")


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def split_commas(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas inside quoted strings and
    inside `<...>` (a URI may contain commas, RFC 3261 §7.3.1)."""
    if "," not in value:
        return [value.strip(_WS)]
    if '"' not in value:
        if "<" not in value:
            return [part.strip(_WS) for part in value.split(",")]
        return _split_commas_unquoted(value)
    parts: list[str] = []
    start = 0
    in_quotes = in_angle = False
    i = 0
    n = len(value)
    while i < n:
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
            parts.append(value[start:i].strip(_WS))
            start = i + 1
        i += 1
    parts.append(value[start:].strip(_WS))
    return parts


def _split_commas_unquoted(value: str) -> list[str]:
    """`split_commas` without quoted strings (Route, Record-Route, Contact lists): a
    comma separates values unless the last '<' or '>' before it is a '<'. Works piece by
    piece between commas instead of character by character."""
    parts: list[str] = []
    current: list[str] = []
    in_angle = False
    for piece in value.split(","):
        current.append(piece)
        opening, closing = piece.rfind("<"), piece.rfind(">")
        if opening > closing:
            in_angle = True
        elif closing > opening:
            in_angle = False
        if not in_angle:
            parts.append(",".join(current).strip(_WS))
            current = []
    if current:
        parts.append(",".join(current).strip(_WS))
    return parts


def _quoted_end(text: str, start: int) -> int:
    """Index just past the closing quote of the quoted-string opening at `start`."""
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i + 1
        i += 1
    raise SipParseError(400, "Unterminated quoted string")


def unquote(text: str) -> str:
    """Remove the quotes of a quoted-string and resolve its quoted-pairs (§25.1)."""
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    out = []
    i = 0
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner):
            i += 1
        out.append(inner[i])
        i += 1
    return "".join(out)


def parse_params(text: str, header: str) -> Params:
    """`;name[=value]...` with LWS allowed around `;` and `=`; values may be quoted."""
    text = text.strip(_WS)
    if not text:
        return ()
    if not text.startswith(";"):
        raise _bad(header)
    if '"' not in text and " " not in text and "\t" not in text:
        return _parse_plain_params(text, header)
    params: list[tuple[str, str | None]] = []
    i = 1
    n = len(text)
    while True:
        # find the end of this parameter: the next ';' outside a quoted string
        j = i
        while j < n and text[j] != ";":
            if text[j] == '"':
                j = _quoted_end(text, j)
            else:
                j += 1
        part = text[i:j]
        name, eq, value = part.partition("=")
        name = name.strip(_WS)
        if not is_token(name):
            raise _bad(header)
        if eq:
            value = value.strip(_WS)
            if not value or (value[0] != '"' and not _is_gen_value(value)):
                raise _bad(header)
            params.append((name, value))
        else:
            params.append((name, None))
        if j >= n:
            return tuple(params)
        i = j + 1


def _parse_plain_params(text: str, header: str) -> Params:
    """The common case: no quoted strings and no LWS, so ';' and '=' split exactly. The
    whole list is validated by one regex match first."""
    if _PLAIN_PARAMS_RE.fullmatch(text) is None:
        raise _bad(header)
    params: list[tuple[str, str | None]] = []
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        params.append((name, value if eq else None))
    return tuple(params)


def _is_gen_value(value: str) -> bool:
    return _GEN_VALUE_RE.fullmatch(value) is not None


def param_value(params: Params, name: str) -> str | None:
    lowered = name.lower()
    for key, value in params:
        if key.lower() == lowered:
            return value
    return None


def has_param(params: Params, name: str) -> bool:
    lowered = name.lower()
    return any(key.lower() == lowered for key, _ in params)


# --- Via (§20.42, §18.2.1; rport RFC 3581; IPv6 received RFC 5118 §4.5) ---------------


@dataclass(frozen=True, slots=True)
class Via:
    protocol: str  # "SIP/2.0"
    transport: str  # upper-case: UDP, TCP, TLS, SCTP, WS, ...
    host: str
    host_kind: HostKind
    port: int | None
    params: Params

    @property
    def branch(self) -> str | None:
        return param_value(self.params, "branch")

    @property
    def is_rfc3261_branch(self) -> bool:
        """True for a branch with the magic cookie and an actual identifier (§8.1.1.7);
        RFC 4475 §3.2.1 (badbranch) shows a bare cookie, which does not count."""
        branch = self.branch
        return branch is not None and len(branch) > 7 and branch.startswith("z9hG4bK")

    @property
    def received(self) -> str | None:
        value = param_value(self.params, "received")
        if value is not None and value.startswith("[") and value.endswith("]"):
            return value[1:-1]
        return value

    @property
    def rport(self) -> int | None:
        value = param_value(self.params, "rport")
        return int(value) if value else None

    @property
    def has_rport(self) -> bool:
        return has_param(self.params, "rport")

    @property
    def maddr(self) -> str | None:
        return param_value(self.params, "maddr")

    @property
    def sent_by(self) -> str:
        host = f"[{self.host}]" if self.host_kind == "ipv6" else self.host
        return host if self.port is None else f"{host}:{self.port}"


def _parse_via(value: str) -> Via:
    """One via-parm: `SIP / 2.0 / UDP host[:port] *(; param)`.

    The part before the parameters recurs (one per UA or proxy) and is memoized apart;
    a whole via-parm recurs within one transaction (the request and each of its
    responses carry it), which `parse_via` memoizes."""
    semi = value.find(";")
    head, tail = (value, "") if semi < 0 else (value[:semi], value[semi:])
    protocol, transport, host, kind, port = _via_head(head)
    return Via(protocol, transport, host, kind, port, _via_params(tail))


def _parse_via_head(head: str) -> tuple[str, str, str, HostKind, int | None]:
    header = "Via"
    fast = _FAST_VIA_HEAD.fullmatch(head)
    if fast is not None:
        transport, host_text, port_text = fast.groups()
        try:
            host, kind, port = split_host_port(
                host_text if port_text is None else f"{host_text}:{port_text}"
            )
        except SipParseError:
            raise _bad(header) from None
        return "SIP/2.0", transport.upper(), host, kind, port
    pieces = head.split("/", 2)
    if len(pieces) != 3:
        raise _bad(header)
    name, version, rest = pieces[0].strip(_WS), pieces[1].strip(_WS), pieces[2].strip(_WS)
    transport_and_host = rest.split(None, 1)
    if len(transport_and_host) != 2 or not is_token(name) or not is_token(version):
        raise _bad(header)
    transport, sent_by = transport_and_host
    if not is_token(transport):
        raise _bad(header)
    # sent-by = host [ COLON port ], where COLON allows LWS around it
    try:
        host, kind, port = split_host_port("".join(sent_by.split()))
    except SipParseError:
        raise _bad(header) from None
    return f"{name.upper()}/{version}", transport.upper(), host, kind, port


_via_head = Memo(_parse_via_head)


def _via_params(tail: str) -> Params:
    header = "Via"
    params = parse_params(tail, header)
    for key, val in params:
        lowered = key.lower()
        if lowered in ("received", "maddr") and val is not None:
            _check_address_param(val, header)
        elif lowered == "rport" and val is not None:
            _check_number(val, 65535, header)
        elif lowered == "ttl":
            _check_number(val or "", 255, header)
    return params


def _check_number(value: str, maximum: int, header: str) -> None:
    if not value.isdigit() or not value.isascii() or int(value) > maximum:
        raise _bad(header)


def _check_address_param(value: str, header: str) -> None:
    if _IPV4.fullmatch(value):
        return
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if value.startswith("[") or ":" in value or not is_token(value):
            raise _bad(header) from None


def _parse_via_list(value: str) -> tuple[Via, ...]:
    return tuple(parse_via(part) for part in split_commas(value))


def parse_via_list(value: str) -> list[Via]:
    return list(parse_via_tuple(value))


# --- name-addr / addr-spec headers: From, To, Contact, Route, Record-Route ... ---------


@dataclass(frozen=True, slots=True)
class NameAddress:
    """`[display-name] <uri> *(;param)` or `addr-spec *(;param)` (§20.10, §20.20, §20.39).

    `bracketed` tells which form was used; a proxy re-serialising must keep `<>` when the
    URI has parameters, or they would turn into header parameters (§20)."""

    display_name: str | None
    uri: Uri
    params: Params
    bracketed: bool

    @property
    def tag(self) -> str | None:
        return param_value(self.params, "tag")

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    @property
    def sip_uri(self) -> SipUri | None:
        return self.uri if isinstance(self.uri, SipUri) else None

    def serialize(self) -> str:
        out = []
        if self.display_name is not None:
            out.append(self.display_name + " ")
        out.append(f"<{self.uri}>")
        out.extend(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return "".join(out)


def parse_name_address(value: str, header: str) -> NameAddress:
    """One name-addr or addr-spec with its parameters. A whole value recurs within a
    dialog (From and To of every request and response), so successful parses are
    memoized; the result does not depend on `header`, which only names the fault."""
    found = _name_addresses.get(value)
    if found is not None:
        return found
    parsed = _parse_name_address(value, header)
    if len(_name_addresses) >= _PER_DIALOG_CAPACITY:
        _name_addresses.clear()
    _name_addresses[value] = parsed
    return parsed


def _parse_name_address(value: str, header: str) -> NameAddress:
    value = value.strip(_WS)
    if not value:
        raise _bad(header)
    # name-addr: everything up to '>' (display name and URI) recurs from message to
    # message and is memoized; the parameters after it (the tag) are parsed each time.
    if value[0] == '"':
        close = value.find(">", _quoted_end(value, 0))
    else:
        close = value.find(">") if "<" in value else -1
    if close >= 0:
        try:
            display, uri = _name_addr_head(value[: close + 1])
        except SipParseError:
            raise _bad(header) from None
        return NameAddress(display, uri, parse_params(value[close + 1 :], header), True)
    if value[0] == '"' or "<" in value:
        raise _bad(header)
    # addr-spec form: the URI ends at the first ';' and parameters are header params.
    # A URI containing ',', '?' or ';' must be bracketed (§20), see RFC 4475 §3.1.2.13.
    semi = value.find(";")
    uri_text, tail = (value, "") if semi < 0 else (value[:semi], value[semi:])
    uri_text = uri_text.rstrip(_WS)
    if "?" in uri_text or "," in uri_text:
        raise _bad(header)
    try:
        uri = parse_uri(uri_text)
    except SipParseError:
        raise _bad(header) from None
    return NameAddress(None, uri, parse_params(tail, header), bracketed=False)


def _parse_name_addr_head(head: str) -> tuple[str | None, Uri]:
    """`[display-name] <URI>` (the head ends with '>')."""
    display: str | None = None
    if head[0] == '"':
        end = _quoted_end(head, 0)
        display = head[:end]
        rest = head[end:].lstrip(_WS)
    else:
        langle = head.find("<")
        candidate = head[:langle].strip(_WS)
        if candidate:
            # display-name as *(token LWS): RFC 4475 §3.1.2.15 (baddn) must fail here
            if _TOKENS_AND_WS_RE.fullmatch(candidate) is None:
                raise _bad("name-addr")
            display = candidate
        rest = head[langle:]
    # LAQUOT = SWS "<" and RAQUOT = ">" SWS: no LWS inside the brackets (§3.1.2.14)
    if not rest.startswith("<") or rest.count("<") != 1:
        raise _bad("name-addr")
    return display, parse_uri(rest[1:-1])


_name_addr_head = Memo(_parse_name_addr_head)


def parse_name_address_list(value: str, header: str) -> list[NameAddress]:
    return [parse_name_address(part, header) for part in split_commas(value)]


@dataclass(frozen=True, slots=True)
class ContactList:
    """Contact header values, or the `*` wildcard of a REGISTER (§10.2.2)."""

    wildcard: bool
    contacts: tuple[NameAddress, ...]


def _parse_contacts(value: str) -> ContactList:
    if value.strip(_WS) == "*":
        return ContactList(True, ())
    return ContactList(False, tuple(parse_name_address_list(value, "Contact")))


# --- scalar headers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str


def _parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[0].isascii():
        raise _bad("CSeq")
    number = int(parts[0])
    if number > MAX_UINT32 or not is_token(parts[1]):
        raise _bad("CSeq")  # RFC 3261 §8.1.1.5: 32-bit unsigned; RFC 4475 §3.1.2.4
    return CSeq(number, parts[1])


def parse_uint(value: str, header: str, maximum: int) -> int:
    text = value.strip(_WS)
    if not text.isdigit() or not text.isascii() or len(text) > 12:
        raise _bad(header)
    number = int(text)
    if number > maximum:
        raise _bad(header)
    return number


def parse_call_id(value: str) -> str:
    text = value.strip(_WS)
    # callid = word [ "@" word ]: no whitespace, and not empty (§25.1)
    if not text or " " in text or "\t" in text or text.count("@") > 1:
        raise _bad("Call-ID")
    return text


@dataclass(frozen=True, slots=True)
class MediaType:
    type: str
    subtype: str
    params: Params

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}".lower()

    def param(self, name: str) -> str | None:
        value = param_value(self.params, name)
        if value is not None and value.startswith('"'):
            return unquote(value)
        return value


def _parse_media_type(value: str) -> MediaType:
    semi = value.find(";")
    head, tail = (value, "") if semi < 0 else (value[:semi], value[semi:])
    kind, slash, sub = head.partition("/")
    kind, sub = kind.strip(_WS), sub.strip(_WS)
    if not slash or not is_token(kind) or not is_token(sub):
        raise _bad("Content-Type")
    return MediaType(kind, sub, parse_params(tail, "Content-Type"))


def parse_token_list(value: str, header: str) -> tuple[str, ...]:
    """Comma-separated tokens (Require, Proxy-Require, Supported, Allow, ...)."""
    if not value.strip(_WS):
        return ()
    items = tuple(part for part in split_commas(value))
    if not all(is_token(item) for item in items):
        raise _bad(header)
    return items


# A UA's Contact, the body types and CSeq values ("1 INVITE", "2 BYE") recur; see
# alg.sip.memo.
parse_cseq = Memo(_parse_cseq)
parse_contacts = Memo(_parse_contacts)
parse_media_type = Memo(_parse_media_type)
# Values that recur within a dialog or a transaction (From, To, Via) are as many as the
# calls in progress: a larger table, so it is not cleared within a call's lifetime at a
# few thousand calls per second.
_PER_DIALOG_CAPACITY: Final = 32768
_name_addresses: dict[str, NameAddress] = {}
parse_via = Memo(_parse_via, _PER_DIALOG_CAPACITY)
parse_via_tuple = Memo(_parse_via_list, _PER_DIALOG_CAPACITY)
