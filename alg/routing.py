"""Request routing: where a request the proxy is responsible for goes next (sans-I/O).

Theory of operation
-------------------
`route(uri, config, ctx)` is a pure function of the Request-URI, the static routing
configuration and the per-request context (side of origin, `now`, Call-ID, next hops
known to be down). It answers a `RouteDecision` (ordered targets) or a `Reject`. It is
called after the Route header set has been handled (RFC 3261 §16.4, §16.12): it decides
for the Request-URI only, as §16.5 describes. Sources are tried in this order:

1. Location service, for URIs in our own domains (RFC 3261 §16.5): the registered
   contacts of the address-of-record become the targets, each with the contact as new
   Request-URI (§16.6 step 2). Several contacts mean *parallel* forking, highest q
   first. A contact registered through edge proxies carries its Path (RFC 3327 §5.3),
   whose first hop is the next hop; one registered from behind a NAT carries the
   address the REGISTER came from (`received`), which is where it can be reached.
2. Prefix table, for tel: URIs (RFC 3966) and numeric users in our domains: the longest
   matching digit prefix gives next hops plus Request-URI rewrite rules (strip N leading
   digits, prepend digits, rewrite the domain), as the seed talk's "Telephone Routing
   Prefixes" slide describes. Next hops are ordered for load balancing and failover
   (seed "Load Balancing"): ascending priority, RFC 2782 weighted order inside one
   priority, with the RNG seeded from the Call-ID so every request of a call goes to the
   same gateway; hops the caller reports down go last.
3. Default upstream (outbound proxy), with the Request-URI unchanged.
4. DNS (RFC 3263) for other domains: a single `source="dns"` target naming the host (or
   `maddr`) to resolve; `expand_dns` turns the resolver's answer into concrete targets.

Requests from the outside are only routed to our own users: anything else is 403, so
the proxy is never an open relay or a free gateway to the PSTN. A prefix route may be
opened to the outside explicitly (`from_outside = true`, e.g. a DID range of a PBX).

Route tables are TOML files (see `alg/routes.example.toml`), loaded into a frozen table
indexed by prefix: a longest-prefix lookup costs one dict probe per distinct prefix
length, independent of the number of routes. `RoutingTable.reload()` builds a new table
or raises `RouteTableError`, leaving the running one untouched; the shell swaps it in.
"""

from __future__ import annotations

import logging
import random
import tomllib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

from alg.dns_resolver import ResolvedTarget, default_port, weighted_order
from alg.errors import RouteTableError, SipParseError
from alg.location import canonical_aor
from alg.sip.uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri, split_host_port

log = logging.getLogger("sipwall.alg.routing")

Side = Literal["inside", "outside"]
Source = Literal["location", "prefix", "default", "dns"]
TRANSPORTS: Final = frozenset({"udp", "tcp", "tls", "sctp", "ws", "wss"})
_VISUAL: Final = str.maketrans("", "", "-.()")  # RFC 3966 §5.1.1 visual separators
_ADD_CHARS: Final = frozenset("0123456789+*")


# ----------------------------------------------------------------------------- location


class RegisteredContact(Protocol):
    """One binding of the location service (RFC 3261 §10.3)."""

    @property
    def uri(self) -> str: ...
    @property
    def q(self) -> float: ...
    @property
    def received(self) -> tuple[str, int, str] | None:
        """(host, port, transport) the REGISTER came from, when behind a NAT."""

    @property
    def path(self) -> Sequence[str]:
        """Path URIs recorded at registration (RFC 3327), first = nearest to us."""


class ContactLookup(Protocol):
    def lookup(self, aor: str, now: float) -> Sequence[RegisteredContact]: ...


