"""Public address and port allocation: pure, no I/O, clock and RNG injected.

Theory of operation
-------------------
Each (public address, protocol) has a port space over [port_min, port_max]. A port is in
exactly one of three states: FREE, BOUND (in a binding) or QUARANTINED (released less
than `quarantine` seconds ago, so a late packet of the old call cannot reach a new one;
RFC 4787 REQ-? style hygiene and FCP's "a freed port is not reused for 120 s").

    FREE --allocate--> BOUND --release(now)--> QUARANTINED --now >= t+quarantine--> FREE
                       BOUND --release(quarantine=False)--> FREE   (undo of a failed apply)

To stay O(1) when the space is nearly full we never scan for a free port: free ports are
kept in indexable sets (list + position dict, O(1) random choice and removal) split by
parity, and a third indexable set holds every even P whose P+1 is also free, so an
RTP/RTCP pair (RFC 3550 §11: RTP even, RTCP next) is one random pick. Only blocks of more
than two ports fall back to probing, then a scan.

Mapping rules:
* Endpoint-independent mapping (RFC 4787 §4.1, REQ-1): the mapping is keyed by the inside
  (protocol, addr, port) only, never by the remote, so every peer sees the same public
  addr:port. `lookup` lets the engine return the existing mapping.
* Address pooling "paired" (RFC 4787 §4.1, REQ-2): one public address per group (call).
* Port parity preserved for single ports where possible (RFC 4787 §4.2.2).
* Quotas per owner and per group count ports, and raise QUOTA saying which.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field

from filter_agent.errors import AgentError, Reason, malformed
from filter_agent.model import Protocol, check_ipv4

QUARANTINE_SECONDS = 120.0
_BLOCK_PROBES = 64


class _IndexedSet:
    """Set of ints with O(1) add, discard, membership and uniform random choice."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[int] = []
        self._pos: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: int) -> bool:
        return item in self._pos

    def add(self, item: int) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: int) -> None:
        pos = self._pos.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos

    def choice(self, rng: random.Random) -> int:
        return self._items[rng.randrange(len(self._items))]

    def __iter__(self) -> collections.abc.Iterator[int]:
        return iter(list(self._items))


