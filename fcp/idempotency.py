"""Idempotency keys: a retried request returns the first result instead of acting twice.

A client that lost the answer to ReserveBinding (timeout, reconnect) cannot know whether
the agent allocated ports; without keys a retry would leak a second binding until its
lifetime ran out. PCP solves the same problem by making MAP requests idempotent per
internal endpoint and nonce (RFC 6887 §11.2); FCP uses an explicit key per request, as
HTTP APIs do.

The cache is keyed by (owner, key) so two owners cannot collide or observe each other.
The stored fingerprint is the request with its key removed: the same key with a different
request is a client bug and answers CONFLICT rather than silently returning an unrelated
result. Only successes are remembered; a failed request may be retried and may succeed.
Pure and clock-driven (every method takes `now`), so a backend can snapshot it inside a
transaction by `copy()`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fcp.errors import FcpError, Reason

R = TypeVar("R")

# Five times the longest retry span of `fcp.client` (4 attempts of up to 5 s, backoff up
# to 2 s): a retry is never later than that, and each remembered result costs memory.
DEFAULT_TTL_SECONDS = 120.0


@dataclass(frozen=True, slots=True)  # one per remembered operation: no __dict__ each
class _Entry(Generic[R]):
    fingerprint: Hashable
    result: R
    expires_at: float


class IdempotencyCache(Generic[R]):
    """Remembers results by (owner, idempotency key) for `ttl` seconds."""

    def __init__(self, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self._ttl = ttl
        self._entries: dict[tuple[str, str], _Entry[R]] = {}

    def lookup(self, owner: str, key: str | None, fingerprint: Hashable, now: float) -> R | None:
        """The remembered result, None if the key is new; CONFLICT if reused differently."""
        if key is None:
            return None
        entry = self._entries.get((owner, key))
        if entry is None or entry.expires_at <= now:
            return None
        if entry.fingerprint != fingerprint:
            raise FcpError(
                Reason.CONFLICT,
                f"idempotency key {key!r} was already used for a different request",
                field="idempotency_key",
            )
        return entry.result

    def remember(
        self, owner: str, key: str | None, fingerprint: Hashable, result: R, now: float
    ) -> None:
        if key is not None:
            # popped first, so the dict's order stays the order of the deadlines (all are
            # `now + ttl`, on a clock that does not go back) and `expire` reads its front
            self._entries.pop((owner, key), None)
            self._entries[(owner, key)] = _Entry(fingerprint, result, now + self._ttl)

    def expire(self, now: float) -> None:
        """Forget what expired: O(expired), not O(remembered) (an agent under load holds
        ttl x operations/s records, and its timer calls this)."""
        entries = self._entries
        while entries:
            name, entry = next(iter(entries.items()))
            if entry.expires_at > now:
                return
            del entries[name]

    def forget_owner(self, owner: str) -> None:
        for name in [k for k in self._entries if k[0] == owner]:
            del self._entries[name]

    def copy(self) -> IdempotencyCache[R]:
        clone: IdempotencyCache[R] = IdempotencyCache(self._ttl)
        clone._entries = dict(self._entries)
        return clone

    def __len__(self) -> int:
        return len(self._entries)
