"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966; IPv6 references RFC 5118).

A URI keeps its original text: `str(uri)` of an unedited URI is exactly what was parsed, so
a proxy that only reads a URI forwards it byte-identical. Edits build a new URI with
`with_changes()`; only then is the text re-assembled from the parts.

Parsing is strict where a proxy's routing depends on it (host, port, IPv6 brackets,
parameters) and lenient where RFC 4475 asks parsers not to break (odd user parts,
escapes, unknown parameters, which are kept verbatim).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from alg.errors import SipParseError
from alg.sip.memo import Memo

HostKind = Literal["name", "ipv4", "ipv6"]

# RFC 3261 §25.1 token characters; used for parameter names.
TOKEN_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
TOKEN_CHARS: Final = frozenset(TOKEN_ALPHABET.encode("ascii"))  # for bytes
TOKEN_TEXT: Final = frozenset(TOKEN_ALPHABET)  # for str
# RFC 3261 hostnames, plus '_' which real deployments use in host labels.
_HOSTNAME_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"
)
# Characters that may never appear unescaped anywhere in a SIP URI (§19.1.1, §25.1).
_FORBIDDEN_IN_URI: Final = frozenset(' \t\r\n<>"')
SIP_SCHEMES: Final = frozenset({"sip", "sips"})
_SCHEME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")
_TEL_CHARS: Final = frozenset("0123456789+-.()*#ABCDabcdpw")

