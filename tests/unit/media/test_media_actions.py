"""Plain data of the media core: a retried or emitted action keeps everything but its
token and deadline (`alg.media.actions.stamped`), and IP literals of SDP are read once."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from alg.media.actions import (
    AgentAction,
    ChangeGroup,
    ChangeLifetime,
    Enable,
    Release,
    Reserve,
    stamped,
)
from alg.media.session import RuleKey
from alg.media.streams import Need, ip_literal
from fcp.types import (
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    GroupLifetimeChange,
    LifetimeChange,
    LifetimeTarget,
    RuleRequest,
    TransportProtocol,
)

INSIDE = Endpoint(ipaddress.IPv4Address("10.77.0.10"), 4000)
PEER = ipaddress.IPv4Address("198.51.100.7")
ACTIONS: list[AgentAction] = [
    Reserve(
        "gw1",
        BindingRequest("g", INSIDE, TransportProtocol.UDP, BindingKind.RTP_PAIR, 60),
        1,
        10.0,
    ),
    Enable("gw2", RuleRequest("b1", Direction.INBOUND, PEER, 60, 5000), 2, 11.0),
    ChangeLifetime("gw1", LifetimeChange(LifetimeTarget.RULE, "r1", 0), 3, 12.0),
    ChangeGroup("gw1", GroupLifetimeChange("g", 90), 4, 13.0),
    Release("gw3", "g", 5, 14.0, "g-release"),
]


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: type(a).__name__)
def test_stamped_changes_only_the_token_and_the_deadline(action: AgentAction) -> None:
    assert stamped(action, 77, 99.5) == dataclasses.replace(action, token=77, deadline=99.5)
    assert type(stamped(action, 77, 99.5)) is type(action)


def test_ip_literals_parse_like_ipaddress_and_names_are_none() -> None:
    for text in ("10.77.0.10", "2001:db8::5", "10.77.0.10", "::ffff:192.0.2.1"):
        assert ip_literal(text) == ipaddress.ip_address(text)
    assert ip_literal("media.example.com") is None
    assert ip_literal("media.example.com") is None  # not remembered as an address
    assert ip_literal("10.77.0.256") is None
    assert ip_literal(None) is None


def test_needs_and_rule_keys_hash_consistently_with_their_equality() -> None:
    """Their hashes leave out the addresses (ipaddress hashes in interpreted Python):
    equal keys must still hash equal, and keys differing only there stay apart."""
    a = Need(ipaddress.IPv4Address("10.77.0.10"), 4000, BindingKind.RTP_PAIR)
    same = Need(ipaddress.IPv4Address("10.77.0.10"), 4000, BindingKind.RTP_PAIR)
    other = Need(ipaddress.IPv4Address("10.77.0.11"), 4000, BindingKind.RTP_PAIR)
    single = Need(ipaddress.IPv4Address("10.77.0.10"), 4000, BindingKind.SINGLE)
    assert a == same and hash(a) == hash(same)
    table = {a: 1, other: 2, single: 3}
    assert (table[same], table[other], table[single], len(table)) == (1, 2, 3, 3)
    key = RuleKey(0, a, PEER)
    keys = {key, RuleKey(0, same, PEER), RuleKey(0, a, ipaddress.IPv4Address("198.51.100.8"))}
    keys |= {RuleKey(1, a, PEER), RuleKey(0, other, PEER)}
    assert len(keys) == 4 and RuleKey(0, same, PEER) in keys
