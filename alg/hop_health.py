"""Next hops seen failing, tried last for a while: passive health of gateways.

A gateway that does not answer costs every call routed to it first a failover delay
([proxy] failover_timeout, or Timer B's 32 s without one). So a next hop (address, port)
that left a request without any response — nothing within the failover timeout, the
transaction timed out, or the connection could not be made (RFC 3261 §16.9) — is held
down for `hold_down` seconds: routing (alg.routing `RequestContext.unavailable`) puts
it after the healthy hops of the same route, so new calls go to those first, and it is
still tried when nothing else is left. Any response from it (even a 100 Trying, even a
503: it is alive and answering) clears it at once; otherwise it is tried first again
when the hold-down ends. This is Kamailio dispatcher's marking of destinations, without
the OPTIONS probing: the next call that reaches the hop is the probe.

Sans-I/O with an explicit `now`; shared by the core (which sees branches fail and
answer) and the router (which orders the hops).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

Hop = tuple[str, int]
_NONE: Final[frozenset[Hop]] = frozenset()


@dataclass(slots=True)
class HopHealth:
    hold_down: float = 30.0  # seconds; 0: nothing is ever held down
    stats: Counter[str] = field(default_factory=Counter)
    _until: dict[Hop, float] = field(default_factory=dict)

    def failed(self, host: str, port: int, now: float) -> None:
        if self.hold_down <= 0:
            return
        if (host, port) not in self._until:
            self.stats["hop.held_down"] += 1
        self._until[(host, port)] = now + self.hold_down

    def answered(self, host: str, port: int) -> None:
        if self._until and self._until.pop((host, port), None) is not None:
            self.stats["hop.back_up"] += 1

    def down(self, now: float) -> frozenset[Hop]:
        """The hops held down at `now` (for routing); expired ones are forgotten."""
        if not self._until:
            return _NONE
        expired = [hop for hop, until in self._until.items() if until <= now]
        for hop in expired:
            del self._until[hop]
        return frozenset(self._until)
