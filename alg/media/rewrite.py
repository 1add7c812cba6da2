"""The rewrite of a message crossing to the outside, as span edits on a `MessageEditor`,
and the reverse on the way in.

SDP (ARCHITECTURE §3 step 3): `c=`, `m=`, `a=rtcp` and `o=` move to the public binding
through `alg.sdp.anchor`; ICE attributes go (RFC 8839: the ALG does not honour
candidates; `strip_ice=False` passes them through, for deployments that terminate ICE
elsewhere — they still may not name an inside address, see below). Then `scrub_sdp`
removes what `anchor` leaves on purpose (a disabled stream's `c=`, a session `c=` no
anchored stream uses) or cannot know (an `a=`/`i=`/`u=` line naming an inside address).

Topology hiding (`hide_outbound`), for a message from the inside going outside:

* Via — the inside hops' values are removed from requests and stashed under our branch
  (RFC 3261 §16.6 step 8 puts ours on top; §16.7 step 3 matches the response by it);
  `restore_inbound` puts them back on the response.
* Contact (every URI), Record-Route and Route entries and the Request-URI with an inside
  host — replaced by `sip:<token>@<our outside address>`, so in-dialog requests come to
  us and are restored to the original URI on the way in (RFC 3261 §12.1.1, §16.4).
* From/To — an inside IP host becomes `<token>.invalid` (RFC 2606), the token cut into
  labels of at most 63 characters (RFC 1035 §2.3.4; an IPv6 host's token needs two);
  the user part stays.
* Call-ID with an inside address — replaced by a token (§8.1.1.4 only asks uniqueness).
* Any other header field still naming an inside address is removed (they are optional:
  Warning, User-Agent, P-headers ...); one of the fields a dialog needs cannot be
  removed and refuses the message (`TopologyLeak`).

Tokens are the original texts sealed with AES-SIV (`alg.media.masking.TokenTable`): they
restore with the key alone, after any number of other calls and across a restart. Each
place has its kind (`uri`, `host`, `cid`), bound to the token as associated data, so a
URI token never restores into a host position. A token that does not open (forged,
tampered, cut, from another key) is left as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from alg.errors import AlgError, SdpParseError, SipParseError
from alg.media.masking import (
    MAX_TOKEN_CHARS,
    TOKEN_PATTERN,
    TOKEN_PREFIX,
    InsideNetworks,
    TokenTable,
    TokenTooLong,
    ViaStash,
)
from alg.sdp import (
    AnchorPlan,
    IPAddress,
    SessionDescription,
    anchor,
    parse_sdp,
    set_media_transport,
    set_session_connection,
)
from alg.sip import MessageEditor, SipMessage, SipUri, address_port, find_sdp
from alg.sip.headers import parse_name_address, split_commas

# Fields a message cannot do without (RFC 3261 §8.1.1): never deleted, must be masked.
ESSENTIAL: Final = frozenset(
    {"via", "from", "to", "call-id", "cseq", "contact", "route", "record-route", "max-forwards"}
)
_URI_FIELDS: Final = ("contact", "record-route", "route")
# what `_masked_uri` writes: the transport parameter of a masked Contact is ours too, and
# goes with the mask when it is restored (the inside UA has its own transport)
_MASKED_URI_RE: Final = re.compile(
    rf"sips?:({TOKEN_PATTERN})@[^;>\s,]*(?:;transport=(?:tcp|tls))?(?:;lr)?"
)
_PREFIX_BYTES: Final = TOKEN_PREFIX.encode()
# A Call-ID token stands alone (a Call-ID, or a Replaces/Target-Dialog value naming one),
# never as the user part or host of a URI: those are the other kinds' places.
_CALL_ID_RE: Final = re.compile(rf"(?<![:@.]){TOKEN_PATTERN}(?![@.])")
_RESTORE_BUDGET: Final = 64  # tokens tried per inbound message (see `_Restorer`)
# A DNS label has at most 63 characters (RFC 1035 §2.3.4): a host token is cut into as
# many as it needs, the first holding the prefix; the label count bounds the match.
_LABEL: Final = 63
_MAX_LABELS: Final = -(-MAX_TOKEN_CHARS // _LABEL)
_MASKED_HOST_RE: Final = re.compile(
    rf"({TOKEN_PREFIX}[a-z2-7]{{1,{_LABEL - len(TOKEN_PREFIX)}}}"
    rf"(?:\.[a-z2-7]{{1,{_LABEL}}}){{0,{_MAX_LABELS - 1}}})\.invalid"
)


class TopologyLeak(AlgError):
    """An inside address would reach the outside and cannot be hidden."""


@dataclass(frozen=True, slots=True)
class Hiding:
    """Where masked URIs point (our outside SIP interface) and what is inside."""

    outside_host: str
    outside_port: int
    inside: InsideNetworks
    strip_ice: bool = True
    outside_tls_port: int | None = None  # None: no TLS on the outside

    @property
    def hostport(self) -> str:
        return address_port(self.outside_host, self.outside_port)

    @property
    def sips_hostport(self) -> str:
        """Our outside address at the port TLS reaches (the UDP/TCP one without TLS)."""
        return address_port(self.outside_host, self.outside_tls_port or self.outside_port)

    def contact_hostport(self, transport: str) -> str:
        """Where a masked Contact points for a hop over `transport`: our outside address
        with the port and transport parameter that reach us that way (a peer that sends
        its next request to the Contact must use the transport it can use, RFC 3261
        §18.1.1, §26.2 for TLS)."""
        if transport == "TLS" and self.outside_tls_port is not None:
            return f"{self.sips_hostport};transport=tls"
        if transport == "TCP":
            return f"{self.hostport};transport=tcp"
        return self.hostport


# ---- SDP ----------------------------------------------------------------------------


def scrub_sdp(sdp: SessionDescription, inside: InsideNetworks, public: IPAddress) -> bytes:
    """Remove every inside address `anchor` left in an SDP (see the module docstring)."""
    session = sdp.session.connection
    if session is not None and inside.contains(session.address):
        sdp = set_session_connection(sdp, public)
    for index, media in enumerate(sdp.media):
        for connection in media.connections:
            if inside.contains(connection.address):
                port = sdp.layout.media_lines[index].port
                sdp = set_media_transport(sdp, index, public, port)
                break
    kept = [
        line
        for line in sdp.lines
        if line[:2] not in (b"a=", b"i=", b"u=", b"e=", b"p=", b"k=") or not inside.find_in(line)
    ]
    data = b"".join(kept)
    leak = inside.find_in(data)
    if leak is not None:
        raise TopologyLeak(f"SDP still names {leak}")
    return data


def anchored_sdp(
    sdp: SessionDescription, plan: AnchorPlan, inside: InsideNetworks, public: IPAddress
) -> bytes:
    return scrub_sdp(anchor(sdp, plan), inside, public)


def sdp_of(msg: SipMessage) -> SessionDescription | None:
    """The message's SDP, or None; an unparsable SDP raises `SdpParseError`."""
    location = find_sdp(msg)
    if location is None:
        return None
    body = location.extract(msg.body)
    if not body.strip():
        return None
    return parse_sdp(body)