_IPV4: Final = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
)
# Fast path for the common shape of a SIP URI (one C-level match instead of a walk in
# Python). Whatever it does not match goes to the general parser below, which accepts
# the full grammar; tests check that both agree wherever the fast path matches.
_PARAM_CHARS: Final = r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]"
_FAST_SIP: Final = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()%&=+$,]+)(?::([A-Za-z0-9\-_.!~*'()%&=+$,]*))?@)?"
    r"([A-Za-z0-9_][A-Za-z0-9.\-_]*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
    rf"((?:;{_PARAM_CHARS}+(?:={_PARAM_CHARS}+)?)*)"
)


def _bad(what: str) -> SipParseError:
    return SipParseError(400, f"Malformed {what}")


def address_port(address: str, port: int) -> str:
    """`address:port` for a literal address, an IPv6 one in brackets (RFC 3261 §25.1
    hostport), as Via sent-by, Record-Route and our masked URIs write ours."""
    return _host_port(address, "ipv6" if ":" in address else "ipv4", port)


def _host_port(host: str, host_kind: HostKind, port: int | None) -> str:
    bracketed = f"[{host}]" if host_kind == "ipv6" else host
    return bracketed if port is None else f"{bracketed}:{port}"


def _assemble(
    scheme: str,
    user: str | None,
    password: str | None,
    host_port: str,
    *,
    params: tuple[tuple[str, str | None], ...],
    headers: str | None,
) -> str:
    out = [scheme, ":"]
    if user is not None:
        out.append(user)
        if password is not None:
            out += [":", password]
        out.append("@")
    out.append(host_port)
    for key, value in params:
        out += [";", key] if value is None else [";", key, "=", value]
    if headers is not None:
        out += ["?", headers]
    return "".join(out)


@dataclass(frozen=True, slots=True)
class SipUri:
    """sip: or sips: URI. `params` keep their order and original case; names compare
    case-insensitively via `param()`. A parameter without value maps to None."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    host_kind: HostKind
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None
    text: str = field(default="", compare=False)

    @property
    def is_sips(self) -> bool:
        return self.scheme == "sips"

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (None if absent or valueless; see has_param)."""
        lowered = name.lower()
        for key, value in self.params:
            if key.lower() == lowered:
                return value
        return None

    def has_param(self, name: str) -> bool:
        lowered = name.lower()
        return any(key.lower() == lowered for key, _ in self.params)

    @property
    def host_port(self) -> str:
        """host[:port] as written in a Via sent-by or a URI (IPv6 in brackets)."""
        return _host_port(self.host, self.host_kind, self.port)

    def with_changes(
        self,
        *,
        user: str | Literal[False] | None = False,
        host: str | None = None,
        port: int | Literal[False] | None = False,
        params: tuple[tuple[str, str | None], ...] | None = None,
    ) -> SipUri:
        """A new URI with some parts replaced; its text is re-assembled. `False` = keep."""
        new_host, new_kind = (self.host, self.host_kind) if host is None else _classify(host)
        new_user = self.user if user is False else user
        new_port = self.port if port is False else port
        new_params = self.params if params is None else params
        # Built directly, text and all: dataclasses.replace is interpreted Python (~3 us a
        # call), and a masked or forwarded message changes a few URIs.
        text = _assemble(
            self.scheme,
            new_user,
            self.password,
            _host_port(new_host, new_kind, new_port),
            params=new_params,
            headers=self.headers,
        )
        return SipUri(
            self.scheme,
            new_user,
            self.password,
            new_host,
            new_kind,
            new_port,
            new_params,
            self.headers,
            text,
        )

    def assemble(self) -> str:
        return _assemble(
            self.scheme,
            self.user,
            self.password,
            self.host_port,
            params=self.params,
            headers=self.headers,
        )

    def __str__(self) -> str:
        return self.text or self.assemble()


@dataclass(frozen=True, slots=True)
class TelUri:
    """tel: URI (RFC 3966): a global (+...) or local number with parameters."""

    number: str
    params: tuple[tuple[str, str | None], ...] = ()
    text: str = field(default="", compare=False)

    @property
    def scheme(self) -> str:
        return "tel"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators (RFC 3966 §5.1.1)."""
        return "".join(ch for ch in self.number if ch not in "-.()")

    def param(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.params:
            if key.lower() == lowered:
                return value
        return None

    def __str__(self) -> str:
        if self.text:
            return self.text
        return (
            "tel:"
            + self.number
            + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        )


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other scheme (RFC 3986 absoluteURI): kept as text, never routed."""

    scheme: str
    text: str

    def __str__(self) -> str:
        return self.text


Uri = SipUri | TelUri | AbsoluteUri


def is_ip_literal(host: str) -> bool:
    """Whether `host` (brackets allowed) is an IP address, as `ipaddress.ip_address`
    would say; IPv4, asked for every routed request, without its ~7 us parse."""
    text = host.strip("[]")
    if text and text[-1].isdigit() and _IPV4.fullmatch(text) is not None:
        return True
    if ":" not in text:
        return False  # not IPv6 either, and not a dotted quad: a name (or garbage)
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _classify(host: str) -> tuple[str, HostKind]:
    """Classify and validate a host; IPv6 must be a bracketed reference (RFC 5118 §4.2)."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise _bad("IPv6 reference")
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise _bad("IPv6 reference") from None
        return inner, "ipv6"
    if not host:
        raise _bad("URI host")
    if host[-1].isdigit() and _IPV4.fullmatch(host):
        return host, "ipv4"
    if not _HOSTNAME_CHARS.issuperset(host) or host.startswith((".", "-")):
        raise _bad("URI host")
    return host, "name"


def split_host_port(hostport: str) -> tuple[str, HostKind, int | None]:
    """Parse `host[:port]` where host may be a bracketed IPv6 reference."""
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise _bad("IPv6 reference")
        host_text, rest = hostport[: close + 1], hostport[close + 1 :]
        if rest and not rest.startswith(":"):
            raise _bad("host and port")
    else:
        colon = hostport.find(":")
        host_text, rest = (hostport, "") if colon < 0 else (hostport[:colon], hostport[colon:])
    host, kind = _classify(host_text)
    port: int | None = None
    if rest:
        digits = rest[1:]
        if not digits.isdigit() or not digits.isascii() or len(digits) > 5:
            raise _bad("port")
        port = int(digits)
        if port > 65535:
            raise _bad("port")
    return host, kind, port


def _parse_params(text: str, what: str) -> tuple[tuple[str, str | None], ...]:
    """`;name[=value]...` → ordered pairs. Empty parameters are an error (RFC 4475 §3.1.2.1)."""
    if not text:
        return ()
    params = []
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if not name:
            raise _bad(what + " parameter")
        params.append((name, value if eq else None))
    return tuple(params)


def parse_uri_uncached(text: str) -> Uri:
    """Parse a URI as found in a Request-URI or inside `<...>` of a name-addr."""
    fast = _FAST_SIP.fullmatch(text)
    if fast is not None:
        return _from_fast_match(fast, text)
    if not text or not _FORBIDDEN_IN_URI.isdisjoint(text):
        raise _bad("URI")
    colon = text.find(":")
    if colon <= 0:
        raise _bad("URI scheme")
    scheme = text[:colon].lower()
    if not scheme[0].isalpha() or not _SCHEME_CHARS.issuperset(scheme):
        raise _bad("URI scheme")
    rest = text[colon + 1 :]
    if scheme in SIP_SCHEMES:
        return _parse_sip(scheme, rest, text)
    if scheme == "tel":
        number, _, params = rest.partition(";")
        if not number or not _TEL_CHARS.issuperset(number):
            raise _bad("tel URI")
        return TelUri(number, _parse_params(params, "tel URI"), text)
    if not rest:
        raise _bad("URI")
    return AbsoluteUri(scheme, text)


def _from_fast_match(match: re.Match[str], text: str) -> SipUri:
    scheme, user, password, host, port_text, params_text = match.groups()
    if host[0] == "[":
        host, kind = _classify(host)
    elif host[-1].isdigit() and _IPV4.fullmatch(host):
        kind = "ipv4"
    else:
        kind = "name"
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise _bad("port")
    return SipUri(
        scheme,
        user,
        password,
        host,
        kind,
        port,
        _parse_params(params_text[1:], "SIP URI") if params_text else (),
        None,
        text,
    )


def _parse_sip(scheme: str, rest: str, text: str) -> SipUri:
    # No unescaped '@' may appear in params, headers or host (§25.1: '@' is not in
    # paramchar, hvalue or hostname), so the first '@' ends the userinfo even when the
    # user part contains ';', '?' or ',' as RFC 4475 §3.1.1.3 (intmeth) exercises.
    at = rest.find("@")
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        if not user:
            raise _bad("SIP URI user")
        password = pw if sep else None
    rest, qmark, headers = rest.partition("?")
    hostport, _, params_text = rest.partition(";")
    host, kind, port = split_host_port(hostport)
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        host_kind=kind,
        port=port,
        params=_parse_params(params_text, "SIP URI"),
        headers=headers if qmark else None,
        text=text,
    )


# URIs recur across messages (the same phones, the same proxies): parse each one once.
parse_uri: Memo[Uri] = Memo(parse_uri_uncached)
