"""The per-request state of the stateful proxy: server side and client branches.

A `ServerSide` is one received request: its server transaction, the response context of
§16.7 and what serial forking still has to try. A `ClientBranch` is one forwarded copy
(or a CANCEL we generated), with Timer C (§16.6 step 11). Both expose `deadline()` and
the `scheduled` slot the core's timer heap uses.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from alg.forwarding import RoutePlan
from alg.proxy_model import Endpoint, Target
from alg.response_context import ResponseContext
from alg.sip import SipMessage, parse_message
from alg.transaction_keys import ClientKey, LegacyServerKey, ServerKey
from alg.transactions import Transaction


@dataclass(eq=False, slots=True)
class ServerSide:
    """A server transaction and the response context of the request it received."""

    key: ServerKey | LegacyServerKey
    txn: Transaction
    request: SipMessage
    source: Endpoint
    to_tag: str
    context: ResponseContext[SipMessage] = field(default_factory=ResponseContext)
    branches: list[ClientBranch] = field(default_factory=list)
    last_response: bytes | None = None
    scheduled: float | None = None
    # serial forking (failover): targets still to try, and how to build their requests
    serial: list[Target] = field(default_factory=list)
    routes: RoutePlan | None = None
    record_route: bool = False

    def deadline(self) -> float | None:
        return self.txn.get_timer()


@dataclass(eq=False, slots=True)
class ClientBranch:
    """A client transaction: one forwarded copy of a request (or our own CANCEL)."""

    number: int
    key: ClientKey
    txn: Transaction
    data: bytes  # the request as sent
    destination: Endpoint
    server: ServerSide | None  # None for a CANCEL we generated
    provisional: bool = False
    cancel_wanted: bool = False
    cancelled: bool = False
    timer_c: float | None = None
    # serial forking: give up on this target if it has not answered at all by then
    # ([proxy] failover_timeout); None once it answered or with no target left to try
    failover_at: float | None = None
    scheduled: float | None = None
    _request: SipMessage | None = None

    @property
    def request(self) -> SipMessage:
        """The request as sent, parsed. Only a CANCEL (§9.1) or the ACK of a non-2xx
        (§17.1.1.3) copies fields from it, so most branches never parse it."""
        if self._request is None:
            self._request = parse_message(self.data)
        return self._request

    def deadline(self) -> float | None:
        deadline = self.txn.get_timer()
        for own in (self.timer_c, self.failover_at):
            if own is not None and (deadline is None or own < deadline):
                deadline = own
        return deadline


class TimerHeap:
    """One heap of (deadline, owner) for every transaction. Entries are never removed:
    an owner's `scheduled` slot says which of its entries is current, the others are
    skipped when they surface (lazy deletion keeps scheduling O(log n))."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ServerSide | ClientBranch]] = []
        self._sequence = itertools.count()

    def schedule(self, owner: ServerSide | ClientBranch) -> None:
        deadline = owner.deadline()
        if deadline == owner.scheduled:
            return
        # A deadline that moved (earlier or later, e.g. Timer A stopped by a provisional)
        # gets a new entry and the old one turns stale: a push is cheaper than waking the
        # owner at its old deadline for nothing (two such wake-ups per call, issue #4).
        owner.scheduled = deadline
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, next(self._sequence), owner))

    def next_deadline(self) -> float | None:
        while self._heap:
            deadline, _, owner = self._heap[0]
            if owner.scheduled == deadline:
                return deadline
            heapq.heappop(self._heap)  # stale entry
        return None

    def due(self, now: float) -> Iterator[ServerSide | ClientBranch]:
        """Owners whose current deadline is due; each is unscheduled as it is yielded
        (the caller reschedules it after running its timers)."""
        while self._heap and self._heap[0][0] <= now:
            deadline, _, owner = heapq.heappop(self._heap)
            if owner.scheduled != deadline:
                continue
            owner.scheduled = None
            yield owner
