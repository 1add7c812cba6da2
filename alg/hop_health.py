"""Next hops seen failing, tried last for a while: passive health of gateways.

Only the next hops of the route table are watched (`watch`, again at every reload), and
for those given by name the addresses they last resolved to (alg.edge): a phone that
does not answer is not a gateway, and offline phones must not fill a table or be probed
forever.

A gateway that does not answer costs every call routed to it first a failover delay
([proxy] failover_timeout, or Timer B's 32 s without one). So a next hop (address, port)
that left a request without any response — nothing within the failover timeout, the
transaction timed out, or the connection could not be made (RFC 3261 §16.9) — is held
down for `hold_down` seconds: routing (alg.routing `RequestContext.unavailable`) puts
it after the healthy hops of the same route, so new calls go to those first, and it is
still tried when nothing else is left. Any response from it (even a 100 Trying, even a
503: it is alive and answering) clears it at once; otherwise it is tried first again
when the hold-down ends.

While it is down the core probes it with an OPTIONS every `probe_interval` seconds
(RFC 3261 §11; Kamailio dispatcher's probing): an answer brings it back before the
hold-down ends, a probe left unanswered holds it down again. Probes go to the address,
port and transport the failed request went to.

Sans-I/O with an explicit `now`; shared by the core (which sees branches fail and
answer) and the router (which orders the hops).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from alg.proxy_model import Endpoint

Hop = tuple[str, int]
_NONE: Final[frozenset[Hop]] = frozenset()


@dataclass(slots=True)
class HopHealth:
    hold_down: float = 30.0  # seconds; 0: nothing is ever held down
    probe_interval: float = 10.0  # seconds between OPTIONS probes of a down hop; 0: none
    stats: Counter[str] = field(default_factory=Counter)
    watched: frozenset[Hop] = frozenset()  # the route table's next hops
    _until: dict[Hop, float] = field(default_factory=dict)
    _probe: dict[Hop, tuple[float, Endpoint]] = field(default_factory=dict)

    def watch(self, hops: frozenset[Hop]) -> None:
        """The next hops to watch from now on (a reloaded route table); the others are
        forgotten."""
        self.watched = hops
        for hop in [hop for hop in self._until if hop not in hops]:
            del self._until[hop]
            self._probe.pop(hop, None)

    def failed(self, endpoint: Endpoint, now: float) -> None:
        hop = (endpoint.host, endpoint.port)
        if self.hold_down <= 0 or hop not in self.watched:
            return
        if hop not in self._until:
            self.stats["hop.held_down"] += 1
            if self.probe_interval > 0:
                self._probe[hop] = (now + self.probe_interval, endpoint)
        self._until[hop] = now + self.hold_down

    def answered(self, host: str, port: int) -> None:
        if self._until and self._until.pop((host, port), None) is not None:
            self._probe.pop((host, port), None)
            self.stats["hop.back_up"] += 1

    def down(self, now: float) -> frozenset[Hop]:
        """The hops held down at `now` (for routing); expired ones are forgotten."""
        if not self._until:
            return _NONE
        expired = [hop for hop, until in self._until.items() if until <= now]
        for hop in expired:
            del self._until[hop]
            self._probe.pop(hop, None)
        return frozenset(self._until)

    def next_probe(self) -> float | None:
        if not self._probe:
            return None
        return min(at for at, _ in self._probe.values())

    def probes_due(self, now: float) -> list[Endpoint]:
        """The down hops to probe now (each then waits `probe_interval` for its next)."""
        if not self._probe:
            return []
        due: list[Endpoint] = []
        for hop, (at, endpoint) in list(self._probe.items()):
            if at > now:
                continue
            if self._until.get(hop, 0.0) <= now:  # its hold-down is over: no more probes
                del self._probe[hop]
                continue
            self._probe[hop] = (now + self.probe_interval, endpoint)
            due.append(endpoint)
        self.stats["hop.probes"] += len(due)
        return due
