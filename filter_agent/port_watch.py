"""Warn the operator before a public address runs out of ports (sans-I/O).

A port released by a call is quarantined (allocator.QUARANTINE_SECONDS) before it can be
reused, so a pool sized for the calls that are up can still run dry under a high call rate:
one address holds total / (call length + quarantine) new calls per second. When it is dry
reservations fail with NO_PORTS and the ALG fails calls over or answers 503. `PortWatch`
turns the allocator's counts into edges the service logs: LOW once the free share of an
(address, protocol) falls under `low`, OK once it is back at `ok` or more. The gap between
the two keeps a pool hovering at the threshold from logging on every poll.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filter_agent.allocator import PortUsage
from filter_agent.model import Protocol

LOW_FREE_SHARE = 0.10
OK_FREE_SHARE = 0.20


@dataclass(frozen=True)
class PortAlarm:
    address: str
    protocol: Protocol
    usage: PortUsage
    low: bool  # True: fell under the low mark; False: back over the ok mark


class PortWatch:
    def __init__(self, low: float = LOW_FREE_SHARE, ok: float = OK_FREE_SHARE) -> None:
        if not 0.0 <= low < ok <= 1.0:
            raise ValueError("need 0 <= low < ok <= 1")
        self.low = low
        self.ok = ok
        self._low: set[tuple[str, Protocol]] = set()

    def check(self, usages: Iterable[tuple[str, Protocol, PortUsage]]) -> list[PortAlarm]:
        """The alarms that start or end with these counts (each edge reported once)."""
        alarms: list[PortAlarm] = []
        for address, protocol, usage in usages:
            key = (address, protocol)
            share = usage.free / usage.total if usage.total else 0.0
            if key not in self._low and share < self.low:
                self._low.add(key)
                alarms.append(PortAlarm(address, protocol, usage, low=True))
            elif key in self._low and share >= self.ok:
                self._low.discard(key)
                alarms.append(PortAlarm(address, protocol, usage, low=False))
        return alarms