def set_sdp(edit: MessageEditor, sdp: bytes) -> None:
    """Put `sdp` where the message's SDP was (whole body, or its multipart part)."""
    msg = edit.message
    location = find_sdp(msg)
    if location is None:
        raise SdpParseError("message has no SDP to replace")
    edit.set_body(location.replace(msg.body, sdp))


# ---- topology hiding ------------------------------------------------------------------


def _token(tokens: TokenTable, text: str, now: float, kind: str) -> str:
    try:
        return tokens.token(text, now, kind)
    except TokenTooLong as exc:
        raise TopologyLeak(f"cannot mask a {kind} of {len(text)} characters: {exc}") from exc


def _host_name(token: str) -> str:
    """`token` as a name under `.invalid` (RFC 2606 §2), in labels of <= 63 characters."""
    labels = [token[i : i + _LABEL] for i in range(0, len(token), _LABEL)]
    return ".".join((*labels, "invalid"))


def _masked_uri(
    tokens: TokenTable, uri_text: str, hiding: Hiding, now: float, lr: bool, *, hostport: str = ""
) -> str:
    token = _token(tokens, uri_text, now, "uri")
    if hostport and uri_text[:5].lower() == "sips:":
        # a SIPS Contact asks for TLS on every hop (RFC 5630 §3.1.1): its mask is one too,
        # at our TLS port, with no transport parameter (§3.1.3)
        return f"sips:{token}@{hiding.sips_hostport}"
    return f"sip:{token}@{hostport or hiding.hostport}" + (";lr" if lr else "")


