"""Token buckets of alg.ratelimit with a virtual clock."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alg.ratelimit import (
    Allow,
    ClassCounts,
    Drop,
    MethodClass,
    Rate,
    RateLimitConfig,
    RateLimiter,
    RateLimitStats,
    Reject,
    classify,
    source_key,
)

CONFIG = RateLimitConfig(
    invite=Rate(per_second=2, burst=4),
    register=Rate(per_second=1, burst=2),
    other=Rate(per_second=10, burst=10),
    drop_after=1.0,
)


def test_burst_then_503_with_retry_after_then_refill() -> None:
    limiter = RateLimiter(CONFIG)
    assert [limiter.check("192.0.2.1", "INVITE", 0.0) for _ in range(4)] == [Allow()] * 4
    # empty; this one takes the bucket to -1: two tokens missing at 2/s -> 1 s
    assert limiter.check("192.0.2.1", "INVITE", 0.0) == Reject(503, 1)
    # -2: three tokens missing -> 1.5 s, rounded up
    assert limiter.check("192.0.2.1", "INVITE", 0.0) == Reject(503, 2)
    # at t=1.49 the bucket holds -2 + 2.98 = 0.98: still refused, now at -0.02
    assert limiter.check("192.0.2.1", "INVITE", 1.49) == Reject(503, 1)
    assert limiter.check("192.0.2.1", "INVITE", 2.1) == Allow()  # -0.02 + 1.22


def test_refill_is_exact_and_capped_at_burst() -> None:
    limiter = RateLimiter(CONFIG)
    for _ in range(4):
        assert limiter.check("a", "INVITE", 0.0) == Allow()
    # 0 tokens; after 0.5 s exactly one token
    assert limiter.check("a", "INVITE", 0.49) == Reject(503, 1)  # 0.98 - 1 = -0.02
    limiter = RateLimiter(CONFIG)
    for _ in range(4):
        limiter.check("a", "INVITE", 0.0)
    assert limiter.check("a", "INVITE", 0.5) == Allow()
    # an hour of silence refills to the burst only (4), not 7200 tokens
    decisions = [limiter.check("a", "INVITE", 3600.0) for _ in range(5)]
    assert decisions[:4] == [Allow()] * 4
    assert isinstance(decisions[4], Reject)


def test_classes_are_independent() -> None:
    limiter = RateLimiter(CONFIG)
    for _ in range(2):
        assert limiter.check("a", "REGISTER", 0.0) == Allow()
    assert isinstance(limiter.check("a", "REGISTER", 0.0), Reject)
    assert limiter.check("a", "INVITE", 0.0) == Allow()
    assert limiter.check("a", "OPTIONS", 0.0) == Allow()
    assert limiter.check("b", "REGISTER", 0.0) == Allow()  # other sources unaffected


def test_flooding_source_is_dropped_until_it_falls_silent() -> None:
    limiter = RateLimiter(CONFIG)
    decisions = [limiter.check("flood", "REGISTER", 0.0) for _ in range(10)]
    # burst 2, then 503 while in debt down to -2 (one burst), then silent drops
    assert decisions[:2] == [Allow()] * 2
    assert all(isinstance(d, Reject) for d in decisions[2:4])
    assert decisions[4:] == [Drop("flood")] * 6
    # flooding on at 100/s keeps it dropped
    for i in range(100):
        assert limiter.check("flood", "REGISTER", 0.01 * i) == Drop("flood")
    # silence redeems: from the -2 floor, 3 s at 1/s gives back 1 token
    assert limiter.check("flood", "REGISTER", 0.99 + 3.0) == Allow()


def test_counters_snapshot() -> None:
    limiter = RateLimiter(CONFIG)
    for _ in range(6):
        limiter.check("a", "REGISTER", 0.0)
    limiter.check("a", "INVITE", 0.0)
    limiter.check("a", "BYE", 0.0)
    assert limiter.note_bad("b", "malformed", 0.0) == Allow()
    limiter.note_bad("b", "oversize", 0.0)
    stats = limiter.stats()
    assert stats == RateLimitStats(
        accepted=ClassCounts(invite=1, register=2, other=1),
        rejected=ClassCounts(register=2),
        dropped=ClassCounts(register=2),
        malformed=1,
        oversize=1,
        evicted=0,
        sources=2,
    )
    assert stats.accepted.total == 4
    with pytest.raises(AttributeError):
        stats.malformed = 3  # type: ignore[misc]


def test_garbage_counts_against_the_source() -> None:
    limiter = RateLimiter(CONFIG)
    decisions = [limiter.note_bad("g", "malformed", 0.0) for _ in range(25)]
    assert decisions[:10] == [Allow()] * 10
    assert decisions[-1] == Drop("flood")
    assert isinstance(limiter.check("g", "OPTIONS", 0.0), Drop)
    assert limiter.check("g", "INVITE", 0.0) == Allow()


def test_aggregate_limit_refuses_without_charging_the_source() -> None:
    config = RateLimitConfig(other=Rate(10, 10), aggregate=Rate(per_second=1, burst=3))
    limiter = RateLimiter(config)
    assert [limiter.check(f"s{i}", "OPTIONS", 0.0) for i in range(3)] == [Allow()] * 3
    assert limiter.check("s3", "OPTIONS", 0.0) == Reject(503, 1)
    assert limiter.check("s3", "OPTIONS", 1.0) == Allow()
    # s3 still had its whole burst of 10 minus the one accepted request
    assert limiter.stats().rejected.other == 1


def test_clock_stepping_back_refills_nothing() -> None:
    limiter = RateLimiter(CONFIG)
    for _ in range(4):
        limiter.check("a", "INVITE", 100.0)
    assert isinstance(limiter.check("a", "INVITE", 50.0), Reject)


def test_classify_and_source_key() -> None:
    assert classify("INVITE") is MethodClass.INVITE
    assert classify("REGISTER") is MethodClass.REGISTER
    assert classify("invite") is MethodClass.OTHER  # methods are case-sensitive
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:2:bbbb::9") == source_key("2001:db8:1:2:aaaa::1")
    assert source_key("not-an-ip") == "not-an-ip"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="per_second"):
        Rate(0, 5)
    with pytest.raises(ValueError, match="max_sources"):
        RateLimitConfig(max_sources=0)


def test_bounded_memory_under_a_million_spoofed_sources() -> None:
    limiter = RateLimiter(RateLimitConfig(max_sources=10_000))
    limiter.check("victim", "INVITE", 0.0)
    start = time.perf_counter()
    for n in range(1_000_000):
        limiter.check(n, "INVITE", n * 1e-6)
        if n % 100_000 == 0:
            assert len(limiter) <= 10_000
    elapsed = time.perf_counter() - start
    stats = limiter.stats()
    assert len(limiter) == stats.sources == 10_000
    assert stats.evicted == 1_000_001 - 10_000
    assert stats.accepted.invite == 1_000_001
    assert elapsed < 60  # O(1) per request; a few seconds on a slow machine


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 50),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 5), min_size=1, max_size=60),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = RateLimiter(RateLimitConfig(invite=Rate(rate, burst)))
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        if isinstance(limiter.check("x", "INVITE", now), Allow):
            allowed += 1
    assert allowed <= burst + rate * now + 1e-9
