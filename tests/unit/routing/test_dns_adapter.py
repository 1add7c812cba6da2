"""The asyncio adapter and the TTL cache of alg.dns_resolver, over a fake resolver."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.resolver
import dns.rrset
import pytest

from alg.dns_resolver import (
    Answer,
    AsyncDnsResolver,
    DnsCache,
    Naptr,
    Query,
    ResolvedTarget,
    Srv,
    answer_from_rdata,
)
from alg.sip.uri import SipUri, parse_uri

ZONE_TEXT = {
    ("example.com", "NAPTR"): ['100 50 "s" "SIP+D2U" "" _sip._udp.example.com.'],
    ("_sip._udp.example.com", "SRV"): ["0 1 5060 server1.example.com."],
    ("server1.example.com", "A"): ["192.0.2.1"],
}


@dataclass
class FakeResponse:
    rrset: dns.rrset.RRset | None


@dataclass
class FakeResolver:
    """Answers from ZONE_TEXT via real dnspython rdata; records every question."""

    fail: set[tuple[str, str]] = field(default_factory=set)
    asked: list[tuple[str, str, float]] = field(default_factory=list)

    async def resolve(
        self, qname: str, rdtype: str, *, raise_on_no_answer: bool, lifetime: float
    ) -> Any:
        assert raise_on_no_answer is False
        self.asked.append((qname, rdtype, lifetime))
        if (qname, rdtype) in self.fail:
            raise dns.exception.Timeout
        texts = ZONE_TEXT.get((qname, rdtype))
        if texts is None:
            if rdtype == "AAAA":
                return FakeResponse(None)  # NODATA
            raise dns.resolver.NXDOMAIN
        return FakeResponse(dns.rrset.from_text(qname + ".", 120, "IN", rdtype, *texts))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sip(uri: str) -> SipUri:
    parsed = parse_uri(uri)
    assert isinstance(parsed, SipUri)
    return parsed


def test_rdata_conversion() -> None:
    naptr = dns.rrset.from_text("e.", 60, "IN", "NAPTR", '10 20 "S" "SIPS+D2T" "" _sips._tcp.e.')
    assert answer_from_rdata("NAPTR", naptr, 60) == Answer(
        (Naptr(10, 20, "S", "SIPS+D2T", "", "_sips._tcp.e"),), 60.0
    )
    srv = dns.rrset.from_text("e.", 60, "IN", "SRV", "1 2 5061 s.e.")
    assert answer_from_rdata("SRV", srv, 60).records == (Srv(1, 2, 5061, "s.e"),)
    aaaa = dns.rrset.from_text("e.", 60, "IN", "AAAA", "2001:db8::1")
    assert answer_from_rdata("AAAA", aaaa, 60).records == ("2001:db8::1",)


@pytest.mark.asyncio
async def test_adapter_resolves_through_rounds_and_caches() -> None:
    fake, clock = FakeResolver(), Clock()
    resolver = AsyncDnsResolver(fake, timeout=1.5, clock=clock)
    targets = await resolver.resolve(sip("sip:bob@example.com"), random.Random(1))
    assert targets == (ResolvedTarget("192.0.2.1", 5060, "udp", "server1.example.com"),)
    assert [(n, t) for n, t, _ in fake.asked] == [
        ("example.com", "NAPTR"),
        ("_sip._udp.example.com", "SRV"),
        ("server1.example.com", "A"),
        ("server1.example.com", "AAAA"),
    ]
    assert {lifetime for *_, lifetime in fake.asked} == {1.5}

    fake.asked.clear()
    clock.now += 60  # positive answers (TTL 120) live on; the NODATA AAAA (30 s) expired
    assert await resolver.resolve(sip("sip:bob@example.com"), random.Random(1)) == targets
    assert [(n, t) for n, t, _ in fake.asked] == [("server1.example.com", "AAAA")]

    fake.asked.clear()
    clock.now += 61  # every positive answer expired
    await resolver.resolve(sip("sip:bob@example.com"), random.Random(1))
    assert len(fake.asked) == 4


@pytest.mark.asyncio
async def test_timeouts_give_no_targets_and_are_not_cached() -> None:
    fake = FakeResolver(fail={("example.com", "NAPTR")})
    resolver = AsyncDnsResolver(fake, clock=Clock())
    assert await resolver.query(Query("example.com", "NAPTR")) == Answer()
    assert await resolver.query(Query("example.com", "NAPTR")) == Answer()
    assert len(fake.asked) == 2
    # NXDOMAIN is cached (negative caching, RFC 2308)
    assert await resolver.query(Query("nowhere.example", "A")) == Answer()
    assert await resolver.query(Query("nowhere.example", "A")) == Answer()
    assert len(fake.asked) == 3


def test_cache_ttl_with_explicit_now() -> None:
    cache = DnsCache(negative_ttl=5, max_ttl=100)
    q = Query("a.example", "A")
    cache.put(q, Answer(("192.0.2.1",), 10), now=0)
    assert cache.get(q, now=9.9) == Answer(("192.0.2.1",), 10)
    assert cache.get(q, now=10) is None
    assert len(cache) == 0
    cache.put(q, Answer((), 999), now=0)  # negative: negative_ttl applies
    assert cache.get(q, now=4.9) == Answer((), 999)
    assert cache.get(q, now=5) is None
    cache.put(q, Answer(("192.0.2.1",), 10_000), now=0)  # capped by max_ttl
    assert cache.get(q, now=100) is None
    cache.put(q, Answer(("192.0.2.1",), 0), now=0)  # TTL 0: never cached
    assert cache.get(q, now=0) is None


def test_cache_is_bounded_lru() -> None:
    cache = DnsCache(max_entries=3)
    queries = [Query(f"h{i}.example", "A") for i in range(4)]
    for q in queries[:3]:
        cache.put(q, Answer(("192.0.2.1",), 60), now=0)
    assert cache.get(queries[0], now=1) is not None  # h0 becomes most recent
    cache.put(queries[3], Answer(("192.0.2.1",), 60), now=1)
    assert len(cache) == 3
    assert cache.get(queries[1], now=1) is None  # least recently used went
    assert cache.get(queries[0], now=1) is not None
    with pytest.raises(ValueError, match="positive"):
        DnsCache(max_entries=0)
