"""Routing decisions (alg.routing): location, prefix table, default upstream, DNS, 403s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from alg.dns_resolver import ResolvedTarget
from alg.routing import (
    Contact,
    RegisteredContact,
    Reject,
    RequestContext,
    RouteDecision,
    RouterConfig,
    RoutingTable,
    Target,
    expand_dns,
    route,
)
from alg.sip.uri import parse_uri

EXAMPLE = Path(__file__).resolve().parents[3] / "alg" / "routes.example.toml"
INSIDE = RequestContext(side="inside", now=1000.0, call_id="a84b4c76e66710")
OUTSIDE = replace(INSIDE, side="outside")


@dataclass
class FakeLocation:
    bindings: dict[str, list[Contact]] = field(default_factory=dict)
    asked: list[tuple[str, float]] = field(default_factory=list)

    def lookup(self, aor: str, now: float) -> Sequence[RegisteredContact]:
        self.asked.append((aor, now))
        return self.bindings.get(aor, [])


@dataclass
class FakeDirectory:
    known: set[str]

    def exists(self, aor: str) -> bool:
        return aor in self.known


def config(location: FakeLocation | None = None, table: RoutingTable | None = None) -> RouterConfig:
    return RouterConfig(
        local_domains=frozenset({"Our.Example", "203.0.113.1"}),
        location=location or FakeLocation(),
        table=table if table is not None else RoutingTable.load(EXAMPLE),
    )


def decide(uri: str, cfg: RouterConfig, ctx: RequestContext = INSIDE) -> RouteDecision | Reject:
    return route(parse_uri(uri), cfg, ctx)


def only(decision: RouteDecision | Reject) -> Target:
    assert isinstance(decision, RouteDecision), decision
    assert len(decision.targets) == 1, decision
    return decision.targets[0]


# --- (a) location service -----------------------------------------------------------------


def test_registered_user_routes_to_contact_with_contact_as_request_uri() -> None:
    loc = FakeLocation(
        {"sip:alice@our.example": [Contact("sip:alice@10.77.0.10:5062;transport=tcp")]}
    )
    target = only(decide("sip:alice@OUR.example", config(loc)))
    assert target == Target(
        "sip:alice@10.77.0.10:5062;transport=tcp", "10.77.0.10", 5062, "tcp", "location"
    )
    assert loc.asked == [("sip:alice@our.example", 1000.0)]


def test_several_contacts_fork_in_parallel_highest_q_first() -> None:
    loc = FakeLocation(
        {
            "sip:bob@our.example": [
                Contact("sip:bob@10.77.0.11", q=0.5),
                Contact("sip:bob@10.77.0.12", q=1.0),
            ]
        }
    )
    decision = decide("sip:bob@our.example", config(loc))
    assert isinstance(decision, RouteDecision)
    assert decision.parallel
    assert [t.uri for t in decision.targets] == ["sip:bob@10.77.0.12", "sip:bob@10.77.0.11"]


def test_contact_behind_nat_is_reached_at_received_address_and_path_wins() -> None:
    loc = FakeLocation(
        {
            "sip:carol@our.example": [
                Contact("sip:carol@192.168.1.5:5060", received=("198.51.100.7", 40312, "udp")),
            ],
            "sip:dave@our.example": [
                Contact(
                    "sip:dave@192.168.1.6",
                    received=("198.51.100.8", 5060, "udp"),
                    path=("<sip:edge.our.example:5070;transport=tcp;lr>",),
                )
            ],
        }
    )
    carol = only(decide("sip:carol@our.example", config(loc), OUTSIDE))
    assert (carol.uri, carol.next_hop, carol.port, carol.transport) == (
        "sip:carol@192.168.1.5:5060",
        "198.51.100.7",
        40312,
        "udp",
    )
    dave = only(decide("sip:dave@our.example", config(loc)))
    assert (dave.next_hop, dave.port, dave.transport) == ("edge.our.example", 5070, "tcp")
    assert dave.path == ("sip:edge.our.example:5070;transport=tcp;lr",)


def test_location_comes_before_the_prefix_table_for_numeric_users() -> None:
    loc = FakeLocation({"sip:17325551212@our.example": [Contact("sip:pbx@10.77.0.20")]})
    target = only(decide("sip:17325551212@our.example", config(loc)))
    assert target.source == "location"


def test_our_domain_without_registration_is_404_or_480_for_known_users() -> None:
    cfg = config()
    assert decide("sip:nobody@our.example", cfg) == Reject(404, "Not Found")
    cfg = replace(cfg, directory=FakeDirectory({"sip:erin@our.example"}))
    assert decide("sip:erin@our.example", cfg) == Reject(480, "Temporarily Unavailable")
    assert decide("sip:nobody@our.example", cfg, OUTSIDE) == Reject(404, "Not Found")


def test_our_address_counts_as_our_domain() -> None:
    loc = FakeLocation({"sip:alice@203.0.113.1": [Contact("sip:alice@10.77.0.10")]})
    assert only(decide("sip:alice@203.0.113.1", config(loc), OUTSIDE)).source == "location"


# --- (b) prefix table ----------------------------------------------------------------------


def test_tel_uri_longest_prefix_routes_to_regional_gateway_with_rewrite() -> None:
    target = only(decide("tel:+1-732-555-1212", config()))
    assert target == Target(
        "sip:17325551212@regional.example;user=phone",
        "gw.regional.example",
        5060,
        "udp",
        "prefix",
    )


def test_numeric_sip_user_of_our_domain_is_rewritten_to_gateway_domain() -> None:
    target = only(decide("sip:17325551212@our.example:5080;transport=tcp;user=phone", config()))
    assert target.uri == "sip:17325551212@regional.example;user=phone"
    assert target.next_hop == "gw.regional.example"


def test_shorter_prefix_for_other_numbers_and_failover_order() -> None:
    decision = decide("tel:+1-973-555-1212", config())
    assert isinstance(decision, RouteDecision)
    assert not decision.parallel
    hops = [t.next_hop for t in decision.targets]
    # priority 10 pair first (order by weight, stable per Call-ID), backup last
    assert sorted(hops[:2]) == ["gw1.longdistance.example", "gw2.longdistance.example"]
    assert hops[2] == "backup.longdistance.example"
    assert {t.uri for t in decision.targets} == {"sip:19735551212@longdistance.example;user=phone"}
    # the same call always gets the same order (requests of one call to one gateway)
    assert decide("tel:+1-973-555-1212", config()) == decision


def test_strip_and_add_digits_and_host_from_next_hop() -> None:
    target = only(decide("sip:011442079460000@our.example", config()))
    assert target.uri == "sip:+442079460000@gw.international.example"
    assert (target.port, target.transport) == (5061, "tls")


def test_weights_share_load_across_calls() -> None:
    cfg = config()
    firsts = {"gw1.longdistance.example": 0, "gw2.longdistance.example": 0}
    for n in range(2000):
        decision = decide("tel:+19735551212", cfg, replace(INSIDE, call_id=f"call-{n}"))
        assert isinstance(decision, RouteDecision)
        firsts[decision.targets[0].next_hop] += 1
    # weights 70/30: allow generous slack, but the split must follow the weights
    assert 1250 < firsts["gw1.longdistance.example"] < 1550


def test_hops_reported_down_are_tried_last() -> None:
    ctx = replace(
        INSIDE,
        unavailable=frozenset(
            {("gw1.longdistance.example", 5060), ("gw2.longdistance.example", 5060)}
        ),
    )
    decision = decide("tel:+19735551212", config(), ctx)
    assert isinstance(decision, RouteDecision)
    assert decision.targets[0].next_hop == "backup.longdistance.example"
    assert len(decision.targets) == 3


def test_outside_cannot_use_gateways_but_may_reach_open_did_range() -> None:
    assert decide("tel:+17325551212", config(), OUTSIDE) == Reject(403, "Forbidden")
    assert decide("sip:17325551212@our.example", config(), OUTSIDE) == Reject(403, "Forbidden")
    target = only(decide("sip:12125550100@our.example", config(), OUTSIDE))
    assert (target.next_hop, target.source) == ("10.77.0.20", "prefix")
    assert target.uri == "sip:12125550100@10.77.0.20"


# --- (c) default upstream, (d) DNS ---------------------------------------------------------


def test_other_domains_go_to_default_upstream_unchanged() -> None:
    target = only(decide("sip:bob@biloxi.example.com", config()))
    assert target == Target(
        "sip:bob@biloxi.example.com", "proxy.provider.example", 5060, "udp", "default"
    )


def test_tel_without_prefix_goes_to_default_or_404() -> None:
    target = only(decide("tel:+4930123456", config()))
    assert (target.source, target.uri) == ("default", "tel:+4930123456")
    assert decide("tel:+4930123456", config(table=RoutingTable())) == Reject(
        404, "No Route To Number"
    )


def test_other_domains_without_default_are_located_by_dns() -> None:
    cfg = config(table=RoutingTable())
    target = only(decide("sips:bob@biloxi.example.com;transport=TCP", cfg))
    assert target == Target(
        "sips:bob@biloxi.example.com;transport=TCP", "biloxi.example.com", None, "tcp", "dns"
    )
    assert target.needs_resolution
    resolved = [
        ResolvedTarget("192.0.2.4", 5061, "tls", "server1.biloxi.example.com"),
        ResolvedTarget("192.0.2.5", 5061, "tls", "server2.biloxi.example.com"),
    ]
    expanded = expand_dns(target, resolved)
    assert isinstance(expanded, RouteDecision)
    assert [(t.next_hop, t.port, t.transport) for t in expanded.targets] == [
        ("192.0.2.4", 5061, "tls"),
        ("192.0.2.5", 5061, "tls"),
    ]
    assert expand_dns(target, []) == Reject(503, "Service Unavailable")


def test_outside_requests_to_other_domains_are_forbidden() -> None:
    assert decide("sip:bob@biloxi.example.com", config(), OUTSIDE) == Reject(403, "Forbidden")
    cfg = config(table=RoutingTable())
    assert decide("sip:bob@biloxi.example.com", cfg, OUTSIDE) == Reject(403, "Forbidden")


def test_unsupported_scheme_is_416() -> None:
    assert decide("mailto:bob@biloxi.example.com", config()) == Reject(
        416, "Unsupported URI Scheme"
    )


def test_decision_needs_targets() -> None:
    with pytest.raises(ValueError, match="at least one target"):
        RouteDecision(())
