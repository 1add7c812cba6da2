"""Reversible masks for topology hiding: keyed tokens, the Via stash, the leak detector.

* `TokenTable` maps a text (a Contact or Record-Route URI, a Call-ID) to a token and back.
  The token is a keyed hash (HMAC-SHA256 with a per-process secret, truncated to 80 bits,
  base32): unguessable, so an outsider cannot forge a token that restores to an inside
  address of its choosing, and deterministic, so one Call-ID or Contact always gets the
  same token for the life of a dialog. The table is an LRU bounded by `capacity` entries
  with a `ttl` refreshed on every use: memory is bounded whatever the traffic, and a live
  dialog keeps its entries warm (each in-dialog message touches them).
* `ViaStash` keeps the Via values of the inside hops removed from a request sent
  outside (RFC 3261 §16.6 step 8 would have them visible) keyed by our branch; the
  response (§16.7 step 3 matches it by that branch) gets them back. Bounded the same way.
* `find_inside` looks for IP literals of the inside networks in any bytes: the last
  check before a message leaves for the outside.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

V = TypeVar("V")

TOKEN_PREFIX: Final = "sw-"
TOKEN_RE: Final = re.compile(r"sw-[a-z2-7]{16}")
_IPV4_RE: Final = re.compile(rb"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9])")
# Candidate IPv6 literals: runs of hex digits and colons with at least two colons.
_IPV6_RE: Final = re.compile(rb"(?<![0-9A-Za-z:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f.]{0,15}){2,8}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    """text <-> unguessable token (see the module docstring)."""

    def __init__(self, secret: bytes, *, capacity: int = 100_000, ttl: float = 7200.0) -> None:
        if len(secret) < 16:
            raise ValueError("the token secret needs at least 16 bytes")
        self._secret = secret
        self._lru: _Lru[str] = _Lru(capacity, ttl)

    def __len__(self) -> int:
        return len(self._lru)

    def token(self, text: str, now: float) -> str:
        mac = hmac.new(self._secret, text.encode("utf-8", "surrogateescape"), hashlib.sha256)
        token = TOKEN_PREFIX + base64.b32encode(mac.digest()[:10]).decode("ascii").lower()
        self._lru.put(token, text, now)
        return token

    def restore(self, token: str, now: float) -> str | None:
        return self._lru.get(token, now)

    def restore_all(self, text: str, now: float) -> str:
        """`text` with every known token replaced by its original (unknown ones kept)."""
        if TOKEN_PREFIX not in text:
            return text

        def swap(match: re.Match[str]) -> str:
            original = self._lru.get(match.group(0), now)
            return match.group(0) if original is None else original

        return TOKEN_RE.sub(swap, text)

    def key(self, *parts: str) -> bytes:
        """A keyed digest of `parts` (group ids, agent choice): not derivable outside."""
        joined = "\x00".join(parts).encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, b"key\x00" + joined, hashlib.sha256).digest()


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
    per literal is remembered (a call repeats the same few addresses; bounded)."""

    networks: tuple[Network, ...]
    _patterns: tuple[re.Pattern[bytes], ...] = field(init=False, repr=False, compare=False)
    _verdicts: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        versions = {net.version for net in self.networks}
        patterns = tuple(p for v, p in ((4, _IPV4_RE), (6, _IPV6_RE)) if v in versions)
        object.__setattr__(self, "_patterns", patterns)
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
        """The first inside IP literal in `data`, or None."""
        for pattern in self._patterns:
            for match in pattern.finditer(data):
                text = match.group(0).decode("ascii", "replace")
                if self.contains(text):
                    return text
        return None

    def predicate(self) -> Callable[[str], bool]:
        return self.contains
