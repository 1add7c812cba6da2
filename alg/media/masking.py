"""Reversible masks for topology hiding: sealed tokens, the Via stash, the leak detector.

* `TokenTable` turns a text (a Contact or Record-Route URI, a From/To host, a Call-ID) into
  a token and back. Despite the name (kept for its callers) it holds no table: the token
  *is* the text, sealed with AES-SIV (RFC 5297), the approach of Kamailio's topoh module
  with real authenticated encryption. Restoring needs only the key, so

  - no live dialog can lose its tokens to an eviction, however many calls are minted in
    between (an LRU of 100,000 entries overflowed within one session-refresh interval at a
    few tens of calls/s, and a long call's BYE or re-INVITE then could not be restored);
  - with `[media] secret_file` the tokens survive a restart of the ALG: the Contacts a
    provider holds for phones registered through us, and live dialogs, keep working.

  Why SIV: it is deterministic authenticated encryption without a nonce (RFC 5297 §4):
  the same text always gives the same token, so a Call-ID or a Contact keeps one token
  for the whole dialog (RFC 3261 §12.1: the remote target and the Call-ID of a dialog do
  not change under it); and it authenticates, so an outsider can neither read a token nor
  make one (tamper, truncate, guess) that restores to an inside address of its choosing:
  decryption fails (§2.7) and the token is left alone like any unknown one. What
  determinism gives away is only that equal tokens hide equal texts (§7), which the keyed
  hash before it gave away too. The kind of place (`uri`, `host`, `cid`) is associated
  data, a component of S2V's vector (§2.4), so a URI token never restores as a host.
  The SIV key (64 bytes: AES-256-SIV) comes from `secret` by HKDF (RFC 5869),
  domain-separated from `key()`'s HMAC of the secret.

  Encoding: lowercase RFC 4648 base32 without padding, behind the `sw-` prefix: tokens sit
  in URI user parts, in host labels and in Call-IDs, where the case may not be kept.
  A token is 16 bytes longer than its text (the synthetic IV, RFC 5297 §2.6), then 8/5 of
  that: a 25-byte URI gives a 69-character token. Texts are bounded (`MAX_TEXT_BYTES`; a
  longer one raises `TokenTooLong`), and so are the tokens accepted back
  (`MAX_TOKEN_CHARS`): a hostile message cannot make us decode and decrypt megabytes, and
  a token's candidates in a message never overlap, so the work stays linear in its size.
  A token costs about 4 us to make and 2.5 us to restore (AES-SIV about 1 us each, the
  rest base32), and an anchored call makes about ten and restores about ten: ~70 us of
  the media core's ~1,100 us (measured). Because SIV is deterministic, both directions
  are pure functions of the secret, so a bounded memo (`MEMO_ENTRIES` each way, cleared
  when full like `alg.sip.memo`) answers the repeats: a phone's Contact and host, a
  dialog's Call-ID in each of its requests, and every token we made coming back. It is a
  cache, not a table: a miss costs the sealing or opening it always did, and nothing
  depends on what it holds. Only successful restores are remembered, and a token
  remembered from sealing restores only for the kind it was sealed for.
* `ViaStash` keeps the Via values of the inside hops removed from a request sent
  outside (RFC 3261 §16.6 step 8 would have them visible) keyed by our branch; the
  response (§16.7 step 3 matches it by that branch) gets them back. An LRU bounded by
  `capacity` entries with a `ttl` refreshed on use: memory is bounded whatever the traffic.
* `find_inside` looks for IP literals of the inside networks in any bytes: the last
  check before a message leaves for the outside.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from alg.errors import AlgError

V = TypeVar("V")


def _base32_chars(size: int) -> int:
    """Characters of the unpadded base32 encoding of `size` bytes (RFC 4648 §6)."""
    return (size * 8 + 4) // 5


TOKEN_PREFIX: Final = "sw-"
_SIV_BYTES: Final = 16  # the synthetic IV V, which is also the tag (RFC 5297 §2.6)
MAX_TEXT_BYTES: Final = 512
MEMO_ENTRIES: Final = 4096  # per direction; at most ~4096 x 1.3 KB with the longest texts
MIN_TOKEN_CHARS: Final = len(TOKEN_PREFIX) + _base32_chars(_SIV_BYTES)
MAX_TOKEN_CHARS: Final = len(TOKEN_PREFIX) + _base32_chars(_SIV_BYTES + MAX_TEXT_BYTES)
# A token candidate: the prefix and a whole run of base32 characters of an acceptable
# length (possessive: a longer run is no token at all, not one with a tail).
TOKEN_PATTERN: Final = (
    f"{TOKEN_PREFIX}[a-z2-7]{{{MIN_TOKEN_CHARS - len(TOKEN_PREFIX)},"
    f"{MAX_TOKEN_CHARS - len(TOKEN_PREFIX)}}}+(?![a-z2-7])"
)
TOKEN_RE: Final = re.compile(TOKEN_PATTERN)
_BASE32: Final = "abcdefghijklmnopqrstuvwxyz234567"
_BASE32_PAIRS: Final = tuple(a + b for a in _BASE32 for b in _BASE32)  # 10 bits each
# Decoding goes through int(..., 32), whose digits are RFC 4648 §7's "base32hex" alphabet
# (0-9, a-v): 5x faster than base64.b32decode, and the padding bits are checked for free.
_TO_BASE32HEX: Final = str.maketrans(_BASE32, "0123456789abcdefghijklmnopqrstuv")
_BASE32_RUN: Final = re.compile("[a-z2-7]+")
_KDF_INFO: Final = b"sipwall media token AES-SIV v1"
_AD_LABEL: Final = b"sipwall token v1"
_IPV4_RE: Final = re.compile(rb"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9])")
# Candidate IPv6 literals: runs of hex digits and colons with at least two colons.
_IPV6_RE: Final = re.compile(rb"(?<![0-9A-Za-z:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f.]{0,15}){2,8}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# A network of more first octets than this is scanned with the pattern (see InsideNetworks).
_MAX_IPV4_STARTS: Final = 16


def _ipv4_starts(networks: tuple[Network, ...]) -> tuple[bytes, ...]:
    """The texts ("10.") every IPv4 literal of `networks` starts with; () when there is no
    IPv4 network or one allows too many first octets for the texts to be worth it."""
    octets: set[int] = set()
    for net in networks:
        if net.version != 4:
            continue
        low = int(net.network_address) >> 24
        high = int(net.broadcast_address) >> 24
        if high - low + 1 > _MAX_IPV4_STARTS:
            return ()
        octets.update(range(low, high + 1))
    return tuple(f"{octet}.".encode("ascii") for octet in sorted(octets))


class TokenTooLong(AlgError):
    """A text longer than `MAX_TEXT_BYTES` cannot become a token."""


def _base32_encode(data: bytes) -> str:
    """Unpadded lowercase base32 of `data` (RFC 4648 §6): five bytes at a time, as four
    10-bit pairs of characters (`base64.b32encode` is pure Python and slower)."""
    out: list[str] = []
    pairs = _BASE32_PAIRS
    for start in range(0, len(data), 5):
        group = int.from_bytes(data[start : start + 5].ljust(5, b"\0"), "big")
        out += (
            pairs[group >> 30],
            pairs[group >> 20 & 1023],
            pairs[group >> 10 & 1023],
            pairs[group & 1023],
        )
    return "".join(out)[: _base32_chars(len(data))]


def _base32_decode(text: str) -> bytes | None:
    """The bytes of unpadded lowercase base32 `text`, or None unless it is the canonical
    encoding of them (a length no byte count gives, or nonzero padding bits, is refused:
    one byte string, one token)."""
    size = len(text) * 5 // 8
    if _base32_chars(size) != len(text) or _BASE32_RUN.fullmatch(text) is None:
        return None
    spare = len(text) * 5 - size * 8
    value = int(text.translate(_TO_BASE32HEX), 32)
    if value & ((1 << spare) - 1):
        return None
    return (value >> spare).to_bytes(size, "big")


class _Lru(Generic[V]):
    """An LRU with a per-entry TTL (refreshed on use) and a hard capacity."""

    def __init__(self, capacity: int, ttl: float) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, value: V, now: float) -> None:
        self._items[key] = (now + self.ttl, value)
        self._items.move_to_end(key)
        self._trim(now)

    def get(self, key: str, now: float) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= now:
            del self._items[key]
            return None
        self._items[key] = (now + self.ttl, item[1])
        self._items.move_to_end(key)
        return item[1]

    def _trim(self, now: float) -> None:
        items = self._items
        while len(items) > self.capacity:
            items.popitem(last=False)
        while items:
            key, (expires, _) = next(iter(items.items()))
            if expires > now:
                break
            del items[key]


class TokenTable:
    """text <-> token, the token being the text sealed with AES-SIV (see the module
    docstring). `kind` names the place a token is for: a token of one kind does not
    restore as another. `now` is unused (there is nothing to expire); it stays in the
    signatures the callers use."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the token secret needs at least 16 bytes")
        self._secret = secret
        # key()'s HMAC keyed once: a one-shot HMAC asks OpenSSL 3 to fetch the algorithm
        # on every call, ~30 us when its tables are out of cache (perf); a copy does not.
        self._key_mac = hmac.new(secret, b"key\x00", hashlib.sha256)
        # HKDF (RFC 5869) keyed by a fixed salt over the secret; `key()` is HMAC keyed by
        # the secret itself: neither output says anything about the other.
        siv_key = HKDF(hashes.SHA256(), 64, salt=None, info=_KDF_INFO).derive(secret)
        self._siv = AESSIV(siv_key)
        # (kind, text) -> token and (kind, token) -> text; see the module docstring
        self._sealed: dict[tuple[str, str], str] = {}
        self._opened: dict[tuple[str, str], str] = {}

    def token(self, text: str, now: float, kind: str = "") -> str:
        key = (kind, text)
        known = self._sealed.get(key)
        if known is not None:
            return known
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > MAX_TEXT_BYTES:
            raise TokenTooLong(f"{len(data)} bytes to mask; at most {MAX_TEXT_BYTES}")
        sealed = self._siv.encrypt(data, [_AD_LABEL, kind.encode("utf-8", "surrogatepass")])
        token = TOKEN_PREFIX + _base32_encode(sealed)
        self._remember(self._sealed, key, token)
        self._remember(self._opened, (kind, token), text)
        return token

    @staticmethod
    def _remember(memo: dict[tuple[str, str], str], key: tuple[str, str], value: str) -> None:
        if len(memo) >= MEMO_ENTRIES:
            memo.clear()
        memo[key] = value

    def restore(self, token: str, now: float, kind: str = "") -> str | None:
        """The text `token` seals for `kind`; None for anything else (never raises)."""
        known = self._opened.get((kind, token))
        if known is not None:
            return known
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
            return None
        if not token.startswith(TOKEN_PREFIX):
            return None
        sealed = _base32_decode(token[len(TOKEN_PREFIX) :])
        if sealed is None:
            return None
        try:
            data = self._siv.decrypt(sealed, [_AD_LABEL, kind.encode("utf-8", "surrogatepass")])
        except InvalidTag:
            return None
        text = data.decode("utf-8", "surrogatepass")
        self._remember(self._opened, (kind, token), text)
        return text

    def restore_all(self, text: str, now: float, kind: str = "") -> str:
        """`text` with every token of `kind` replaced by its original (others kept)."""
        if TOKEN_PREFIX not in text:
            return text

        def swap(match: re.Match[str]) -> str:
            original = self.restore(match.group(0), now, kind)
            return match.group(0) if original is None else original

        return TOKEN_RE.sub(swap, text)

    def key(self, *parts: str) -> bytes:
        """A keyed digest of `parts` (group ids, agent choice): not derivable outside."""
        joined = "\x00".join(parts).encode("utf-8", "surrogateescape")
        mac = self._key_mac.copy()
        mac.update(joined)
        return mac.digest()