def _is_inside_uri(uri: object, inside: InsideNetworks) -> bool:
    return isinstance(uri, SipUri) and (
        inside.contains(uri.host) or inside.contains(uri.param("maddr") or "")
    )


def _mask_name_addr_list(
    value: str,
    tokens: TokenTable,
    hiding: Hiding,
    now: float,
    *,
    all_uris: bool,
    lr: bool,
    hostport: str = "",
) -> str:
    out: list[str] = []
    for part in split_commas(value):
        if part == "*":
            out.append(part)
            continue
        address = parse_name_address(part, "Contact")
        if all_uris or _is_inside_uri(address.uri, hiding.inside):
            masked = _masked_uri(tokens, str(address.uri), hiding, now, lr, hostport=hostport)
            params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in address.params)
            out.append(f"<{masked}>{params}")
        else:
            out.append(part)
    return ", ".join(out)


def _mask_host(value: str, tokens: TokenTable, hiding: Hiding, now: float, header: str) -> str:
    address = parse_name_address(value, header)
    uri = address.uri
    if not isinstance(uri, SipUri) or not hiding.inside.contains(uri.host):
        return value
    host = _host_name(_token(tokens, uri.host_port, now, "host"))
    masked = uri.with_changes(host=host, port=None)
    return value.replace(str(uri), str(masked), 1)


def hide_outbound(
    edit: MessageEditor,
    tokens: TokenTable,
    stash: ViaStash,
    hiding: Hiding,
    now: float,
) -> None:
    """Mask every inside address in the headers of a message from the inside (see the
    module docstring). The body is the caller's (`anchored_sdp`)."""
    msg = edit.message
    inside = hiding.inside
    contact_hostport = hiding.contact_hostport(_outside_hop_transport(msg, hiding))
    if msg.is_request:
        _stash_vias(edit, stash, now)
        uri = msg.request_uri
        if _is_inside_uri(uri, inside):
            edit.set_request_uri(_masked_uri(tokens, str(uri), hiding, now, lr=False))
    for name in _URI_FIELDS:
        for field in msg.fields_named(name):
            text = msg.field_value(field).decode("utf-8", "surrogateescape")
            contact = name == "contact"
            masked = _mask_name_addr_list(
                text,
                tokens,
                hiding,
                now,
                all_uris=contact,
                lr=not contact,
                hostport=contact_hostport if contact else "",
            )
            if masked != text:
                edit.replace_value(field, masked.encode("utf-8", "surrogateescape"))
    for name in ("from", "to"):
        for field in msg.fields_named(name):
            text = msg.field_value(field).decode("utf-8", "surrogateescape")
            masked = _mask_host(text, tokens, hiding, now, name)
            if masked != text:
                edit.replace_value(field, masked.encode("utf-8", "surrogateescape"))
    for field in msg.fields_named("call-id"):
        call_id = msg.field_value(field).decode("utf-8", "surrogateescape")
        if inside.find_in(call_id.encode("utf-8", "surrogateescape")):
            edit.replace_value(field, _token(tokens, call_id, now, "cid").encode())
    for position, span in enumerate(msg.spans):
        name = span[0]
        if name in ESSENTIAL or name.startswith("content-"):
            continue
        if inside.find_in(msg.field_value(span)):
            edit.delete_field(msg.field_at(position))


def _outside_hop_transport(msg: SipMessage, hiding: Hiding) -> str:
    """The transport of the hop the message takes outside: a request carries our Via for
    it on top; a response's hop is named by the first Via that is neither ours nor
    inside (ours for the inside hop may still be on top)."""
    try:
        vias = msg.vias
    except SipParseError:
        return "UDP"
    for via in vias:
        host = via.host.strip("[]")
        if msg.is_request or (host != hiding.outside_host and not hiding.inside.contains(host)):
            return via.transport
    return "UDP"


