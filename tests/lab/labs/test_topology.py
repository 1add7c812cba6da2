"""Topology files: the shipped scenarios parse; malformed ones fail with file, key, reason."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from labs.topology import TopologyError, load, parse, scenarios

GOOD = """
[hosts.a]
routes = [{ to = "default", via = "10.77.0.1" }]
[hosts.gw]
forwarding = true
firewall = { forward_policy = "drop" }
[[links]]
a = { host = "a", iface = "eth0", addresses = ["10.77.0.10/24"] }
b = { host = "gw", iface = "lan0", addresses = ["10.77.0.1/24"] }
"""


def test_shipped_scenarios_parse() -> None:
    assert {"basic", "provider", "two-gateways"} <= set(scenarios())
    basic = load("basic")
    assert basic.address("alice") == "10.77.0.10"
    assert basic.address("bob") == "10.77.0.11"
    assert {str(a) for a in basic.addresses("gw")} == {"10.77.0.1/24", "203.0.113.1/24"}
    assert basic.address("carol") == "203.0.113.20"
    assert basic.address("dave") == "203.0.113.21"
    assert basic.host("lan").kind == "switch"
    gw = basic.host("gw")
    assert gw.forwarding and gw.processes == ("alg", "agent")
    assert load("provider").address("provider") == "198.51.100.10"
    two = load("two-gateways")
    assert [h.name for h in two.hosts if h.firewall] == ["gw1", "gw2"]


def test_firewall_ruleset_defers_to_the_agent_mark_and_drops_the_rest() -> None:
    text = load("basic").host("gw").firewall.ruleset()  # type: ignore[union-attr]
    assert "hook forward priority 10; policy drop;" in text
    assert "ct mark & 0x00200000 == 0x00200000 accept" in text
    assert "ct state established,related accept" in text


DUP_LINK = "[[links]]\na = { host = 'a', iface = 'eth0' }\nb = { host = 'gw', iface = 'x' }\n"


def test_parse_a_small_topology() -> None:
    topo = parse(GOOD, "small")
    assert topo.host("a").routes[0].to == ipaddress.IPv4Network("0.0.0.0/0")
    assert topo.links[0].b.addresses[0] == ipaddress.IPv4Interface("10.77.0.1/24")


@pytest.mark.parametrize(
    ("mutate", "where", "problem"),
    [
        (lambda t: t.replace("[hosts.a]", "[hosts.A-1]"), "hosts.A-1", "bad host name"),
        (
            lambda t: t.replace("forwarding = true", "forwarding = 1"),
            "hosts.gw.forwarding",
            "expected bool",
        ),
        (
            lambda t: t.replace('"10.77.0.10/24"', '"8.8.8.8/24"'),
            "links[0].a.addresses[0]",
            "outside the lab ranges",
        ),
        (
            lambda t: t.replace('"10.77.0.10/24"', '"10.77.0.10"'),
            "links[0].a.addresses[0]",
            "needs a prefix length",
        ),
        (
            lambda t: t.replace('via = "10.77.0.1"', 'via = "10.77.0.99x"'),
            "hosts.a.routes[0]",
            "bad route: Only decimal digits",
        ),
        (
            lambda t: t.replace('via = "10.77.0.1"', 'via = "203.0.113.9"'),
            "hosts.a.routes[0].via",
            "not on a network of a",
        ),
        (lambda t: t.replace('host = "gw"', 'host = "gx"'), "links[0].b.host", "unknown host 'gx'"),
        (
            lambda t: t.replace('iface = "lan0"', 'iface = "averyveryverylongname"'),
            "links[0].b.iface",
            "bad interface name",
        ),
        (
            lambda t: t.replace("forwarding = true\n", ""),
            "hosts.gw.firewall",
            "needs forwarding = true",
        ),
        (
            lambda t: t.replace('forward_policy = "drop"', 'forward_policy = "reject"'),
            "hosts.gw.firewall.forward_policy",
            "must be 'drop' or 'accept'",
        ),
        (
            lambda t: t.replace("[hosts.gw]", "[hosts.gw]\nprocesses = ['asterisk']"),
            "hosts.gw.processes[0]",
            "unknown process 'asterisk'",
        ),
        (
            lambda t: t.replace("[hosts.gw]", "[hosts.gw]\ncolour = 'red'"),
            "hosts.gw",
            "unknown key 'colour'",
        ),
        (lambda t: t + "[hosts.lonely]\n", "hosts.lonely", "not linked to any other host"),
        (
            lambda t: t.replace('"10.77.0.1/24"', '"10.77.0.10/24"'),
            "links[0].b.addresses",
            "10.77.0.10 already on a:eth0",
        ),
        (
            lambda t: t.replace('host = "gw"', 'host = "a"'),
            "links[0]",
            "links a to itself",
        ),
        (
            lambda t: t + DUP_LINK,
            "links[1].a.iface",
            "a already has an interface eth0",
        ),
        (
            lambda t: t + "[[links]]\na = { host = 'a', iface = 'eth1' }\n",
            "links[1]",
            "needs both ends",
        ),
        (lambda t: t.replace("[[links]]", "[[links]\n"), "", "not valid TOML"),
    ],
)
def test_parse_errors_name_file_key_and_problem(mutate, where, problem) -> None:
    with pytest.raises(TopologyError) as info:
        parse(mutate(GOOD), "bad", source="bad.toml")
    err = info.value
    assert err.source == "bad.toml"
    assert err.where == where, str(err)
    assert problem in err.problem, str(err)
    assert str(err).startswith("bad.toml: ")


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(TopologyError, match=r"no such scenario .*basic"):
        load("nope")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load(tmp_path / "missing.toml")