class UserDirectory(Protocol):
    """Optional: tells a known-but-unregistered user (480) from an unknown one (404)."""

    def exists(self, aor: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Contact:
    """A plain `RegisteredContact`, for location stores and tests."""

    uri: str
    q: float = 1.0
    received: tuple[str, int, str] | None = None
    path: tuple[str, ...] = ()


def aor_of(uri: SipUri) -> str:
    """Canonical address-of-record. RFC 3261 §10.3: the registrar and the proxy must
    agree on it, so this is exactly the location service's index."""
    return canonical_aor(uri)


# ----------------------------------------------------------------------------- table


@dataclass(frozen=True, slots=True)
class NextHop:
    host: str
    port: int  # as given, or the transport's default
    transport: str = "udp"
    priority: int = 0
    weight: int = 1
    # whether `port` was written: a name without a port is looked up by SRV for its
    # transport (RFC 3263 §4.2), with the default port only when there is no SRV record
    port_given: bool = True

    @property
    def given_port(self) -> int | None:
        return self.port if self.port_given else None

    @classmethod
    def parse(cls, text: str, *, priority: int = 0, weight: int = 1) -> NextHop:
        """`host[:port][;transport=x]`, the next-hop syntax of the route table."""
        hostport, _, params = text.strip().partition(";")
        transport = "udp"
        for param in filter(None, params.split(";")):
            name, _, value = param.partition("=")
            if name.strip().lower() != "transport":
                raise ValueError(f"unknown next hop parameter {name!r}")
            transport = value.strip().lower()
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        try:
            host, _, port = split_host_port(hostport)
        except SipParseError as exc:
            raise ValueError(f"bad next hop {text!r}: {exc.reason}") from None
        return cls(
            host, port or default_port(transport), transport, priority, weight, port is not None
        )


@dataclass(frozen=True, slots=True)
class PrefixRoute:
    name: str
    prefix: str
    next_hops: tuple[NextHop, ...]
    strip: int = 0
    add: str = ""
    domain: str | None = None
    from_outside: bool = False

    def rewrite_number(self, number: str) -> str:
        return self.add + number[self.strip :]


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Prefix routes indexed by prefix, plus the default upstream."""

    routes: Mapping[str, PrefixRoute] = field(default_factory=lambda: MappingProxyType({}))
    default: tuple[NextHop, ...] = ()
    source: str | None = None
    _lengths: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", MappingProxyType(dict(self.routes)))
        lengths = sorted({len(prefix) for prefix in self.routes}, reverse=True)
        object.__setattr__(self, "_lengths", tuple(lengths))

    def next_hops(self) -> tuple[NextHop, ...]:
        """Every next hop of the table: the default's, then each route's."""
        return (*self.default, *(hop for route in self.routes.values() for hop in route.next_hops))

    def hops(self) -> frozenset[tuple[str, int]]:
        """Every next hop of the table, as (host, port): the gateways whose health is
        watched (alg.hop_health)."""
        return frozenset((hop.host, hop.port) for hop in self.next_hops())

    def lookup(self, number: str) -> PrefixRoute | None:
        """Longest prefix of `number` (digits only) that has a route."""
        for length in self._lengths:
            if length <= len(number):
                found = self.routes.get(number[:length])
                if found is not None:
                    return found
        return None

    @classmethod
    def load(cls, path: str | Path) -> RoutingTable:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RouteTableError(f"cannot read: {exc.strerror}", source=str(path)) from None
        return cls.from_toml(text, source=str(path))

    def reload(self, path: str | Path | None = None) -> RoutingTable:
        """A new table from `path` (default: where this one came from). Raises
        `RouteTableError` on any fault; this table is immutable and stays valid."""
        where = path if path is not None else self.source
        if where is None:
            raise RouteTableError("no file to reload from")
        return RoutingTable.load(where)

    @classmethod
    def from_toml(cls, text: str, source: str | None = None) -> RoutingTable:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RouteTableError(f"invalid TOML: {exc}", source=source) from None
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str | None = None) -> RoutingTable:
        _only_keys(data, {"default", "route"}, "table", source)
        default: tuple[NextHop, ...] = ()
        if "default" in data:
            section = _table(data["default"], "default", source)
            _only_keys(section, {"next_hops"}, "default", source)
            default = _next_hops(section.get("next_hops"), "default", source)
        entries = data.get("route", [])
        if not isinstance(entries, list):
            raise RouteTableError("must be an array of tables ([[route]])", "route", source)
        routes: dict[str, PrefixRoute] = {}
        for index, entry in enumerate(entries):
            route = _route(entry, f"route[{index}]", source)
            if route.prefix in routes:
                first = routes[route.prefix].name
                raise RouteTableError(
                    f"prefix {route.prefix!r} already routed by {first}", route.name, source
                )
            routes[route.prefix] = route
        return cls(routes, default, source)


def _table(value: object, entry: str, source: str | None) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise RouteTableError("must be a table", entry, source)
    return value


def _only_keys(data: Mapping[str, Any], allowed: set[str], entry: str, source: str | None) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RouteTableError(f"unknown key(s) {', '.join(unknown)}", entry, source)


def _int(
    data: Mapping[str, Any], key: str, default: int, top: int, *, entry: str, src: str | None
) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise RouteTableError(f"{key} must be an integer 0..{top}", entry, src)
    return value


def _next_hops(value: object, entry: str, source: str | None) -> tuple[NextHop, ...]:
    if not isinstance(value, list) or not value:
        raise RouteTableError("next_hops must be a non-empty array", entry, source)
    hops = []
    for index, item in enumerate(value):
        where = f"{entry}.next_hops[{index}]"
        hop_data = _table({"hop": item} if isinstance(item, str) else item, where, source)
        _only_keys(hop_data, {"hop", "priority", "weight"}, where, source)
        text = hop_data.get("hop")
        if not isinstance(text, str):
            raise RouteTableError("hop must be a string host[:port][;transport=x]", where, source)
        priority = _int(hop_data, "priority", 0, 65535, entry=where, src=source)
        weight = _int(hop_data, "weight", 1, 65535, entry=where, src=source)
        try:
            hops.append(NextHop.parse(text, priority=priority, weight=weight))
        except ValueError as exc:
            raise RouteTableError(str(exc), where, source) from None
    return tuple(hops)


def _route(entry: object, name: str, source: str | None) -> PrefixRoute:
    data = _table(entry, name, source)
    prefix = data.get("prefix")
    if not isinstance(prefix, str) or not prefix.isascii() or not prefix.isdigit():
        # "" is not allowed either: a catch-all belongs in [default].
        raise RouteTableError("prefix must be a non-empty string of digits", name, source)
    label = data.get("name", f"{name} (prefix {prefix!r})")
    if not isinstance(label, str):
        raise RouteTableError("name must be a string", name, source)
    name = label
    keys = {"prefix", "next_hops", "strip", "add", "domain", "from_outside", "name"}
    _only_keys(data, keys, name, source)
    add = data.get("add", "")
    if not isinstance(add, str) or not _ADD_CHARS.issuperset(add):
        raise RouteTableError("add must contain only digits, '+' and '*'", name, source)
    domain = data.get("domain")
    if domain is not None:
        bad_domain = RouteTableError("domain must be a host name or address", name, source)
        if not isinstance(domain, str):
            raise bad_domain
        try:
            host, _, port = split_host_port(domain)
        except SipParseError:
            raise bad_domain from None
        if port is not None:
            raise RouteTableError("domain must not carry a port", name, source)
        domain = host
    from_outside = data.get("from_outside", False)
    if not isinstance(from_outside, bool):
        raise RouteTableError("from_outside must be true or false", name, source)
    return PrefixRoute(
        name=name,
        prefix=prefix,
        next_hops=_next_hops(data.get("next_hops"), name, source),
        strip=_int(data, "strip", 0, 64, entry=name, src=source),
        add=add,
        domain=domain,
        from_outside=from_outside,
    )


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send one branch. `uri` is the (rewritten) Request-URI. For `source="dns"`
    the next hop is a name to resolve per RFC 3263; port/transport may then be None."""

    uri: str
    next_hop: str
    port: int | None
    transport: str | None
    source: Source
    path: tuple[str, ...] = ()  # RFC 3327: becomes the Route header set of the branch
    # the SIP domain a resolved target was found for: what its TLS certificate must name
    server_name: str | None = None

    @property
    def needs_resolution(self) -> bool:
        return self.source == "dns"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """`targets` in order. `parallel`: fork to all at once (RFC 3261 §16.6); otherwise
    try them one after the other until one gives a final answer other than 408/503."""

    targets: tuple[Target, ...]
    parallel: bool = False

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("a route decision needs at least one target")


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str


Decision = RouteDecision | Reject


@dataclass(frozen=True, slots=True)
class RouterConfig:
    local_domains: frozenset[str]
    location: ContactLookup
    table: RoutingTable = field(default_factory=RoutingTable)
    directory: UserDirectory | None = None

    def __post_init__(self) -> None:
        domains = frozenset(d.lower().strip("[]") for d in self.local_domains)
        object.__setattr__(self, "local_domains", domains)

    def is_local(self, uri: SipUri) -> bool:
        return uri.host.lower() in self.local_domains


@dataclass(frozen=True, slots=True)
class RequestContext:
    side: Side
    now: float
    call_id: str = ""  # keeps every request of a call on the same gateway
    unavailable: frozenset[tuple[str, int]] = frozenset()  # (host, port) seen failing


FORBIDDEN: Final = Reject(403, "Forbidden")


def route(uri: Uri, config: RouterConfig, ctx: RequestContext) -> Decision:
    """Route a Request-URI the proxy is responsible for; see the module docstring."""
    if isinstance(uri, AbsoluteUri):
        return Reject(416, "Unsupported URI Scheme")  # RFC 3261 §8.2.2.1
    if isinstance(uri, TelUri):
        return _route_tel(uri, config, ctx)
    if not config.is_local(uri):
        if ctx.side == "outside":
            return FORBIDDEN  # not our user: never relay for the outside
        if config.table.default:
            return _to_default(uri, config, ctx)
        return RouteDecision((_dns_target(uri),))
    if uri.user is None:
        return Reject(404, "Not Found")  # addressed to the proxy itself, nothing to route
    aor = aor_of(uri)
    contacts = config.location.lookup(aor, ctx.now)
    targets = tuple(t for t in map(_contact_target, _by_q(contacts)) if t is not None)
    if targets:
        return RouteDecision(targets, parallel=len(targets) > 1)
    number = _number_of(uri.user)
    if number:
        decision = _by_prefix(uri, number, config, ctx)
        if decision is not None:
            return decision
    if config.directory is not None and config.directory.exists(aor):
        return Reject(480, "Temporarily Unavailable")
    return Reject(404, "Not Found")


def _number_of(text: str) -> str:
    """Digits of a telephone number (no '+', no visual separators), or "" if not one."""
    digits = text.translate(_VISUAL).removeprefix("+")
    return digits if digits.isascii() and digits.isdigit() else ""


def _by_q(contacts: Sequence[RegisteredContact]) -> list[RegisteredContact]:
    return sorted(contacts, key=lambda c: -c.q)  # stable: registration order for equal q


def _contact_target(contact: RegisteredContact) -> Target | None:
    try:
        uri = parse_uri(contact.uri)
    except SipParseError:
        uri = None
    if not isinstance(uri, SipUri):
        log.warning("ignoring unroutable registered contact %r", contact.uri)
        return None
    path = tuple(p.strip().removeprefix("<").removesuffix(">") for p in contact.path)
    if path:
        first = parse_uri(path[0])
        if isinstance(first, SipUri):
            host, port, transport = _hop_of(first)
            return Target(contact.uri, host, port, transport, "location", path)
    if contact.received is not None:
        host, port, transport = contact.received
        return Target(contact.uri, host, port, transport, "location")
    host, port, transport = _hop_of(uri)
    return Target(contact.uri, host, port, transport, "location")


def _hop_of(uri: SipUri) -> tuple[str, int, str]:
    transport = (uri.param("transport") or ("tls" if uri.is_sips else "udp")).lower()
    host = uri.param("maddr") or uri.host
    return host, uri.port or default_port(transport), transport


def _ordered(hops: Sequence[NextHop], ctx: RequestContext) -> list[NextHop]:
    rng = random.Random(zlib.crc32(ctx.call_id.encode()))  # noqa: S311 - load sharing, not crypto
    ordered = weighted_order(hops, lambda h: h.priority, lambda h: h.weight, rng)
    up = [h for h in ordered if (h.host, h.port) not in ctx.unavailable]
    return up + [h for h in ordered if (h.host, h.port) in ctx.unavailable]


def _by_prefix(
    uri: SipUri | TelUri, number: str, config: RouterConfig, ctx: RequestContext
) -> Decision | None:
    """The prefix route of `number`, or None when the table has none."""
    found = config.table.lookup(number) if number else None
    if found is None:
        return None
    if ctx.side == "outside" and not found.from_outside:
        return FORBIDDEN  # the PSTN gateways are for our own users only
    targets = tuple(
        Target(_rewrite(uri, found, number, hop), hop.host, hop.given_port, hop.transport, "prefix")
        for hop in _ordered(found.next_hops, ctx)
    )
    return RouteDecision(targets)


def _route_tel(uri: TelUri, config: RouterConfig, ctx: RequestContext) -> Decision:
    decision = _by_prefix(uri, _number_of(uri.digits), config, ctx)
    if decision is not None:
        return decision
    if ctx.side == "outside":
        return FORBIDDEN
    if config.table.default:
        return _to_default(uri, config, ctx)
    return Reject(404, "No Route To Number")


def _rewrite(uri: SipUri | TelUri, route: PrefixRoute, number: str, hop: NextHop) -> str:
    user = route.rewrite_number(number)
    domain = route.domain or hop.host
    host = f"[{domain}]" if ":" in domain else domain
    if isinstance(uri, TelUri):
        # RFC 3261 §19.1.6: a telephone number as a SIP URI carries user=phone.
        return str(parse_uri(f"sip:{user}@{host};user=phone"))
    # The old port, transport and maddr belonged to our domain, not to the new one.
    params = tuple((k, v) for k, v in uri.params if k.lower() not in {"transport", "maddr"})
    return str(uri.with_changes(user=user, host=host, port=None, params=params))


def _to_default(uri: SipUri | TelUri, config: RouterConfig, ctx: RequestContext) -> RouteDecision:
    return RouteDecision(
        tuple(
            Target(str(uri), hop.host, hop.given_port, hop.transport, "default")
            for hop in _ordered(config.table.default, ctx)
        )
    )


def _dns_target(uri: SipUri) -> Target:
    transport = uri.param("transport")
    host = uri.param("maddr") or uri.host
    return Target(str(uri), host, uri.port, transport.lower() if transport else None, "dns")


def expand_dns(target: Target, resolved: Sequence[ResolvedTarget]) -> Decision:
    """Concrete targets for a `source="dns"` target from RFC 3263 resolution, in order.
    Nothing resolved is answered 503: no server can take the request for now (RFC 3261
    §21.5.4); the domain may well exist, so 404 would be a lie."""
    if not resolved:
        return Reject(503, "Service Unavailable")
    return RouteDecision(
        tuple(
            # RFC 5922 §4: a TLS server proves the domain that was resolved (the URI's
            # host, or its maddr), not the host names DNS answered with, which an
            # attacker on the path could choose
            Target(target.uri, r.address, r.port, r.transport, "dns", target.path, target.next_hop)
            for r in resolved
        )
    )
