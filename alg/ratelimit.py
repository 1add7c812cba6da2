"""Per-source request rate limiting for the proxy's DoS protection (sans-I/O).

Theory of operation
-------------------
The seed talk's proxy is the sole point of entry and must "absorb bursts": each source
address gets three token buckets (INVITE, REGISTER, everything else), refilled at a
steady rate up to a burst size. A request that finds a token is allowed. One that finds
none is answered `503 Service Unavailable` with a Retry-After (RFC 3261 §21.5.4,
§20.33) telling a well-behaved client when it will be served. A source that keeps
sending anyway runs into debt; beyond `drop_after` bursts of debt its requests are
dropped silently, because answering a flood would amplify it, and it must fall silent
(the debt refills too) before it is served again.

Memory is bounded: sources live in an LRU of at most `max_sources` entries, so a flood
with spoofed source addresses evicts the oldest entries instead of growing the table.
An evicted source comes back with full buckets, which is the fail-open choice for real
clients. An optional aggregate bucket caps the total rate whatever the source, so the
flood that churns the LRU still cannot push more than that rate into the core. IPv6
sources are keyed by their /64 (`source_key`): one host usually owns a whole /64.

Every method is O(1) and takes the time as `now` (seconds, monotonic).
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final, Literal

BadReason = Literal["malformed", "oversize"]


class MethodClass(enum.IntEnum):
    INVITE = 0
    REGISTER = 1
    OTHER = 2


def classify(method: str) -> MethodClass:
    """The bucket a method draws from (methods are case-sensitive, RFC 3261 §7.1)."""
    if method == "INVITE":
        return MethodClass.INVITE
    if method == "REGISTER":
        return MethodClass.REGISTER
    return MethodClass.OTHER


def source_key(address: str) -> str:
    """The key of a source address: IPv4 as is, IPv6 by its /64 prefix."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return address


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError("a rate needs per_second > 0 and burst >= 1")


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    invite: Rate = Rate(5.0, 20.0)
    register: Rate = Rate(2.0, 10.0)
    other: Rate = Rate(20.0, 100.0)
    drop_after: float = 1.0  # debt, in bursts, beyond which a source is dropped silently
    max_sources: int = 65536
    aggregate: Rate | None = None  # all sources together, all methods

    def __post_init__(self) -> None:
        if self.max_sources < 1 or self.drop_after < 0:
            raise ValueError("max_sources must be >= 1 and drop_after >= 0")

    def rate(self, cls: MethodClass) -> Rate:
        return (self.invite, self.register, self.other)[cls]


@dataclass(frozen=True, slots=True)
class Allow:
    pass


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer 503 with `Retry-After: retry_after` (whole seconds, RFC 3261 §20.33)."""

    status: int
    retry_after: int


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Decision = Allow | Reject | Drop
ALLOW: Final = Allow()


@dataclass(frozen=True, slots=True)
class ClassCounts:
    invite: int = 0
    register: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.invite + self.register + self.other


@dataclass(frozen=True, slots=True)
class RateLimitStats:
    accepted: ClassCounts = field(default_factory=ClassCounts)
    rejected: ClassCounts = field(default_factory=ClassCounts)
    dropped: ClassCounts = field(default_factory=ClassCounts)
    malformed: int = 0
    oversize: int = 0
    evicted: int = 0  # sources pushed out of the table by newer ones
    sources: int = 0  # sources tracked now


class _Buckets:
    """Tokens of one source's three buckets, refilled together from one timestamp."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, config: RateLimitConfig, now: float) -> None:
        self.tokens = [config.invite.burst, config.register.burst, config.other.burst]
        self.stamp = now


class RateLimiter:
    def __init__(self, config: RateLimitConfig | None = None) -> None:
        self.config = config or RateLimitConfig()
        self._sources: OrderedDict[Hashable, _Buckets] = OrderedDict()
        self._aggregate = self.config.aggregate.burst if self.config.aggregate else 0.0
        self._aggregate_stamp: float | None = None
        self._counts = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]  # accepted, rejected, dropped
        self._bad = {"malformed": 0, "oversize": 0}
        self._evicted = 0

    def __len__(self) -> int:
        return len(self._sources)

    def check(self, source: Hashable, method: str, now: float) -> Decision:
        """Decide on one well-formed request from `source`; counts it."""
        cls = classify(method)
        decision = self._take(source, cls, now)
        if isinstance(decision, Allow):
            wait = self._take_aggregate(now)
            if wait is not None:
                # The source is within its limit but everyone together is not: refuse
                # without blaming (charging) this source.
                self._buckets(source, now).tokens[cls] += 1
                decision = Reject(503, wait)
        kind = 0 if isinstance(decision, Allow) else 1 if isinstance(decision, Reject) else 2
        self._counts[kind][cls] += 1
        return decision

    def note_bad(self, source: Hashable, reason: BadReason, now: float) -> Decision:
        """Count a malformed or oversize message; it costs the source an OTHER token, so
        a stream of garbage is throttled and then dropped like any flood. `Allow` means
        the shell may answer it (400/413), anything else means stay silent."""
        self._bad[reason] += 1
        return self._take(source, MethodClass.OTHER, now)

    def stats(self) -> RateLimitStats:
        accepted, rejected, dropped = (ClassCounts(*row) for row in self._counts)
        return RateLimitStats(
            accepted,
            rejected,
            dropped,
            self._bad["malformed"],
            self._bad["oversize"],
            self._evicted,
            len(self._sources),
        )

    def _buckets(self, source: Hashable, now: float) -> _Buckets:
        buckets = self._sources.get(source)
        if buckets is None:
            buckets = self._sources[source] = _Buckets(self.config, now)
            if len(self._sources) > self.config.max_sources:
                self._sources.popitem(last=False)
                self._evicted += 1
            return buckets
        self._sources.move_to_end(source)
        elapsed = now - buckets.stamp
        if elapsed > 0:  # a clock that steps back refills nothing
            cfg = self.config
            tokens = buckets.tokens
            for cls, rate in enumerate((cfg.invite, cfg.register, cfg.other)):
                tokens[cls] = min(rate.burst, tokens[cls] + elapsed * rate.per_second)
            buckets.stamp = now
        return buckets

    def _take(self, source: Hashable, cls: MethodClass, now: float) -> Decision:
        buckets = self._buckets(source, now)
        rate = self.config.rate(cls)
        tokens = buckets.tokens[cls]
        if tokens >= 1:
            buckets.tokens[cls] = tokens - 1
            return ALLOW
        floor = -rate.burst * self.config.drop_after
        if tokens - 1 < floor:
            buckets.tokens[cls] = floor  # the debt is capped: silence always redeems
            return Drop("flood")
        buckets.tokens[cls] = tokens - 1
        return Reject(503, _retry_after(1 - buckets.tokens[cls], rate))

    def _take_aggregate(self, now: float) -> int | None:
        """None if the aggregate bucket had a token, else the seconds until it has one."""
        rate = self.config.aggregate
        if rate is None:
            return None
        stamp = self._aggregate_stamp
        if stamp is not None and now > stamp:
            self._aggregate = min(rate.burst, self._aggregate + (now - stamp) * rate.per_second)
        if stamp is None or now > stamp:
            self._aggregate_stamp = now
        if self._aggregate >= 1:
            self._aggregate -= 1
            return None
        return _retry_after(1 - self._aggregate, rate)


def _retry_after(missing: float, rate: Rate) -> int:
    """Whole seconds until `missing` tokens have refilled (at least 1)."""
    return max(1, math.ceil(missing / rate.per_second))
