"""Digest authentication for SIP (RFC 3261 §22, RFC 2617/7616, RFC 8760), sans-I/O.

Theory of operation
-------------------
A request without acceptable credentials gets a challenge; the client answers with
`response = H(H(user:realm:password) : nonce : nc : cnonce : qop : H(method:uri))`, and
the server recomputes it from a stored HA1 (never a password). Two roles (§22.1-22.3):

=======  ======  =========================  ====================
role     status  challenge header           credentials header
=======  ======  =========================  ====================
UAS      401     WWW-Authenticate           Authorization
PROXY    407     Proxy-Authenticate         Proxy-Authorization
=======  ======  =========================  ====================

The registrar is a UAS; a request leaving the inside through the proxy is challenged
with 407. Each challenge is offered once per algorithm, SHA-256 first (RFC 8760 §2:
most preferred first, so a client that knows SHA-256 uses it); qop is always "auth"
(RFC 7616 §3.3 makes it mandatory, and without qop there is no nonce-count to stop
replays).

Nonces are stateless: base64url(timestamp ‖ random ‖ HMAC(key, timestamp ‖ random ‖
realm)). Verifying one needs no table, only the keys; the newest key signs, older keys
still verify, so `rotate_key()` does not invalidate nonces in flight. A nonce older than
`nonce_lifetime` is stale: if the digest was otherwise right the client is re-challenged
with `stale=TRUE` (RFC 7616 §3.3) so it retries without asking its user again.

Replays: a nonce alone proves nothing, the nonce-count does. For each nonce in use the
authenticator keeps the highest nc seen and a bitmap of the `nc_window` counts below it
(the IPsec anti-replay window: a UA may send several requests concurrently, so counts may
arrive out of order, but each is accepted once). The table is bounded: when it is full
the first-used entry is evicted and a watermark remembers its timestamp; an untracked
nonce not newer than the watermark is treated as stale, so eviction never reopens a
replay. Keys that live only in memory make a restart invalidate every nonce (stale), the
same property across restarts.

Verification order matters: the digest is checked before the nonce-count is recorded, so
an attacker cannot burn counts with forged requests, and `stale=TRUE` is only sent to a
client that proved it knows the password.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from alg.errors import DigestParseError, SipParseError
from alg.sip.message import SipMessage
from alg.sip.uri import TOKEN_TEXT, SipUri, parse_uri

Headers = tuple[tuple[str, bytes], ...]


class Algorithm(enum.Enum):
    """Digest algorithms offered and accepted (RFC 8760 §2); no -sess variants."""

    SHA256 = "SHA-256"
    MD5 = "MD5"

    def digest(self, text: str) -> str:
        data = text.encode("utf-8", "surrogateescape")
        if self is Algorithm.MD5:
            return hashlib.md5(data, usedforsecurity=False).hexdigest()
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def named(cls, name: str | None) -> Algorithm | None:
        """The algorithm of an `algorithm=` value; absent means MD5 (RFC 2617 §3.2.1)."""
        if name is None:
            return cls.MD5
        for algorithm in cls:
            if algorithm.value.lower() == name.lower():
                return algorithm
        return None


class Role(enum.Enum):
    UAS = "uas"
    PROXY = "proxy"


@dataclass(frozen=True, slots=True)
class _RoleSpec:
    status: int
    reason: str
    challenge_header: str
    credentials_header: str  # canonical lower-case name, as SipMessage indexes it


ROLES: Final[Mapping[Role, _RoleSpec]] = {
    Role.UAS: _RoleSpec(401, "Unauthorized", "WWW-Authenticate", "authorization"),
    Role.PROXY: _RoleSpec(
        407, "Proxy Authentication Required", "Proxy-Authenticate", "proxy-authorization"
    ),
}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who proved they know the password: the digest username within a realm."""

    username: str
    realm: str


# --- digest arithmetic (RFC 7616 §3.4.1-3.4.3) -----------------------------------------


def compute_ha1(algorithm: Algorithm, username: str, realm: str, password: str) -> str:
    return algorithm.digest(f"{username}:{realm}:{password}")


