"""Lab topologies: a TOML file -> frozen, validated dataclasses (no I/O beyond reading).

Theory of operation
-------------------
A topology names *hosts* (each becomes one network namespace) and *links* (each becomes one
veth pair between two hosts). A host of kind `switch` holds a Linux bridge that enslaves
every link end it has, so several phones can share one LAN segment; a `host` carries
addresses, routes, forwarding and, on a gateway, the lab's default firewall policy.

    [lab]
    description = "..."

    [hosts.alice]                       # names: [a-z][a-z0-9]{0,9}
    routes = [{ to = "default", via = "10.77.0.1" }]
    processes = ["baresip"]             # names only, started by the scenario code

    [hosts.lan]
    kind = "switch"

    [hosts.gw]
    forwarding = true
    processes = ["alg", "agent"]
    firewall = { forward_policy = "drop", accept_agent_mark = true }

    [[links]]
    a = { host = "alice", iface = "eth0", addresses = ["10.77.0.10/24"] }
    b = { host = "lan", iface = "alice" }

The firewall (gateway only) is a table the lab owns, `inet sipwall_lab`, with one base
chain `forward` at priority 10. ARCHITECTURE §5: netfilter runs every base chain of a hook
and an `accept` only ends its own chain, so the agent's pinhole accepts (table
`inet sipwall`, priority 0) can never override a drop here, and a drop there is final.
With `forward_policy = "drop"` the lab therefore lets through exactly:

* connections the agent has judged: the agent sets its ct mark bit (`agent_mark`,
  0x00200000 by default) on every connection touching a bound endpoint *before* this
  chain runs, and drops those without a live pinhole itself — so "accept marked" hands
  the decision for media to the agent and nothing else;
* `ct state established,related` (replies of what was accepted);
* the explicit `allow` pairs (`{ in = "lan0", out = "wan0" }`: new flows in -> out).

Everything else forwarded is dropped and counted. Input and output (signalling to the
ALG on the gateway itself) are not filtered by the lab.

Every address, route destination and gateway must lie in the lab ranges of ARCHITECTURE
§6, so a topology cannot describe traffic leaving the lab.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TOPOLOGIES = Path(__file__).parent / "topologies"

LAB_RANGES = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.77.0.0/24", "192.168.77.0/24", "203.0.113.0/24", "198.51.100.0/24")
)
KNOWN_PROCESSES = frozenset({"alg", "agent", "baresip", "sipp", "kamailio", "tshark"})
DEFAULT_AGENT_MARK = 0x00200000  # filter_agent.plan.TableSpec.mark
FIREWALL_TABLE = "sipwall_lab"
FIREWALL_PRIORITY = 10

_HOST_NAME = re.compile(r"[a-z][a-z0-9]{0,9}\Z")
_IFNAME = re.compile(r"[a-z][a-z0-9_.]{0,14}\Z")
HostKind = Literal["host", "switch"]


class TopologyError(ValueError):
    """A topology file is malformed; `where` locates the problem ("hosts.gw.routes[0]")."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        self.source, self.where, self.problem = source, where, problem
        super().__init__(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


@dataclass(frozen=True)
class Route:
    to: ipaddress.IPv4Network  # 0.0.0.0/0 for "default"
    via: ipaddress.IPv4Address

    @property
    def is_default(self) -> bool:
        return self.to.prefixlen == 0


@dataclass(frozen=True)
class Allow:
    iif: str
    oif: str


@dataclass(frozen=True)
class Firewall:
    forward_policy: Literal["drop", "accept"]
    agent_mark: int | None  # None: do not defer to the agent's mark
    allow: tuple[Allow, ...]

    def ruleset(self) -> str:
        """The `nft -f` text creating the lab's table (idempotent: add, flush, add)."""
        lines = [
            f"table inet {FIREWALL_TABLE}",
            f"delete table inet {FIREWALL_TABLE}",
            f"table inet {FIREWALL_TABLE} {{",
            "  chain forward {",
            f"    type filter hook forward priority {FIREWALL_PRIORITY}; "
            f"policy {self.forward_policy};",
            "    ct state established,related accept",
        ]
        if self.agent_mark is not None:
            mark = f"0x{self.agent_mark:08x}"
            lines.append(f"    ct mark & {mark} == {mark} accept")
        lines += [f'    iifname "{a.iif}" oifname "{a.oif}" accept' for a in self.allow]
        lines += ['    counter comment "reached the policy"', "  }", "}"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Endpoint:
    host: str
    iface: str
    addresses: tuple[ipaddress.IPv4Interface, ...]


@dataclass(frozen=True)
class Link:
    a: Endpoint
    b: Endpoint


@dataclass(frozen=True)
class Host:
    name: str
    kind: HostKind
    forwarding: bool
    routes: tuple[Route, ...]
    processes: tuple[str, ...]
    firewall: Firewall | None


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    hosts: tuple[Host, ...]
    links: tuple[Link, ...]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in topology {self.name!r}")

    def endpoints(self, host: str) -> tuple[Endpoint, ...]:
        return tuple(e for link in self.links for e in (link.a, link.b) if e.host == host)

    def addresses(self, host: str) -> tuple[ipaddress.IPv4Interface, ...]:
        return tuple(a for e in self.endpoints(host) for a in e.addresses)

    def address(self, host: str) -> str:
        """The host's first address, without prefix length."""
        addrs = self.addresses(host)
        if not addrs:
            raise KeyError(f"host {host!r} has no address")
        return str(addrs[0].ip)


# --- parsing ----------------------------------------------------------------------------


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> TopologyError:
        return TopologyError(self.source, where, problem)

    def table(self, value: object, where: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a table, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(
                where, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
            )
        return value

    def typed(self, value: object, kind: type, where: str) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(where, f"expected {kind.__name__}, got {value!r}")
        return value

    def strings(self, value: object, where: str) -> list[str]:
        items = self.typed(value, list, where)
        return [self.typed(v, str, f"{where}[{i}]") for i, v in enumerate(items)]

    def in_lab(self, net: ipaddress.IPv4Network | ipaddress.IPv4Address, where: str) -> None:
        if isinstance(net, ipaddress.IPv4Network):
            ok = net.prefixlen == 0 or any(net.subnet_of(r) for r in LAB_RANGES)
        else:
            ok = any(net in r for r in LAB_RANGES)
        if not ok:
            ranges = ", ".join(map(str, LAB_RANGES))
            raise self.fail(where, f"{net} is outside the lab ranges ({ranges})")


def _endpoint(r: _Reader, value: object, where: str) -> Endpoint:
    t = r.table(value, where, {"host", "iface", "addresses"})
    for key in ("host", "iface"):
        if key not in t:
            raise r.fail(where, f"missing key {key!r}")
    host = r.typed(t["host"], str, f"{where}.host")
    iface = r.typed(t["iface"], str, f"{where}.iface")
    if not _IFNAME.match(iface) or iface == "lo":
        raise r.fail(f"{where}.iface", f"bad interface name {iface!r} ([a-z][a-z0-9_.]{{,14}})")
    addrs = []
    for i, text in enumerate(r.strings(t.get("addresses", []), f"{where}.addresses")):
        at = f"{where}.addresses[{i}]"
        if "/" not in text:
            raise r.fail(at, f"{text!r} needs a prefix length (e.g. 10.77.0.10/24)")
        try:
            addr = ipaddress.IPv4Interface(text)
        except ValueError as exc:
            raise r.fail(at, f"not an IPv4 address/prefix: {exc}") from None
        r.in_lab(addr.network, at)
        addrs.append(addr)
    return Endpoint(host, iface, tuple(addrs))


def _route(r: _Reader, value: object, where: str) -> Route:
    t = r.table(value, where, {"to", "via"})
    for key in ("to", "via"):
        if key not in t:
            raise r.fail(where, f"missing key {key!r}")
    to_text = r.typed(t["to"], str, f"{where}.to")
    try:
        to = ipaddress.IPv4Network("0.0.0.0/0" if to_text == "default" else to_text)
        via = ipaddress.IPv4Address(r.typed(t["via"], str, f"{where}.via"))
    except ValueError as exc:
        raise r.fail(where, f"bad route: {exc}") from None
    r.in_lab(to, f"{where}.to")
    r.in_lab(via, f"{where}.via")
    return Route(to, via)


def _firewall(r: _Reader, value: object, where: str) -> Firewall:
    t = r.table(value, where, {"forward_policy", "accept_agent_mark", "agent_mark", "allow"})
    policy = r.typed(t.get("forward_policy", "drop"), str, f"{where}.forward_policy")
    if policy not in {"drop", "accept"}:
        raise r.fail(f"{where}.forward_policy", f"must be 'drop' or 'accept', not {policy!r}")
    defer = r.typed(t.get("accept_agent_mark", True), bool, f"{where}.accept_agent_mark")
    mark = r.typed(t.get("agent_mark", DEFAULT_AGENT_MARK), int, f"{where}.agent_mark")
    if mark <= 0 or mark & (mark - 1) or mark >= 1 << 32:
        raise r.fail(f"{where}.agent_mark", "must be a single bit of the 32-bit ct mark")
    allow = []
    for i, item in enumerate(r.typed(t.get("allow", []), list, f"{where}.allow")):
        a = r.table(item, f"{where}.allow[{i}]", {"in", "out"})
        if set(a) != {"in", "out"}:
            raise r.fail(f"{where}.allow[{i}]", "needs both 'in' and 'out' interface names")
        allow.append(Allow(str(a["in"]), str(a["out"])))
    return Firewall(policy, mark if defer else None, tuple(allow))


def _host(r: _Reader, name: str, value: object) -> Host:
    where = f"hosts.{name}"
    if not _HOST_NAME.match(name):
        raise r.fail(where, f"bad host name {name!r} ([a-z][a-z0-9]{{,9}}, no dashes)")
    t = r.table(value, where, {"kind", "forwarding", "routes", "processes", "firewall"})
    kind = r.typed(t.get("kind", "host"), str, f"{where}.kind")
    if kind not in {"host", "switch"}:
        raise r.fail(f"{where}.kind", f"must be 'host' or 'switch', not {kind!r}")
    forwarding = r.typed(t.get("forwarding", False), bool, f"{where}.forwarding")
    routes = tuple(
        _route(r, v, f"{where}.routes[{i}]")
        for i, v in enumerate(r.typed(t.get("routes", []), list, f"{where}.routes"))
    )
    processes = tuple(r.strings(t.get("processes", []), f"{where}.processes"))
    for i, proc in enumerate(processes):
        if proc not in KNOWN_PROCESSES:
            known = ", ".join(sorted(KNOWN_PROCESSES))
            raise r.fail(f"{where}.processes[{i}]", f"unknown process {proc!r} (known: {known})")
    firewall = _firewall(r, t["firewall"], f"{where}.firewall") if "firewall" in t else None
    if kind == "switch" and (forwarding or routes or processes or firewall):
        raise r.fail(where, "a switch has no forwarding, routes, processes or firewall")
    if firewall is not None and not forwarding:
        raise r.fail(f"{where}.firewall", "a forward firewall needs forwarding = true")
    return Host(name, kind, forwarding, routes, processes, firewall)


def _check(r: _Reader, topo: Topology) -> None:
    hosts = {h.name: h for h in topo.hosts}
    seen_if: set[tuple[str, str]] = set()
    seen_addr: dict[ipaddress.IPv4Address, str] = {}
    for i, link in enumerate(topo.links):
        for side, end in (("a", link.a), ("b", link.b)):
            where = f"links[{i}].{side}"
            if end.host not in hosts:
                raise r.fail(f"{where}.host", f"unknown host {end.host!r}")
            if (end.host, end.iface) in seen_if:
                raise r.fail(f"{where}.iface", f"{end.host} already has an interface {end.iface}")
            seen_if.add((end.host, end.iface))
            if hosts[end.host].kind == "switch" and end.addresses:
                raise r.fail(f"{where}.addresses", f"{end.host} is a switch: no addresses")
            for addr in end.addresses:
                if addr.ip in seen_addr:
                    raise r.fail(f"{where}.addresses", f"{addr.ip} already on {seen_addr[addr.ip]}")
                seen_addr[addr.ip] = f"{end.host}:{end.iface}"
        if link.a.host == link.b.host:
            raise r.fail(f"links[{i}]", f"links {link.a.host} to itself")
    linked = {e.host for link in topo.links for e in (link.a, link.b)}
    for host in topo.hosts:
        if host.name not in linked:
            raise r.fail(f"hosts.{host.name}", "is not linked to any other host")
        nets = [a.network for a in topo.addresses(host.name)]
        for j, route in enumerate(host.routes):
            if not any(route.via in n for n in nets):
                raise r.fail(
                    f"hosts.{host.name}.routes[{j}].via",
                    f"{route.via} is not on a network of {host.name} ({', '.join(map(str, nets))})",
                )
        ifaces = {e.iface for e in topo.endpoints(host.name)}
        for j, allow in enumerate(host.firewall.allow if host.firewall else ()):
            for name in (allow.iif, allow.oif):
                if name not in ifaces:
                    raise r.fail(f"hosts.{host.name}.firewall.allow[{j}]", f"no iface {name!r}")


def parse(text: str, name: str, source: str = "<string>") -> Topology:
    """Parse and validate a topology; raise TopologyError naming file, key and problem."""
    r = _Reader(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise r.fail("", f"not valid TOML: {exc}") from None
    top = r.table(doc, "", {"lab", "hosts", "links"})
    lab = r.table(top.get("lab", {}), "lab", {"description"})
    description = r.typed(lab.get("description", ""), str, "lab.description")
    if "hosts" not in top or not top["hosts"]:
        raise r.fail("hosts", "a topology needs at least one host")
    host_tables = r.table(top["hosts"], "hosts", set(top["hosts"]))
    hosts = tuple(_host(r, n, v) for n, v in host_tables.items())
    links_raw = r.typed(top.get("links", []), list, "links")
    links = []
    for i, item in enumerate(links_raw):
        t = r.table(item, f"links[{i}]", {"a", "b"})
        if set(t) != {"a", "b"}:
            raise r.fail(f"links[{i}]", "a link needs both ends 'a' and 'b'")
        links.append(
            Link(_endpoint(r, t["a"], f"links[{i}].a"), _endpoint(r, t["b"], f"links[{i}].b"))
        )
    topo = Topology(name, description, hosts, tuple(links))
    _check(r, topo)
    return topo


def load(scenario: str | Path) -> Topology:
    """A scenario name from labs/topologies/ ("basic") or a path to a .toml file."""
    path = Path(scenario)
    if path.suffix != ".toml":
        path = TOPOLOGIES / f"{scenario}.toml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in TOPOLOGIES.glob("*.toml")))
            raise TopologyError(str(scenario), "", f"no such scenario (known: {known})")
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(str(path), "", f"cannot read: {exc.strerror}") from None
    return parse(text, path.stem, str(path))


def scenarios() -> list[str]:
    return sorted(p.stem for p in TOPOLOGIES.glob("*.toml"))