def _stash_vias(edit: MessageEditor, stash: ViaStash, now: float) -> None:
    """Keep only the top Via (ours) and stash the others under its branch."""
    msg = edit.message
    fields = msg.fields_named("via")
    values: list[str] = []
    for field in fields:
        values += split_commas(msg.field_value(field).decode("utf-8", "surrogateescape"))
    if len(values) < 2:
        return
    branch = msg.top_via.branch or ""
    stash.put(branch, tuple(v.encode("utf-8", "surrogateescape") for v in values[1:]), now)
    edit.replace_value(fields[0], values[0].encode("utf-8", "surrogateescape"))
    for field in fields[1:]:
        edit.delete_field(field)


def check_no_leak(data: bytes, inside: InsideNetworks) -> None:
    leak = inside.find_in(data)
    if leak is not None:
        raise TopologyLeak(f"{leak} would reach the outside")


# ---- the way back in ------------------------------------------------------------------


class _Restorer:
    """Undoes our tokens in the texts of one message. Each token tried costs a base32
    decoding and an AES-SIV decryption (about 3 us), so a message gets at most
    `_RESTORE_BUDGET` tries: a real one carries a handful of tokens (Request-URI, Route
    set, To/From host, Call-ID), while a hostile one packed with `sw-` candidates would
    otherwise cost milliseconds. Candidates past the budget stay as they are."""

    def __init__(self, tokens: TokenTable, now: float) -> None:
        self.tokens = tokens
        self.now = now
        self.left = _RESTORE_BUDGET

    def _restore(self, token: str, kind: str) -> str | None:
        if self.left <= 0:
            return None
        self.left -= 1
        return self.tokens.restore(token, self.now, kind)

    def _uri(self, match: re.Match[str]) -> str:
        original = self._restore(match.group(1), "uri")
        return match.group(0) if original is None else original

    def _host(self, match: re.Match[str]) -> str:
        token = match.group(1).replace(".", "")
        if _host_name(token) != match.group(0):
            return match.group(0)  # not cut the way we cut: not ours
        original = self._restore(token, "host")
        return match.group(0) if original is None else original

    def _call_id(self, match: re.Match[str]) -> str:
        original = self._restore(match.group(0), "cid")
        return match.group(0) if original is None else original

    def text(self, text: str) -> str:
        if TOKEN_PREFIX not in text:
            return text  # most header values: no pass to build
        # Bound methods built here, not kept on self: kept, they would make every
        # restorer a reference cycle, garbage only a collection frees (sipwall.heap).
        passes = (
            (_MASKED_URI_RE, self._uri),
            (_MASKED_HOST_RE, self._host),
            (_CALL_ID_RE, self._call_id),
        )
        for pattern, swap in passes:
            if self.left <= 0 or TOKEN_PREFIX not in text:
                break
            text = pattern.sub(swap, text)
        return text


def restore_inbound(data: bytes, tokens: TokenTable, stash: ViaStash, now: float) -> bytes:
    """A message from the outside with our masks undone: tokens in the start line and
    header fields back to the original URIs, hosts and Call-IDs, and, on a response, the
    inside Vias back under ours. Unknown tokens are left alone (the request then fails
    to route, which is what a forged or expired token deserves)."""
    from alg.sip import parse_message  # local: keep the module import light

    msg = parse_message(data)
    edit = MessageEditor(msg)
    restorer = _Restorer(tokens, now)
    changed = False
    line = msg.start_line
    uri_text = getattr(line, "uri_text", None)
    if uri_text is not None and TOKEN_PREFIX in uri_text:
        restored = restorer.text(uri_text)
        if restored != uri_text:
            edit.set_request_uri(restored)
            changed = True
    for position, span in enumerate(msg.spans):
        if span[0] == "via":
            continue
        raw = msg.field_value(span)
        if _PREFIX_BYTES not in raw:
            continue
        text = raw.decode("utf-8", "surrogateescape")
        restored = restorer.text(text)
        if restored != text:
            edit.replace_value(msg.field_at(position), restored.encode("utf-8", "surrogateescape"))
            changed = True
    if not msg.is_request and msg.has("via"):
        vias = stash.get(msg.top_via.branch or "", now)
        if vias:
            first = msg.fields_named("via")[0]
            value = b", ".join((msg.field_value(first), *vias))
            edit.replace_value(first, value)
            changed = True
    return edit.apply() if changed else data