class ViaStash:
    """Inside Via values removed from requests sent outside, keyed by our branch."""

    def __init__(self, *, capacity: int = 50_000, ttl: float = 300.0) -> None:
        self._lru: _Lru[tuple[bytes, ...]] = _Lru(capacity, ttl)

    def __len__(self) -> int:
        return len(self._lru)

    def put(self, branch: str, vias: tuple[bytes, ...], now: float) -> None:
        self._lru.put(branch, vias, now)

    def get(self, branch: str, now: float) -> tuple[bytes, ...] | None:
        return self._lru.get(branch, now)


_VERDICTS_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class InsideNetworks:
    """The inside prefixes, and the leak scan every message leaving for the outside gets.

    The scan runs several times per message (whole message, Call-ID, From/To, SDP lines),
    so it is kept cheap: only the address families the inside uses are searched for (an
    IPv4-mapped IPv6 literal still shows its IPv4 part to the IPv4 pattern), and a verdict
    per literal is remembered (a call repeats the same few addresses; bounded).

    IPv4 goes faster still: a literal of an inside network starts with the text of a first
    octet that network allows and a dot ("10." for 10.0.0.0/8, "172." for 172.16.0.0/12),
    so those few texts are looked for with `bytes.find` (C, no regex step per byte) and
    the pattern is tried only where one starts a literal. That finds exactly what a scan
    of every literal would: a literal's first octet is written without leading zeros, or
    it is no address (`ipaddress` refuses them). A network wider than /4 has too many
    first octets; the whole-message pattern is kept for it."""

    networks: tuple[Network, ...]
    _patterns: tuple[re.Pattern[bytes], ...] = field(init=False, repr=False, compare=False)
    _ipv4_starts: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _verdicts: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        versions = {net.version for net in self.networks}
        starts = _ipv4_starts(self.networks)
        if starts:
            versions.discard(4)  # found by its first octets instead (`_find_ipv4`)
        patterns = tuple(p for v, p in ((4, _IPV4_RE), (6, _IPV6_RE)) if v in versions)
        object.__setattr__(self, "_patterns", patterns)
        object.__setattr__(self, "_ipv4_starts", starts)
        object.__setattr__(self, "_verdicts", {})

    @classmethod
    def of(cls, *networks: str) -> InsideNetworks:
        return cls(tuple(ipaddress.ip_network(net, strict=False) for net in networks))

    def contains(self, text: str) -> bool:
        verdict = self._verdicts.get(text)
        if verdict is None:
            try:
                address = ipaddress.ip_address(text.strip("[]"))
            except ValueError:
                verdict = False
            else:
                verdict = any(address in net for net in self.networks)
            if len(self._verdicts) >= _VERDICTS_LIMIT:
                self._verdicts.clear()
            self._verdicts[text] = verdict
        return verdict

    def find_in(self, data: bytes) -> str | None:
        """The first inside IP literal in `data`, or None (an IPv4 one before an IPv6 one)."""
        if self._ipv4_starts:
            found = self._find_ipv4(data)
            if found is not None:
                return found
        for pattern in self._patterns:
            for match in pattern.finditer(data):
                text = match.group(0).decode("ascii", "replace")
                if self.contains(text):
                    return text
        return None

    def _find_ipv4(self, data: bytes) -> str | None:
        """The first inside IPv4 literal, the pattern tried only where a first octet of ours
        occurs (its look-behind still sees the byte before: "110." is no "10.")."""
        first: str | None = None
        first_at = len(data)
        for start in self._ipv4_starts:
            at = data.find(start)
            while 0 <= at < first_at:
                match = _IPV4_RE.match(data, at)
                if match is not None and self.contains(text := match.group(0).decode("ascii")):
                    first, first_at = text, at
                    break
                at = data.find(start, at + 1)
        return first

    def predicate(self) -> Callable[[str], bool]:
        return self.contains
