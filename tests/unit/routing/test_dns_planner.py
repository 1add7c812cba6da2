"""RFC 3263 planner (alg.dns_resolver.plan) against canned answers; no DNS is queried."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.dns_resolver import (
    Answer,
    Naptr,
    NeedQueries,
    Query,
    Record,
    Resolved,
    ResolvedTarget,
    Srv,
    plan,
    weighted_order,
)
from alg.sip.uri import SipUri, parse_uri

# RFC 3263 §4.1's example zone for example.com, completed with SRV and address records.
RFC3263_ZONE: dict[tuple[str, str], tuple[Record, ...]] = {
    ("example.com", "NAPTR"): (
        Naptr(50, 50, "s", "SIPS+D2T", "", "_sips._tcp.example.com."),
        Naptr(90, 50, "s", "SIP+D2T", "", "_sip._tcp.example.com"),
        Naptr(100, 50, "s", "SIP+D2U", "", "_sip._udp.example.com."),
    ),
    ("_sips._tcp.example.com", "SRV"): (Srv(0, 0, 5061, "server1.example.com."),),
    ("_sip._tcp.example.com", "SRV"): (Srv(0, 0, 5060, "server1.example.com"),),
    ("_sip._udp.example.com", "SRV"): (
        Srv(0, 1, 5060, "server1.example.com"),
        Srv(0, 2, 5060, "server2.example.com"),
    ),
    ("server1.example.com", "A"): ("192.0.2.1",),
    ("server1.example.com", "AAAA"): ("2001:db8::1",),
    ("server2.example.com", "A"): ("192.0.2.2",),
}


class FixedRng:
    """Returns the values given, in turn (each clamped into the requested range)."""

    def __init__(self, *values: int) -> None:
        self.values = list(values)
        self.calls: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        value = self.values.pop(0) if self.values else a
        return max(a, min(b, value))


def resolve(
    uri: str,
    zone: Mapping[tuple[str, str], tuple[Record, ...]],
    rng: FixedRng | random.Random | None = None,
    **kwargs: object,
) -> tuple[tuple[ResolvedTarget, ...], list[tuple[Query, ...]]]:
    """Drive the planner as the async adapter does; return targets and the rounds asked."""
    parsed = parse_uri(uri)
    assert isinstance(parsed, SipUri)
    answers: dict[Query, Answer] = {}
    rounds: list[tuple[Query, ...]] = []
    for _ in range(6):
        result = plan(parsed, answers, rng or FixedRng(), **kwargs)  # type: ignore[arg-type]
        if isinstance(result, Resolved):
            return result.targets, rounds
        assert isinstance(result, NeedQueries)
        assert result.queries, "a round must ask something"
        assert not set(result.queries) & set(answers), "never asks twice"
        rounds.append(result.queries)
        for q in result.queries:
            answers[q] = Answer(zone.get((q.name, q.rdtype), ()), 300)
    raise AssertionError("planner did not finish")


def t(addr: str, port: int, transport: str, name: str) -> ResolvedTarget:
    return ResolvedTarget(addr, port, transport, name)


def test_numeric_ip_needs_no_dns_udp_for_sip_tls_for_sips() -> None:
    assert resolve("sip:alice@192.0.2.9", {}) == ((t("192.0.2.9", 5060, "udp", "192.0.2.9"),), [])
    assert resolve("sips:alice@192.0.2.9", {})[0] == (t("192.0.2.9", 5061, "tls", "192.0.2.9"),)
    assert resolve("sip:[2001:db8::9]:5080;transport=tcp", {})[0] == (
        t("2001:db8::9", 5080, "tcp", "2001:db8::9"),
    )


def test_explicit_port_means_address_records_only() -> None:
    targets, rounds = resolve("sip:alice@server2.example.com:5070", RFC3263_ZONE)
    assert rounds == [(Query("server2.example.com", "A"), Query("server2.example.com", "AAAA"))]
    assert targets == (t("192.0.2.2", 5070, "udp", "server2.example.com"),)


def test_naptr_order_rfc3263_example_prefers_tls_then_tcp_then_udp() -> None:
    targets, rounds = resolve("sip:alice@example.com", RFC3263_ZONE, FixedRng(0, 0, 3))
    assert rounds[0] == (Query("example.com", "NAPTR"),)
    assert set(rounds[1]) == {
        Query("_sips._tcp.example.com", "SRV"),
        Query("_sip._tcp.example.com", "SRV"),
        Query("_sip._udp.example.com", "SRV"),
    }
    assert len(rounds) == 3  # NAPTR, SRV, A/AAAA
    assert targets == (
        t("192.0.2.1", 5061, "tls", "server1.example.com"),
        t("2001:db8::1", 5061, "tls", "server1.example.com"),
        t("192.0.2.1", 5060, "tcp", "server1.example.com"),
        t("2001:db8::1", 5060, "tcp", "server1.example.com"),
        # weights 1 and 2, the third draw is 3: running sums 1, 3 -> server2 first
        t("192.0.2.2", 5060, "udp", "server2.example.com"),
        t("192.0.2.1", 5060, "udp", "server1.example.com"),
        t("2001:db8::1", 5060, "udp", "server1.example.com"),
    )


def test_naptr_records_are_ordered_by_order_then_preference() -> None:
    zone: dict[tuple[str, str], tuple[Record, ...]] = {
        ("example.org", "NAPTR"): (
            Naptr(20, 10, "s", "SIP+D2U", "", "_sip._udp.example.org"),
            Naptr(10, 90, "s", "SIP+D2T", "", "_sip._tcp.example.org"),
            Naptr(10, 20, "s", "SIPS+D2T", "", "_sips._tcp.example.org"),
        ),
        ("_sip._udp.example.org", "SRV"): (Srv(0, 0, 5060, "u.example.org"),),
        ("_sip._tcp.example.org", "SRV"): (Srv(0, 0, 5060, "t.example.org"),),
        ("_sips._tcp.example.org", "SRV"): (Srv(0, 0, 5061, "s.example.org"),),
        ("u.example.org", "A"): ("192.0.2.10",),
        ("t.example.org", "A"): ("192.0.2.11",),
        ("s.example.org", "A"): ("192.0.2.12",),
    }
    targets, _ = resolve("sip:x@example.org", zone, families=("A",))
    assert [(x.address, x.transport) for x in targets] == [
        ("192.0.2.12", "tls"),
        ("192.0.2.11", "tcp"),
        ("192.0.2.10", "udp"),
    ]


def test_unsupported_transports_are_skipped() -> None:
    targets, _ = resolve("sip:alice@example.com", RFC3263_ZONE, transports=("udp",))
    assert {x.transport for x in targets} == {"udp"}


def test_sips_uri_uses_only_sips_services() -> None:
    targets, _ = resolve("sips:alice@example.com", RFC3263_ZONE)
    assert targets == (
        t("192.0.2.1", 5061, "tls", "server1.example.com"),
        t("2001:db8::1", 5061, "tls", "server1.example.com"),
    )


def test_no_naptr_falls_back_to_srv_in_our_preference_order() -> None:
    zone: dict[tuple[str, str], tuple[Record, ...]] = {
        ("_sip._tcp.example.net", "SRV"): (Srv(10, 0, 5080, "sip.example.net"),),
        ("sip.example.net", "A"): ("198.51.100.5",),
    }
    targets, rounds = resolve("sip:bob@example.net", zone, families=("A",))
    assert rounds[1] == (
        Query("_sip._udp.example.net", "SRV"),
        Query("_sip._tcp.example.net", "SRV"),
        Query("_sips._tcp.example.net", "SRV"),
    )
    assert targets == (t("198.51.100.5", 5080, "tcp", "sip.example.net"),)


def test_no_srv_falls_back_to_address_records_with_default_port() -> None:
    zone = {("example.org", "A"): ("203.0.113.9",), ("example.org", "AAAA"): ("2001:db8::9",)}
    assert resolve("sip:bob@example.org", zone)[0] == (
        t("203.0.113.9", 5060, "udp", "example.org"),
        t("2001:db8::9", 5060, "udp", "example.org"),
    )
    assert resolve("sips:bob@example.org", zone, families=("A",))[0] == (
        t("203.0.113.9", 5061, "tls", "example.org"),
    )


def test_explicit_transport_without_port_uses_that_srv() -> None:
    targets, rounds = resolve("sip:alice@example.com;transport=TCP", RFC3263_ZONE)
    assert rounds[0] == (Query("_sip._tcp.example.com", "SRV"),)
    assert targets[0] == t("192.0.2.1", 5060, "tcp", "server1.example.com")
    # sips with transport=tcp is TLS (RFC 3261 §26.2.2)
    targets, rounds = resolve("sips:alice@example.com;transport=tcp", RFC3263_ZONE)
    assert rounds[0] == (Query("_sips._tcp.example.com", "SRV"),)
    assert targets[0].transport == "tls"


def test_maddr_is_the_target() -> None:
    targets, rounds = resolve("sip:alice@example.com;maddr=192.0.2.77", RFC3263_ZONE)
    assert (targets, rounds) == ((t("192.0.2.77", 5060, "udp", "192.0.2.77"),), [])


def test_srv_dot_target_means_no_service_here() -> None:
    zone: dict[tuple[str, str], tuple[Record, ...]] = {
        ("example.net", "NAPTR"): (Naptr(10, 10, "S", "SIP+D2U", "", "_sip._udp.example.net"),),
        ("_sip._udp.example.net", "SRV"): (Srv(0, 0, 0, "."),),
        ("example.net", "A"): ("198.51.100.1",),
    }
    assert resolve("sip:x@example.net", zone, families=("A",))[0] == (
        t("198.51.100.1", 5060, "udp", "example.net"),
    )


def test_non_terminal_naptr_records_are_ignored() -> None:
    zone: dict[tuple[str, str], tuple[Record, ...]] = {
        ("example.net", "NAPTR"): (Naptr(10, 10, "u", "E2U+sip", "!^.*$!sip:x@y!", "."),),
        ("_sip._udp.example.net", "SRV"): (Srv(0, 0, 5060, "a.example.net"),),
        ("a.example.net", "A"): ("198.51.100.2",),
    }
    assert resolve("sip:x@example.net", zone, families=("A",))[0] == (
        t("198.51.100.2", 5060, "udp", "a.example.net"),
    )


# --- RFC 2782 ordering -----------------------------------------------------------------------


def srv_order(records: list[Srv], rng: FixedRng | random.Random) -> list[str]:
    ordered = weighted_order(records, lambda r: r.priority, lambda r: r.weight, rng)
    return [r.target for r in ordered]


def test_priority_first_then_weighted_selection_with_zero_weights_first() -> None:
    records = [
        Srv(20, 0, 5060, "late"),
        Srv(10, 5, 5060, "b"),
        Srv(10, 0, 5060, "zero"),
        Srv(10, 5, 5060, "c"),
    ]
    # pending at priority 10 = [zero(0), b(5), c(5)]; running sums 0, 5, 10
    assert srv_order(records, FixedRng(0, 0, 0)) == ["zero", "b", "c", "late"]
    assert srv_order(records, FixedRng(6, 3, 0)) == ["c", "b", "zero", "late"]
    assert srv_order(records, FixedRng(10, 1, 0))[0] == "c"


def test_weights_give_proportional_first_choice() -> None:
    records = [Srv(0, 10, 5060, "a"), Srv(0, 30, 5060, "b"), Srv(0, 60, 5060, "c")]
    rng = random.Random(7)
    firsts = Counter(srv_order(records, rng)[0] for _ in range(20000))
    assert abs(firsts["a"] / 20000 - 0.1) < 0.02
    assert abs(firsts["b"] / 20000 - 0.3) < 0.02
    assert abs(firsts["c"] / 20000 - 0.6) < 0.02


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 100)), min_size=0, max_size=12),
    st.integers(0, 2**32),
)
def test_order_is_a_permutation_sorted_by_priority(specs: list[tuple[int, int]], seed: int) -> None:
    records = [Srv(p, w, 5060, f"h{i}") for i, (p, w) in enumerate(specs)]
    ordered = weighted_order(records, lambda r: r.priority, lambda r: r.weight, random.Random(seed))
    assert sorted(ordered, key=lambda r: r.target) == sorted(records, key=lambda r: r.target)
    assert [r.priority for r in ordered] == sorted(r.priority for r in records)


def test_query_names_are_normalised() -> None:
    assert Query("Example.COM.", "A") == Query("example.com", "A")


@pytest.mark.parametrize("uri", ["sip:alice@example.com", "sips:alice@example.com"])
def test_nothing_in_dns_resolves_to_nothing(uri: str) -> None:
    assert resolve(uri, {})[0] == ()