class _PortSpace:
    """Free ports of one (address, protocol)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.free = (_IndexedSet(), _IndexedSet())  # by parity
        self.pairs = _IndexedSet()  # even P with P and P+1 free
        for port in range(lo, hi + 1):
            self.free[port % 2].add(port)
        for port in range(lo + lo % 2, hi, 2):
            self.pairs.add(port)

    def is_free(self, port: int) -> bool:
        return port in self.free[port % 2]

    def free_count(self) -> int:
        return len(self.free[0]) + len(self.free[1])

    def take(self, port: int) -> None:
        self.free[port % 2].discard(port)
        self.pairs.discard(port & ~1)

    def give(self, port: int) -> None:
        self.free[port % 2].add(port)
        base = port & ~1
        if (
            base >= self.lo
            and base + 1 <= self.hi
            and self.is_free(base)
            and self.is_free(base + 1)
        ):
            self.pairs.add(base)

    def run_free(self, start: int, count: int) -> bool:
        if start < self.lo or start + count - 1 > self.hi:
            return False
        return all(self.is_free(p) for p in range(start, start + count))


@dataclass(frozen=True)
class PoolConfig:
    addresses: tuple[str, ...]
    port_min: int = 1024
    port_max: int = 65535
    quarantine: float = QUARANTINE_SECONDS
    owner_quota: int | None = None  # ports per owner
    group_quota: int | None = None  # ports per group

    def __post_init__(self) -> None:
        for addr in self.addresses:
            check_ipv4(addr, "pool address")
        if not 1024 <= self.port_min < self.port_max <= 65535:
            raise malformed("port range must lie within 1024..65535")
        if len(set(self.addresses)) != len(self.addresses):
            raise malformed("duplicate pool address")


@dataclass(frozen=True)
class PortUsage:
    """Ports of one (address, protocol): `bound` in bindings, `quarantined` released but
    not yet free again; the rest of `total` is free."""

    total: int
    bound: int
    quarantined: int

    @property
    def free(self) -> int:
        return self.total - self.bound - self.quarantined


@dataclass(frozen=True)
class Allocation:
    owner: str
    group: str
    protocol: Protocol
    internal_addr: str
    internal_port: int
    external_addr: str
    external_ports: tuple[int, ...]


@dataclass
class _GroupState:
    address: str
    ports: int = 0


@dataclass
class Allocator:
    config: PoolConfig
    # Port choice needs unpredictability against blind injection, not crypto strength; the
    # RNG is injected so tests are reproducible and production can pass SystemRandom().
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311

    def __post_init__(self) -> None:
        self._spaces: dict[tuple[str, Protocol], _PortSpace] = {}
        # (release deadline, address, protocol, port), in release order: deadlines are
        # monotone because `now` is, so draining from the left is enough.
        self._quarantine: collections.deque[tuple[float, str, Protocol, int]] = collections.deque()
        self._quarantined: collections.Counter[tuple[str, Protocol]] = collections.Counter()
        self._by_inside: dict[tuple[Protocol, str, int], Allocation] = {}
        self._groups: dict[tuple[str, str], _GroupState] = {}
        self._owner_ports: collections.Counter[str] = collections.Counter()
        self._now = 0.0

    # -- queries -------------------------------------------------------------------------

    def lookup(
        self, protocol: Protocol, internal_addr: str, internal_port: int
    ) -> Allocation | None:
        """The live mapping of an inside endpoint (endpoint-independent mapping)."""
        return self._by_inside.get((protocol, internal_addr, internal_port))

    def group_address(self, owner: str, group: str) -> str | None:
        state = self._groups.get((owner, group))
        return state.address if state else None

    def owner_ports(self, owner: str) -> int:
        return self._owner_ports[owner]

    def free_ports(self, address: str, protocol: Protocol, now: float) -> int:
        self._drain(now)
        return self._space(address, protocol).free_count()

    def usage(self, address: str, protocol: Protocol, now: float) -> PortUsage:
        """How the ports of `address` are used at `now`: O(1), the sets keep the counts."""
        self._drain(now)
        free = self._space(address, protocol).free_count()
        quarantined = self._quarantined[(address, protocol)]
        total = self.config.port_max - self.config.port_min + 1
        return PortUsage(total, total - free - quarantined, quarantined)

    # -- allocate / release --------------------------------------------------------------

    def allocate(
        self,
        *,
        owner: str,
        group: str,
        protocol: Protocol,
        internal_addr: str,
        internal_port: int,
        count: int,
        even: bool,
        now: float,
        suggested_port: int | None = None,
        prefer_failure: bool = False,
    ) -> Allocation:
        """Bind `count` consecutive public ports (the first even if `even`) for an inside
        endpoint. Atomic: on any error nothing changed."""
        if not self.config.addresses:
            raise AgentError(Reason.NO_ADDRESSES, "no public address configured")
        if count < 1 or count > self.config.port_max - self.config.port_min + 1:
            raise malformed(f"cannot allocate {count} ports")
        for i in range(count):
            if (protocol, internal_addr, internal_port + i) in self._by_inside:
                raise AgentError(
                    Reason.CONFLICT, f"{internal_addr}:{internal_port + i} is already bound"
                )
        self._check_quota(owner, group, count)
        self._drain(now)
        address = self._address_for(owner, group, protocol, count)
        space = self._space(address, protocol)
        start = self._pick(
            address, space, count, even, internal_port, suggested_port, prefer_failure
        )
        for port in range(start, start + count):
            space.take(port)
        allocation = Allocation(
            owner,
            group,
            protocol,
            internal_addr,
            internal_port,
            address,
            tuple(range(start, start + count)),
        )
        for i in range(count):
            self._by_inside[(protocol, internal_addr, internal_port + i)] = allocation
        state = self._groups.setdefault((owner, group), _GroupState(address))
        state.ports += count
        self._owner_ports[owner] += count
        return allocation

    def release(self, allocation: Allocation, now: float, *, quarantine: bool = True) -> None:
        """Give the ports back; quarantined unless this undoes an allocation that never
        reached the kernel."""
        for i in range(len(allocation.external_ports)):
            key = (allocation.protocol, allocation.internal_addr, allocation.internal_port + i)
            if self._by_inside.get(key) is allocation:
                del self._by_inside[key]
        space = self._space(allocation.external_addr, allocation.protocol)
        deadline = now + self.config.quarantine
        for port in allocation.external_ports:
            if quarantine:
                self._quarantine.append(
                    (deadline, allocation.external_addr, allocation.protocol, port)
                )
                self._quarantined[(allocation.external_addr, allocation.protocol)] += 1
            else:
                space.give(port)
        count = len(allocation.external_ports)
        gkey = (allocation.owner, allocation.group)
        state = self._groups[gkey]
        state.ports -= count
        if state.ports <= 0:
            del self._groups[gkey]
        self._owner_ports[allocation.owner] -= count
        if self._owner_ports[allocation.owner] <= 0:
            del self._owner_ports[allocation.owner]

    def restore_quarantined(
        self, deadline: float, address: str, protocol: Protocol, port: int
    ) -> None:
        """Put back a port that was quarantined until `deadline` (a restart's snapshot, in
        deadline order)."""
        self._space(address, protocol).take(port)
        self._quarantine.append((deadline, address, protocol, port))
        self._quarantined[(address, protocol)] += 1

    # -- internals -----------------------------------------------------------------------

    def _space(self, address: str, protocol: Protocol) -> _PortSpace:
        key = (address, protocol)
        space = self._spaces.get(key)
        if space is None:
            space = _PortSpace(self.config.port_min, self.config.port_max)
            self._spaces[key] = space
        return space

    def _drain(self, now: float) -> None:
        self._now = now
        while self._quarantine and self._quarantine[0][0] <= now:
            _, address, protocol, port = self._quarantine.popleft()
            self._space(address, protocol).give(port)
            self._quarantined[(address, protocol)] -= 1

    def _retry_after(self) -> float | None:
        """Seconds until the next quarantined port comes back, if any."""
        return max(self._quarantine[0][0] - self._now, 0.0) if self._quarantine else None

    def _check_quota(self, owner: str, group: str, count: int) -> None:
        quota = self.config.owner_quota
        if quota is not None and self._owner_ports[owner] + count > quota:
            raise AgentError(Reason.QUOTA, f"owner quota of {quota} ports exceeded")
        quota = self.config.group_quota
        state = self._groups.get((owner, group))
        used = state.ports if state else 0
        if quota is not None and used + count > quota:
            raise AgentError(Reason.QUOTA, f"group quota of {quota} ports exceeded")

    def _address_for(self, owner: str, group: str, protocol: Protocol, count: int) -> str:
        state = self._groups.get((owner, group))
        if state is not None:
            return state.address  # one public address per call, even if it is fuller
        return max(self.config.addresses, key=lambda a: self._space(a, protocol).free_count())

    def _no_ports(self, address: str) -> AgentError:
        return AgentError(
            Reason.NO_PORTS, f"no free ports on {address}", retry_after=self._retry_after()
        )

    def _pick(  # noqa: PLR0917 - private, called once
        self,
        address: str,
        space: _PortSpace,
        count: int,
        even: bool,
        internal_port: int,
        suggested: int | None,
        prefer_failure: bool,
    ) -> int:
        if suggested is not None:
            if (not even or suggested % 2 == 0) and space.run_free(suggested, count):
                return suggested
            if prefer_failure:
                raise AgentError(
                    Reason.CANNOT_PROVIDE_EXTERNAL, f"suggested port {suggested} is not available"
                )
        if count == 1 and not even:
            parity = internal_port % 2
            for pool in (space.free[parity], space.free[1 - parity]):
                if pool:
                    return pool.choice(self.rng)
            raise self._no_ports(address)
        if count <= 2:
            if space.pairs:
                return space.pairs.choice(self.rng)
            if even:
                raise self._no_ports(address)
            # An odd-aligned run of two is still fine for a non-RTP block.
            for port in space.free[1]:
                if space.run_free(port, 2):
                    return port
            raise self._no_ports(address)
        for _ in range(_BLOCK_PROBES):
            if not space.pairs:
                break
            start = space.pairs.choice(self.rng)
            if space.run_free(start, count):
                return start
        step = 2 if even else 1
        first = space.lo + (space.lo % 2 if even else 0)
        for start in range(first, space.hi - count + 2, step):
            if space.run_free(start, count):
                return start
        raise self._no_ports(address)
