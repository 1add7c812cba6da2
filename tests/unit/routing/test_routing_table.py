"""Route table loading, validation, indexed longest-prefix lookup and reload."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from alg.errors import AlgError, RouteTableError
from alg.routing import NextHop, PrefixRoute, RoutingTable

EXAMPLE = Path(__file__).resolve().parents[3] / "alg" / "routes.example.toml"

GOOD = """
[[route]]
prefix = "1"
next_hops = ["gw1.example:5060"]
"""


def test_example_file_loads_and_is_documented() -> None:
    table = RoutingTable.load(EXAMPLE)
    assert set(table.routes) == {"1", "1732", "011", "1212555"}
    assert table.default == (NextHop("proxy.provider.example", 5060, "udp"),)
    regional = table.routes["1732"]
    assert regional.name == "regional 732"
    assert regional.domain == "regional.example"
    intl = table.routes["011"]
    assert (intl.strip, intl.add, intl.domain) == (3, "+", None)
    assert intl.next_hops == (NextHop("gw.international.example", 5061, "tls"),)
    assert table.source == str(EXAMPLE)


def test_longest_prefix_lookup() -> None:
    table = RoutingTable.load(EXAMPLE)
    assert table.lookup("17325551212") is table.routes["1732"]
    assert table.lookup("19735551212") is table.routes["1"]
    assert table.lookup("1732") is table.routes["1732"]
    assert table.lookup("173") is table.routes["1"]
    assert table.lookup("4930") is None
    assert table.lookup("") is None


def test_next_hop_syntax() -> None:
    # without a port: the transport's default, and a name is looked up by SRV first
    assert NextHop.parse("gw.example") == NextHop("gw.example", 5060, "udp", port_given=False)
    tls = NextHop.parse("gw.example;transport=TLS")
    assert tls == NextHop("gw.example", 5061, "tls", port_given=False)
    assert (tls.port, tls.given_port) == (5061, None)
    assert NextHop.parse("gw.example:5061;transport=tls").given_port == 5061
    assert NextHop.parse("[2001:db8::1]:5070;transport=tcp") == NextHop("2001:db8::1", 5070, "tcp")
    with pytest.raises(ValueError, match="transport"):
        NextHop.parse("gw.example;transport=carrier-pigeon")
    with pytest.raises(ValueError, match="bad next hop"):
        NextHop.parse("gw.example:99999")


def test_lookup_cost_does_not_grow_with_the_number_of_routes() -> None:
    # 100,000 ten-digit routes: every lookup probes at most one dict entry per distinct
    # prefix length, so it must be as fast as with a handful of routes.
    routes = {
        f"{n:010d}": PrefixRoute(f"r{n}", f"{n:010d}", (NextHop("gw", 5060),))
        for n in range(0, 10**10, 10**5)
    }
    big = RoutingTable(routes)
    small = RoutingTable({"1": PrefixRoute("r", "1", (NextHop("gw", 5060),))})
    assert big.lookup("0000100000999") is routes["0000100000"]

    def cost(table: RoutingTable) -> float:
        start = time.perf_counter()
        for _ in range(20000):
            table.lookup("999999999999999")
        return time.perf_counter() - start

    assert cost(big) < 5 * cost(small) + 0.05


@pytest.mark.parametrize(
    ("text", "entry", "fragment"),
    [
        ("[[route]]\nprefix = '1x'\nnext_hops = ['gw']", "route[0]", "prefix must be"),
        ("[[route]]\nprefix = ''\nnext_hops = ['gw']", "route[0]", "prefix must be"),
        ("[[route]]\nprefix = 1\nnext_hops = ['gw']", "route[0]", "prefix must be"),
        ("[[route]]\nprefix = '1'", "route[0] (prefix '1')", "next_hops must be"),
        ("[[route]]\nprefix = '1'\nnext_hops = []", "route[0] (prefix '1')", "non-empty"),
        (
            "[[route]]\nprefix = '1'\nnext_hops = ['gw:70000']",
            "route[0] (prefix '1').next_hops[0]",
            "bad next hop",
        ),
        (
            "[[route]]\nprefix = '1'\nnext_hops = [{hop = 'gw', weight = -1}]",
            "route[0] (prefix '1').next_hops[0]",
            "weight must be",
        ),
        ("[[route]]\nprefix = '1'\nnext_hop = ['gw']", "route[0] (prefix '1')", "next_hop"),
        (
            "[[route]]\nprefix = '1'\nstrip = -2\nnext_hops = ['gw']",
            "route[0] (prefix '1')",
            "strip",
        ),
        ("[[route]]\nprefix = '1'\nadd = '9a'\nnext_hops = ['gw']", "route[0] (prefix '1')", "add"),
        (
            "[[route]]\nprefix = '1'\ndomain = 'bad host!'\nnext_hops = ['gw']",
            "route[0] (prefix '1')",
            "domain",
        ),
        (
            "[[route]]\nprefix = '1'\nfrom_outside = 'yes'\nnext_hops = ['gw']",
            "route[0] (prefix '1')",
            "from_outside",
        ),
        ("[default]\nnext_hops = ['gw;foo=bar']", "default.next_hops[0]", "parameter"),
        ("[route]\nprefix = '1'", "route", "array of tables"),
        ("[routes]", "table", "unknown key"),
    ],
)
def test_validation_errors_name_the_entry(text: str, entry: str, fragment: str) -> None:
    with pytest.raises(RouteTableError) as info:
        RoutingTable.from_toml(text, source="routes.toml")
    assert info.value.entry == entry
    assert fragment in info.value.reason
    assert str(info.value).startswith(f"routes.toml: {entry}: ")
    assert isinstance(info.value, AlgError)


def test_duplicate_prefix_names_both_entries() -> None:
    text = GOOD + "\n[[route]]\nname = 'again'\nprefix = '1'\nnext_hops = ['gw2']\n"
    with pytest.raises(RouteTableError, match=r"again: prefix '1' already routed by route\[0\]"):
        RoutingTable.from_toml(text)


def test_invalid_toml_is_a_route_table_error() -> None:
    with pytest.raises(RouteTableError, match="invalid TOML"):
        RoutingTable.from_toml("[[route]\nprefix=")


def test_reload_returns_new_table_or_raises_keeping_the_old(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(GOOD)
    table = RoutingTable.load(path)
    path.write_text(GOOD.replace("gw1", "gw9"))
    newer = table.reload()
    assert newer.routes["1"].next_hops[0].host == "gw9.example"
    assert table.routes["1"].next_hops[0].host == "gw1.example"

    path.write_text(GOOD + "\n[[route]]\nprefix = 'x'\nnext_hops = ['gw']\n")
    with pytest.raises(RouteTableError, match=r"route\[1\]"):
        newer.reload()
    assert newer.lookup("1555") is not None  # still usable, unchanged
    assert newer.routes["1"].next_hops[0].host == "gw9.example"

    with pytest.raises(RouteTableError, match="cannot read"):
        newer.reload(tmp_path / "missing.toml")
    with pytest.raises(RouteTableError, match="no file"):
        RoutingTable().reload()


def test_table_is_immutable() -> None:
    table = RoutingTable.from_toml(GOOD)
    with pytest.raises(TypeError):
        table.routes["2"] = table.routes["1"]  # type: ignore[index]
