"""Which TCP/TLS connections the ALG accepts, and which it closes for idleness.

Sans-I/O: the shell (alg.aio) reports connections opened, used and closed, with an
explicit `now`, and asks what to refuse and what to close. Why limits at all: every
connection holds a file descriptor and a buffer; a peer that opens connections and
leaves them silent (or a TLS client that never finishes a message) would otherwise
exhaust the process's descriptors, and then no one can connect, not even the trunks.

* `max_total` connections in all, accepted ones and ours alike (Kamailio's
  tcp_max_connections); a connection accepted beyond it is closed at once.
* `max_per_source` accepted connections from one address: one misbehaving host cannot
  take them all. Our own outgoing connections are never refused here (the core chose
  to send), but they count towards the total.
* `idle_timeout` seconds without a byte either way closes a connection (Kamailio's
  tcp_connection_lifetime). A UA behind NAT that keeps a registration on its connection
  sends keep-alives (RFC 5626 §3.5.1 CRLF pings, answered by the shell), which count as
  traffic; 0 means never.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

REFUSED_TOTAL: Final = "tcp.refused.max_connections"
REFUSED_SOURCE: Final = "tcp.refused.per_source"
CLOSED_IDLE: Final = "tcp.closed.idle"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_total: int = 4096
    max_per_source: int = 64
    idle_timeout: float = 3600.0  # seconds; 0: never

    def __post_init__(self) -> None:
        if self.max_total < 1 or self.max_per_source < 1 or self.idle_timeout < 0:
            raise ValueError("connection limits must be positive (idle_timeout >= 0)")

    @property
    def sweep_interval(self) -> float | None:
        """How often the shell should ask `idle` (a quarter of the timeout, at most a
        minute, so a connection is closed at most 25 % late); None: never."""
        if not self.idle_timeout:
            return None
        return min(60.0, self.idle_timeout / 4)


@dataclass(slots=True)
class ConnectionTable:
    """The connections the shell holds, by its connection number."""

    limits: ConnectionLimits
    stats: Counter[str] = field(default_factory=Counter)
    _source: dict[int, str | None] = field(default_factory=dict)  # None: ours (outgoing)
    _last: dict[int, float] = field(default_factory=dict)
    _per_source: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self._source)

    def admit(self, number: int, source: str | None, now: float) -> bool:
        """A connection was opened: accepted from `source`, or ours when None. False:
        refuse it (close it at once); it is then not in the table."""
        if source is not None:
            if len(self._source) >= self.limits.max_total:
                self.stats[REFUSED_TOTAL] += 1
                return False
            if self._per_source[source] >= self.limits.max_per_source:
                self.stats[REFUSED_SOURCE] += 1
                return False
            self._per_source[source] += 1
        self._source[number] = source
        self._last[number] = now
        return True

    def used(self, number: int, now: float) -> None:
        if number in self._last:
            self._last[number] = now

    def closed(self, number: int) -> None:
        self._last.pop(number, None)
        source = self._source.pop(number, None)
        if source is not None:
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]

    def idle(self, now: float) -> list[int]:
        """The connections silent for `idle_timeout` or longer, to close. Each is
        reported once: it leaves the table's clock now, and its source's count when the
        shell reports it `closed`."""
        timeout = self.limits.idle_timeout
        if not timeout:
            return []
        stale = [number for number, last in self._last.items() if now - last >= timeout]
        for number in stale:
            del self._last[number]
        self.stats[CLOSED_IDLE] += len(stale)
        return stale