def compute_response(  # noqa: PLR0917
    algorithm: Algorithm,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest. With qop=auth per RFC 7616 §3.4.1; without qop the RFC 2069
    form RFC 2617 §3.2.2.1 keeps for compatibility."""
    ha2 = algorithm.digest(f"{method}:{uri}")
    if qop is None:
        return algorithm.digest(f"{ha1}:{nonce}:{ha2}")
    return algorithm.digest(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --- parsing credentials (RFC 3261 §25.1 "credentials"; RFC 7235 §2.1) ------------------


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """The parameters of one `Digest` credentials value (quotes and escapes resolved)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None
    userhash: bool = False


_WS: Final = " \t\r\n"
_REQUIRED: Final = ("username", "realm", "nonce", "uri", "response")
_HEX: Final = frozenset("0123456789abcdefABCDEF")


def _scan_params(text: str) -> dict[str, str]:
    """`name = (token / quoted-string)` separated by commas, LWS around both (§25.1)."""
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and (text[i] in _WS or text[i] == ","):
            i += 1  # empty list elements are allowed (RFC 7230 §7)
        if i >= n:
            return params
        start = i
        while i < n and text[i] in TOKEN_TEXT:
            i += 1
        name = text[start:i].lower()
        while i < n and text[i] in _WS:
            i += 1
        if not name or i >= n or text[i] != "=":
            raise DigestParseError("Malformed Digest credentials")
        i += 1
        while i < n and text[i] in _WS:
            i += 1
        if i < n and text[i] == '"':
            value, i = _quoted(text, i)
        else:
            start = i
            while i < n and text[i] in TOKEN_TEXT:
                i += 1
            value = text[start:i]
            if not value:
                raise DigestParseError("Malformed Digest credentials")
        if name in params:
            raise DigestParseError(f"Duplicate Digest parameter {name}")
        params[name] = value
        while i < n and text[i] in _WS:
            i += 1
        if i < n and text[i] != ",":
            raise DigestParseError("Malformed Digest credentials")


def _quoted(text: str, start: int) -> tuple[str, int]:
    """A quoted-string opening at `start`: its unescaped content and the next index."""
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            out.append(text[i + 1])  # quoted-pair: the escaped character itself
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise DigestParseError("Unterminated quoted string in credentials")


def parse_credentials(value: str | bytes) -> DigestCredentials | None:
    """Parse one Authorization/Proxy-Authorization value.

    Returns None for any scheme other than Digest (RFC 4475 §3.3.7, regaut01: an
    unknown scheme is as good as no credentials), raises `DigestParseError` for a Digest
    value that is malformed. Unknown parameters are ignored (RFC 7616 §3.4)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    text = value.strip(_WS)
    end = 0
    while end < len(text) and text[end] in TOKEN_TEXT:
        end += 1
    if text[:end].lower() != "digest" or (end < len(text) and text[end] not in _WS):
        return None
    params = _scan_params(text[end:])
    missing = [name for name in _REQUIRED if name not in params]
    if missing:
        raise DigestParseError(f"Digest credentials lack {', '.join(missing)}")
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None and (nc is None or cnonce is None):
        raise DigestParseError("Digest credentials with qop lack nc or cnonce")  # §3.4
    if nc is not None and (len(nc) != 8 or not _HEX.issuperset(nc)):
        raise DigestParseError("Malformed nonce-count")  # nc-value = 8LHEX
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm"),
        cnonce=cnonce,
        nc=nc,
        qop=qop,
        opaque=params.get("opaque"),
        userhash=params.get("userhash", "false").lower() == "true",
    )


# --- where HA1s come from -------------------------------------------------------------


class CredentialSource(Protocol):
    def ha1(self, username: str, realm: str, algorithm: Algorithm) -> str | None:
        """The stored HA1 of this user for this algorithm, or None (unknown, disabled)."""
        ...


class PasswordCredentials:
    """HA1 computed from plaintext passwords held in memory (tests, small labs)."""

    def __init__(self, passwords: Mapping[tuple[str, str], str]) -> None:
        self._passwords = dict(passwords)  # (username, realm) -> password

    def ha1(self, username: str, realm: str, algorithm: Algorithm) -> str | None:
        password = self._passwords.get((username, realm))
        if password is None:
            return None
        return compute_ha1(algorithm, username, realm, password)


# --- outcomes -------------------------------------------------------------------------


class Cause(enum.Enum):
    """Why a request was challenged (for logs and counters; never sent on the wire)."""

    NO_CREDENTIALS = "no credentials for this realm"
    UNSUPPORTED = "unsupported algorithm or qop"
    BAD_NONCE = "nonce not issued by us"
    STALE_NONCE = "nonce expired"
    UNKNOWN_USER = "unknown or disabled user"
    BAD_RESPONSE = "wrong digest response"
    REPLAY = "nonce-count already used"


@dataclass(frozen=True, slots=True)
class Authenticated:
    identity: Identity
    algorithm: Algorithm


@dataclass(frozen=True, slots=True)
class Challenge:
    """Answer with `status reason` and these header fields (one per algorithm)."""

    status: int
    reason: str
    headers: Headers
    cause: Cause
    stale: bool = False


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """The credentials are malformed: answer `status reason` without a challenge."""

    status: int
    reason: str


AuthResult = Authenticated | Challenge | AuthFailure


# --- nonces ---------------------------------------------------------------------------

_TS: Final = struct.Struct(">Q")
_SALT_LEN: Final = 12
_MAC_LEN: Final = 16
_NONCE_LEN: Final = _TS.size + _SALT_LEN + _MAC_LEN


@dataclass(frozen=True, slots=True)
class DigestPolicy:
    nonce_lifetime: int = 300  # seconds a nonce stays fresh
    clock_skew: int = 5  # a nonce "from the future" by more than this is not ours
    algorithms: tuple[Algorithm, ...] = (Algorithm.SHA256, Algorithm.MD5)
    max_tracked_nonces: int = 100_000
    nc_window: int = 64
    max_keys: int = 3

    def __post_init__(self) -> None:
        if self.nonce_lifetime <= 0 or self.clock_skew < 0 or not self.algorithms:
            raise ValueError("invalid digest policy")
        if self.max_tracked_nonces < 1 or self.nc_window < 1 or self.max_keys < 1:
            raise ValueError("invalid digest policy")


@dataclass(slots=True)
class _NonceUse:
    issued_at: int
    highest: int = 0  # highest nonce-count accepted
    seen: int = 0  # bit i: count (highest - i) accepted


class DigestAuthenticator:
    """Challenges and verifies requests for one role; realms are per call."""

    def __init__(
        self,
        credentials: CredentialSource,
        keys: Sequence[bytes],
        role: Role = Role.UAS,
        policy: DigestPolicy | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if not keys or any(len(key) < 16 for key in keys):
            raise ValueError("need at least one nonce key of 16 bytes or more")
        self.credentials = credentials
        self.role = role
        self.policy = policy or DigestPolicy()
        self._keys = list(keys)[: self.policy.max_keys]
        self._token_bytes = token_bytes
        self._uses: dict[str, _NonceUse] = {}
        self._watermark = -1  # timestamps at or below it may have lost their tracking

    # --- keys and nonces ----------------------------------------------------------

    def rotate_key(self, key: bytes) -> None:
        """Sign with `key` from now on; the previous keys still verify."""
        if len(key) < 16:
            raise ValueError("nonce keys need 16 bytes or more")
        self._keys = [key, *self._keys][: self.policy.max_keys]

    def make_nonce(self, realm: str, now: float) -> str:
        head = _TS.pack(int(now)) + self._token_bytes(_SALT_LEN)
        mac = self._mac(self._keys[0], head, realm)
        return base64.urlsafe_b64encode(head + mac).decode("ascii")

    @staticmethod
    def _mac(key: bytes, head: bytes, realm: str) -> bytes:
        data = head + realm.encode("utf-8", "surrogateescape")
        return hmac.new(key, data, hashlib.sha256).digest()[:_MAC_LEN]

    def _nonce_time(self, nonce: str, realm: str) -> int | None:
        """The issue time of a nonce we signed for this realm, else None."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return None
        if len(raw) != _NONCE_LEN:
            return None
        head, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        if not any(hmac.compare_digest(mac, self._mac(k, head, realm)) for k in self._keys):
            return None
        issued_at: int = _TS.unpack(head[: _TS.size])[0]
        return issued_at

    # --- challenges ---------------------------------------------------------------

    def challenge(
        self, realm: str, now: float, *, stale: bool = False, cause: Cause = Cause.NO_CREDENTIALS
    ) -> Challenge:
        spec = ROLES[self.role]
        nonce = self.make_nonce(realm, now)
        quoted_realm = realm.replace("\\", "\\\\").replace('"', '\\"')
        headers = tuple(
            (
                spec.challenge_header,
                (
                    f'Digest realm="{quoted_realm}", nonce="{nonce}", '
                    f'algorithm={algorithm.value}, qop="auth"' + (", stale=TRUE" if stale else "")
                ).encode("utf-8", "surrogateescape"),
            )
            for algorithm in self.policy.algorithms
        )
        return Challenge(spec.status, spec.reason, headers, cause, stale)

    # --- verification -------------------------------------------------------------

    def verify(self, msg: SipMessage, realm: str, now: float) -> AuthResult:
        """Authenticate a request for `realm` (steps in the module docstring)."""
        spec = ROLES[self.role]
        try:
            found = [parse_credentials(v) for v in msg.header_values(spec.credentials_header)]
        except SipParseError as exc:
            return AuthFailure(exc.status, exc.reason)
        mine = [c for c in found if c is not None and c.realm == realm]
        if not mine:
            return self.challenge(realm, now)
        creds = mine[0]
        algorithm = Algorithm.named(creds.algorithm)
        if (
            algorithm is None
            or algorithm not in self.policy.algorithms
            or creds.qop != "auth"
            or creds.userhash
        ):
            return self.challenge(realm, now, cause=Cause.UNSUPPORTED)
        issued_at = self._nonce_time(creds.nonce, realm)
        if issued_at is None or issued_at > now + self.policy.clock_skew:
            return self.challenge(realm, now, cause=Cause.BAD_NONCE)
        if not _same_uri(creds.uri, msg):
            return AuthFailure(400, "Digest URI Mismatch")  # RFC 2617 §3.2.2.5
        ha1 = self.credentials.ha1(creds.username, realm, algorithm)
        if ha1 is None:
            return self.challenge(realm, now, cause=Cause.UNKNOWN_USER)
        expected = compute_response(
            algorithm, ha1, creds.nonce, msg.method, creds.uri, creds.qop, creds.nc, creds.cnonce
        )
        if not hmac.compare_digest(expected.encode(), creds.response.lower().encode()):
            return self.challenge(realm, now, cause=Cause.BAD_RESPONSE)
        # The client knows the password from here on.
        expired = now - issued_at > self.policy.nonce_lifetime
        untracked = creds.nonce not in self._uses and issued_at <= self._watermark
        if expired or untracked:
            return self.challenge(realm, now, stale=True, cause=Cause.STALE_NONCE)
        if not self._count(creds.nonce, issued_at, int(creds.nc or "0", 16)):
            return self.challenge(realm, now, cause=Cause.REPLAY)
        return Authenticated(Identity(creds.username, realm), algorithm)

    def _count(self, nonce: str, issued_at: int, nc: int) -> bool:
        """Accept each nonce-count once within the window (see module docstring)."""
        if nc < 1:
            return False
        use = self._uses.get(nonce)
        if use is None:
            use = self._uses[nonce] = _NonceUse(issued_at)
            while len(self._uses) > self.policy.max_tracked_nonces:
                evicted = self._uses.pop(next(iter(self._uses)))
                self._watermark = max(self._watermark, evicted.issued_at)
        window = self.policy.nc_window
        if nc > use.highest:
            use.seen = ((use.seen << (nc - use.highest)) | 1) & ((1 << window) - 1)
            use.highest = nc
            return True
        offset = use.highest - nc
        if offset >= window or use.seen & (1 << offset):
            return False
        use.seen |= 1 << offset
        return True

    def purge(self, now: float) -> int:
        """Forget counts of nonces that are stale anyway; returns how many."""
        limit = now - self.policy.nonce_lifetime
        old = [nonce for nonce, use in self._uses.items() if use.issued_at < limit]
        for nonce in old:
            del self._uses[nonce]
        return len(old)


def _same_uri(digest_uri: str, msg: SipMessage) -> bool:
    """digest-uri names the Request-URI (RFC 3261 §22.4: the Request-URI as sent);
    compared as text, then by scheme, user, host and port when both are SIP URIs."""
    request_text = getattr(msg.start_line, "uri_text", None)
    if request_text is None:
        return False
    if digest_uri == request_text:
        return True
    try:
        a, b = parse_uri(digest_uri), parse_uri(request_text)
    except SipParseError:
        return False
    if isinstance(a, SipUri) and isinstance(b, SipUri):
        return (a.scheme, a.user, a.host.lower(), a.port) == (
            b.scheme,
            b.user,
            b.host.lower(),
            b.port,
        )
    return False
