"""Locating SIP servers (RFC 3263 §4) as a sans-I/O planner plus a thin asyncio adapter.

Theory of operation
-------------------
`plan(uri, answers)` is a pure function. It walks the RFC 3263 procedure over the DNS
answers it is given and returns either `NeedQueries` (the DNS questions it cannot answer
yet) or `Resolved` (the ordered list of transport/address/port targets to try, in
failover order). A caller asks the missing questions, adds the answers and calls `plan`
again; each round goes one level deeper (NAPTR -> SRV -> A/AAAA), so a resolution takes
at most three rounds and the questions of one round can be asked concurrently.

The procedure (RFC 3263 §4.1 transport, §4.2 port and address):

* TARGET is the `maddr` parameter if present, otherwise the host (§4).
* A transport parameter is used as given. Otherwise a numeric TARGET or an explicit port
  means UDP for sip and TLS (over TCP) for sips, with no NAPTR/SRV lookup (§4.1).
* Otherwise NAPTR: the records whose service names a transport we support (SIP+D2U,
  SIP+D2T, SIPS+D2T, ...; only SIPS+ for a sips URI), by order then preference, each
  pointing at an SRV name (§4.1, RFC 3403 §4.1).
* No usable NAPTR: SRV queries for each supported transport in our preference order
  (`_sip._udp`, `_sip._tcp`, `_sips._tcp`, ...) (§4.1).
* SRV records are ordered by priority, then by RFC 2782's weighted random selection,
  drawing from an injectable RNG so tests (and call-stable load balancing in
  `alg.routing`) are deterministic.
* No SRV records at all: A/AAAA of TARGET, port 5060 (5061 for TLS) (§4.2).
* An explicit port with a name: A/AAAA only, on that port (§4.2).

`AsyncDnsResolver` is the only code here that touches the network: it asks
`dns.asyncresolver` with a timeout and keeps a small TTL cache keyed by question whose
clock is the explicit `now` argument.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

import dns.exception
import dns.resolver

from alg.sip.uri import SipUri

log = logging.getLogger("sipwall.alg.dns")

RecordType = Literal["NAPTR", "SRV", "A", "AAAA"]
Transport = Literal["udp", "tcp", "tls", "sctp", "tls-sctp"]

# RFC 3263 §4.1 service field of NAPTR records and the SRV prefixes of each transport.
_NAPTR_SERVICES: Final[Mapping[str, Transport]] = {
    "SIP+D2U": "udp",
    "SIP+D2T": "tcp",
    "SIP+D2S": "sctp",
    "SIPS+D2T": "tls",
    "SIPS+D2S": "tls-sctp",
}
_SRV_PREFIX: Final[Mapping[str, str]] = {
    "udp": "_sip._udp.",
    "tcp": "_sip._tcp.",
    "sctp": "_sip._sctp.",
    "tls": "_sips._tcp.",
    "tls-sctp": "_sips._sctp.",
}
_SECURE: Final = frozenset({"tls", "tls-sctp"})
DEFAULT_TRANSPORTS: Final[tuple[Transport, ...]] = ("udp", "tcp", "tls")


def default_port(transport: str) -> int:
    """RFC 3261 §19.1.2: 5061 for TLS, 5060 otherwise."""
    return 5061 if transport in _SECURE else 5060


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    rdtype: RecordType

    def __post_init__(self) -> None:
        # Names compare case-insensitively and without the trailing root dot.
        object.__setattr__(self, "name", self.name.lower().rstrip("."))


@dataclass(frozen=True, slots=True)
class Naptr:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


Record = Naptr | Srv | str  # A and AAAA answers are address strings


@dataclass(frozen=True, slots=True)
class Answer:
    """The records of one question; empty for NXDOMAIN/NODATA. `ttl` drives caching."""

    records: tuple[Record, ...] = ()
    ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """One place to send to: an address, port and transport. `name` is the host name the
    address was found for (what a TLS client verifies, RFC 5922 §4)."""

    address: str
    port: int
    transport: str
    name: str


@dataclass(frozen=True, slots=True)
class NeedQueries:
    queries: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Resolved:
    targets: tuple[ResolvedTarget, ...]


PlanResult = NeedQueries | Resolved


class RandomSource(Protocol):
    def randint(self, a: int, b: int) -> int: ...


T = TypeVar("T")


def weighted_order(
    items: Iterable[T],
    priority: Callable[[T], int],
    weight: Callable[[T], int],
    rng: RandomSource,
) -> list[T]:
    """RFC 2782 ordering: ascending priority; inside one priority, repeatedly pick by
    weighted random selection, zero-weight entries placed first so they keep a small
    chance of being chosen ("Usage rules", RFC 2782 p.3)."""
    by_priority: dict[int, list[T]] = {}
    for item in items:
        by_priority.setdefault(priority(item), []).append(item)
    ordered: list[T] = []
    for prio in sorted(by_priority):
        pending = sorted(by_priority[prio], key=lambda it: weight(it) != 0)
        while pending:
            total = sum(weight(it) for it in pending)
            pick = rng.randint(0, total)
            running = 0
            for index, item in enumerate(pending):
                running += weight(item)
                if running >= pick:
                    ordered.append(pending.pop(index))
                    break
    return ordered


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _missing(queries: Iterable[Query], answers: Mapping[Query, Answer]) -> list[Query]:
    seen: dict[Query, None] = {}
    for query in queries:
        if query not in answers:
            seen[query] = None
    return list(seen)


def _addresses(
    name: str,
    port: int,
    transport: str,
    answers: Mapping[Query, Answer],
    families: Sequence[RecordType],
) -> list[ResolvedTarget]:
    host = name.lower().rstrip(".")
    return [
        ResolvedTarget(record, port, transport, host)
        for family in families
        for record in answers[Query(name, family)].records
        if isinstance(record, str)
    ]


def plan(
    uri: SipUri,
    answers: Mapping[Query, Answer],
    rng: RandomSource,
    *,
    transports: Sequence[Transport] = DEFAULT_TRANSPORTS,
    families: Sequence[RecordType] = ("A", "AAAA"),
) -> PlanResult:
    """One RFC 3263 round: the questions still needed, or the ordered targets.

    `transports` are the ones we support in preference order; `families` the address
    record types to use, in order (A before AAAA by default).
    """
    target = uri.param("maddr") or uri.host
    target = target.strip("[]")
    explicit = uri.param("transport")
    transport: str | None = explicit.lower() if explicit else None
    if transport == "tcp" and uri.is_sips:
        transport = "tls"  # RFC 3261 §26.2.2: sips over TCP means TLS
    if transport is None and (_is_ip(target) or uri.port is not None):
        transport = "tls" if uri.is_sips else "udp"  # RFC 3263 §4.1
    if _is_ip(target):
        port = uri.port or default_port(transport or "udp")
        return Resolved((ResolvedTarget(target, port, transport or "udp", target),))
    if uri.port is not None:
        return _by_address(target, uri.port, transport or "udp", answers, families)

    if transport is not None:
        # §4.2: a transport but no port: SRV for that transport, then A/AAAA.
        prefix = _SRV_PREFIX.get(transport)
        candidates = [] if prefix is None else [(transport, prefix + target)]
        return _by_srv(target, transport, candidates, answers, rng, families=families)

    naptr_q = Query(target, "NAPTR")
    if naptr_q not in answers:
        return NeedQueries((naptr_q,))
    allowed = [t for t in transports if (t in _SECURE) or not uri.is_sips]
    from_naptr = _naptr_candidates(answers[naptr_q], allowed)
    if from_naptr:
        return _by_srv(target, None, from_naptr, answers, rng, families=families, sips=uri.is_sips)
    # §4.1: no usable NAPTR records, SRV queries for the transports we support.
    candidates = [(t, _SRV_PREFIX[t] + target) for t in allowed]
    return _by_srv(target, None, candidates, answers, rng, families=families, sips=uri.is_sips)


def _naptr_candidates(answer: Answer, allowed: Sequence[str]) -> list[tuple[str, str]]:
    records = [r for r in answer.records if isinstance(r, Naptr)]
    records.sort(key=lambda r: (r.order, r.preference))
    out: list[tuple[str, str]] = []
    for record in records:
        # RFC 3263 §4.1: only terminal "s" records lead to SRV; "a"/"u"/regexp rewrites
        # are not used by SIP resolution.
        transport = _NAPTR_SERVICES.get(record.service.upper())
        if record.flags.lower() != "s" or transport is None or transport not in allowed:
            continue
        out.append((transport, record.replacement.lower().rstrip(".")))
    return out


def _by_srv(
    target: str,
    transport: str | None,
    candidates: Sequence[tuple[str, str]],
    answers: Mapping[Query, Answer],
    rng: RandomSource,
    *,
    families: Sequence[RecordType],
    sips: bool = False,
) -> PlanResult:
    srv_queries = [Query(name, "SRV") for _, name in candidates]
    if missing := _missing(srv_queries, answers):
        return NeedQueries(tuple(missing))
    chosen: list[tuple[str, list[Srv]]] = []
    for cand_transport, name in candidates:
        records = [r for r in answers[Query(name, "SRV")].records if isinstance(r, Srv)]
        # RFC 2782: a single record with target "." means "service decidedly not here".
        records = [r for r in records if r.target.rstrip(".")]
        if records:
            chosen.append((cand_transport, records))
    if not chosen:
        fallback = transport or ("tls" if sips else "udp")
        return _by_address(target, default_port(fallback), fallback, answers, families)
    address_queries = [
        Query(r.target, family) for _, records in chosen for r in records for family in families
    ]
    if missing := _missing(address_queries, answers):
        return NeedQueries(tuple(missing))
    out: list[ResolvedTarget] = []
    for cand_transport, records in chosen:
        for record in weighted_order(records, lambda r: r.priority, lambda r: r.weight, rng):
            out += _addresses(record.target, record.port, cand_transport, answers, families)
    return Resolved(tuple(dict.fromkeys(out)))


def _by_address(
    target: str,
    port: int,
    transport: str,
    answers: Mapping[Query, Answer],
    families: Sequence[RecordType],
) -> PlanResult:
    if missing := _missing((Query(target, f) for f in families), answers):
        return NeedQueries(tuple(missing))
    return Resolved(tuple(_addresses(target, port, transport, answers, families)))


class DnsCache:
    """Bounded TTL cache of answers (LRU eviction), with negative caching (RFC 2308)."""

    def __init__(
        self, max_entries: int = 4096, *, negative_ttl: float = 30.0, max_ttl: float = 3600.0
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._entries: OrderedDict[Query, tuple[float, Answer]] = OrderedDict()
        self._max = max_entries
        self._negative_ttl = negative_ttl
        self._max_ttl = max_ttl

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: Query, now: float) -> Answer | None:
        entry = self._entries.get(query)
        if entry is None:
            return None
        expires, answer = entry
        if now >= expires:
            del self._entries[query]
            return None
        self._entries.move_to_end(query)
        return answer

    def put(self, query: Query, answer: Answer, now: float) -> None:
        ttl = answer.ttl if answer.records else self._negative_ttl
        ttl = min(ttl, self._max_ttl)
        if ttl <= 0:
            return
        self._entries[query] = (now + ttl, answer)
        self._entries.move_to_end(query)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


def answer_from_rdata(rdtype: RecordType, rdatas: Iterable[Any], ttl: float) -> Answer:
    """Convert dnspython rdata objects to our records (isolates dnspython's types)."""
    records: list[Record] = []
    for rd in rdatas:
        if rdtype == "NAPTR":
            records.append(
                Naptr(
                    rd.order,
                    rd.preference,
                    _text(rd.flags),
                    _text(rd.service),
                    _text(rd.regexp),
                    rd.replacement.to_text(omit_final_dot=True),
                )
            )
        elif rdtype == "SRV":
            records.append(
                Srv(rd.priority, rd.weight, rd.port, rd.target.to_text(omit_final_dot=True))
            )
        else:
            records.append(str(rd.address))
    return Answer(tuple(records), float(ttl))


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


class AsyncResolverLike(Protocol):
    """The part of `dns.asyncresolver.Resolver` we use (a fake in tests)."""

    async def resolve(
        self, qname: str, rdtype: str, *, raise_on_no_answer: bool, lifetime: float
    ) -> Any: ...


class AsyncDnsResolver:
    """RFC 3263 over `dns.asyncresolver`: asks each round's questions concurrently."""

    def __init__(
        self,
        resolver: AsyncResolverLike | None = None,
        *,
        cache: DnsCache | None = None,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        transports: Sequence[Transport] = DEFAULT_TRANSPORTS,
    ) -> None:
        if resolver is None:
            import dns.asyncresolver

            resolver = dns.asyncresolver.Resolver()
        self._resolver = resolver
        self._cache = cache if cache is not None else DnsCache()
        self._timeout = timeout
        self._clock = clock
        self._transports = tuple(transports)

    async def resolve(self, uri: SipUri, rng: RandomSource) -> tuple[ResolvedTarget, ...]:
        answers: dict[Query, Answer] = {}
        for _ in range(4):  # NAPTR, SRV, A/AAAA (+1 for the NAPTR-less SRV round)
            result = plan(uri, answers, rng, transports=self._transports)
            if isinstance(result, Resolved):
                return result.targets
            fetched = await asyncio.gather(*(self.query(q) for q in result.queries))
            answers.update(zip(result.queries, fetched, strict=True))
        return ()

    async def query(self, query: Query) -> Answer:
        now = self._clock()
        cached = self._cache.get(query, now)
        if cached is not None:
            return cached
        try:
            response = await self._resolver.resolve(
                query.name, query.rdtype, raise_on_no_answer=False, lifetime=self._timeout
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            answer = Answer()
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            # A failed lookup is not cached: the next call may succeed (RFC 2308 §7.1
            # allows caching server failure briefly; we prefer to retry).
            log.warning("DNS %s %s failed: %s", query.rdtype, query.name, exc)
            return Answer()
        else:
            rrset = getattr(response, "rrset", None)
            if rrset is None:
                answer = Answer()
            else:
                answer = answer_from_rdata(query.rdtype, rrset, rrset.ttl)
        self._cache.put(query, answer, self._clock())
        return answer
