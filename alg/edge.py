"""The edge proxy's decisions for new requests: registrar, authentication, routing.

`EdgeRouter` is what `ProxyCore` asks about every new out-of-dialog request (its
`Router`). In order:

1. REGISTER for one of our domains is the registrar's (RFC 3261 §10.3): authenticated
   with a 401 challenge when the registrar requires it, then answered locally. An
   OPTIONS addressed to us rather than to a user (a trunk's keep-alive ping) is answered
   200 with Allow and Accept (§11.2).
2. A request from the inside that would leave for the outside must carry valid
   Proxy-Authorization for our realm (407 otherwise), as the seed talk puts it: only
   outgoing calls are challenged. Requests from the outside are never challenged, and
   `alg.routing` routes them only to our own users.
3. Routing (`alg.routing.route`): registered contacts (forked in parallel, reached at the
   address they registered from — the route to a UA behind NAT), prefix routes and the
   default upstream (tried in order: failover), DNS targets.

Registering with an upstream provider through us
------------------------------------------------
A REGISTER from the inside for a domain that is not ours goes upstream like any other
request (the default upstream, typically the provider's registrar), with its Contact
masked by topology hiding (alg.media.rewrite: `sip:<token>@<our outside address>`), so the
provider's location service points at us, never at the inside phone. The provider's
401/407 challenges and the phone's credentials for the provider's realm pass untouched
(RFC 3261 §22.3: a proxy only consumes credentials of its own realm).

`RelayedRegistrations` (alg/relayed.py, journaled so that it survives a restart)
remembers each Contact relayed that way: the URI the phone wrote, where the REGISTER came
from (the phone's address as we see it: behind a NAT, the only way to reach it, RFC 3261
§10.3 / RFC 5626 §5.3) and which upstream hosts it went to.
When the provider later sends a call to that Contact (RFC 3261 §16.5: its Request-URI is
the registered contact, which our inbound restore turns back into the phone's URI), the
request is routed to the phone — only when it comes from one of those hosts: nobody else
may use a phone's registration to reach the inside. Unregistering (expires=0,
`Contact: *`) or the requested lifetime running out removes the entry. We do not see the
registrar's 200 OK here, so an entry lives as long as the phone asked for; a phone
refreshes before the (possibly shorter) lifetime granted to it, which renews it.

Everything is synchronous and pure but for the stores it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from alg import routing
from alg.auth import Authenticated, AuthFailure, Challenge, DigestAuthenticator
from alg.dns_resolver import ResolvedTarget
from alg.hop_health import HopHealth
from alg.location import LocationStore, Source
from alg.proxy_model import Answer, Endpoint, ProxyConfig, Resolve, Routed, Target
from alg.registrar import Registrar
from alg.relayed import RelayedRegistrations
from alg.sip import SipMessage, SipUri, TelUri, is_ip_literal


class LocationLookup:
    """The location store as `alg.routing.ContactLookup` (one shared AOR form)."""

    def __init__(self, store: LocationStore) -> None:
        self.store = store

    def lookup(self, aor: str, now: float) -> Sequence[routing.Contact]:
        return [
            routing.Contact(
                uri=binding.contact,
                q=binding.q if binding.q is not None else 1.0,
                received=(
                    (binding.source.address, binding.source.port, binding.source.transport)
                    if binding.source is not None
                    else None
                ),
                path=binding.path,
            )
            for binding in self.store.lookup(aor, now)
        ]


# What we answer an OPTIONS addressed to us with (RFC 3261 §11.2): the methods we
# proxy or handle, and the body type whose addresses we rewrite.
_OPTIONS_ANSWER: Final = (
    (
        "Allow",
        b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, PRACK, INFO, "
        b"SUBSCRIBE, NOTIFY, REFER, MESSAGE",
    ),
    ("Accept", b"application/sdp"),
)


class EdgeRouter:
    def __init__(
        self,
        proxy: ProxyConfig,
        routes: routing.RouterConfig,
        *,
        registrar: Registrar | None = None,
        register_auth: DigestAuthenticator | None = None,
        outbound_auth: DigestAuthenticator | None = None,
        realm: str = "sipwall",
        dns: bool = False,
        relayed: RelayedRegistrations | None = None,
        wall_offset: float = 0.0,
        hops: HopHealth | None = None,
    ) -> None:
        self.dns = dns  # may names be resolved (RFC 3263)? off: never ask for a lookup
        # next hops held down for not answering (the core reports them): routed last
        self.hops = hops
        self.proxy = proxy
        self.routes = routes
        self.registrar = registrar
        self.register_auth = register_auth
        self.outbound_auth = outbound_auth
        self.realm = realm
        # relayed registrations keep POSIX times (they are journaled across restarts);
        # `now` here is the core's monotonic clock
        self.relayed = relayed if relayed is not None else RelayedRegistrations()
        self.wall_offset = wall_offset
        # RFC 3263 answers by Request-URI, filled by the shell (alg.aio) after a lookup;
        # short-lived: the resolver has its own TTL-honouring cache
        self._resolved: dict[str, tuple[float, tuple[ResolvedTarget, ...]]] = {}
        # the addresses the table's next hops given by name resolved to, by lookup key:
        # gateways too, so their health is watched as the literal hops' is
        self._named_hops: dict[str, frozenset[tuple[str, int]]] = {}
        self._watch_hops()

    def remember_resolution(
        self, uri: str, targets: Sequence[ResolvedTarget], now: float, ttl: float = 30.0
    ) -> None:
        self._resolved[uri] = (now + ttl, tuple(targets))
        if len(self._resolved) > 4096:  # bounded: drop what has expired
            self._resolved = {u: v for u, v in self._resolved.items() if v[0] > now}
        if uri in self._named_hops:
            self._named_hops[uri] = frozenset((t.address, t.port) for t in targets)
            self._watch_hops()

    def reload_routes(self, table: routing.RoutingTable) -> None:
        """Swap the prefix table (SIGHUP / `sipwall ctl reload`): calls in progress keep
        the targets they were given."""
        self.routes = routing.RouterConfig(
            self.routes.local_domains, self.routes.location, table, self.routes.directory
        )
        self._watch_hops()

    def _watch_hops(self) -> None:
        """Watch the table's next hops and, for those given by name, the addresses they
        last resolved to."""
        table = self.routes.table
        keys = [
            hop_lookup_key(hop.host, hop.given_port, hop.transport)
            for hop in table.next_hops()
            if not is_ip_literal(hop.host)
        ]
        named = {key: self._named_hops.get(key, frozenset()) for key in keys}
        self._named_hops = named
        if self.hops is not None:
            self.hops.watch(table.hops().union(*named.values()))

    def route(self, request: SipMessage, source: Endpoint, now: float) -> Routed | Answer | Resolve:
        uri = request.request_uri
        if request.method == "REGISTER" and self._is_ours(uri):
            return self._register(request, source, now)
        if (
            request.method == "OPTIONS"
            and isinstance(uri, SipUri)
            and uri.user is None
            and self.proxy.is_ours(uri.host, uri.port)
        ):
            # addressed to us, not to a user (RFC 3261 §11): a trunk's keep-alive ping
            return Answer(200, headers=_OPTIONS_ANSWER)
        if source.side == "outside" and request.method != "REGISTER":
            relayed = self.relayed.lookup(uri, source.host, now + self.wall_offset)
            if relayed is not None:  # a call from the provider to a phone registered there
                return Routed((Target(relayed.reach),), parallel=False)
        context = routing.RequestContext(
            source.side, now, request.call_id, self.hops.down(now) if self.hops else frozenset()
        )
        decided = routing.route(uri, self.routes, context)
        if isinstance(decided, routing.Reject):
            return Answer(decided.status, decided.reason)
        expanded = self._expand_dns(decided, now)
        if not isinstance(expanded, routing.RouteDecision):
            return expanded
        decided = expanded
        targets = tuple(t for t in map(self._target, decided.targets) if t is not None)
        if not targets:
            return Answer(503, "Service Unavailable (no reachable next hop)")
        leaving = source.side == "inside" and any(t.next_hop.side == "outside" for t in targets)
        if leaving and self.outbound_auth is not None:
            answer = self._authenticate(self.outbound_auth, request, now)
            if answer is not None:
                return answer
        if leaving and request.method == "REGISTER":
            upstream = frozenset(t.next_hop.host for t in targets if t.next_hop.side == "outside")
            self.relayed.note(request, source, upstream, now + self.wall_offset)
        return Routed(targets, parallel=decided.parallel)

    # --- pieces -------------------------------------------------------------------

    def _is_ours(self, uri: SipUri | TelUri | object) -> bool:
        return isinstance(uri, SipUri) and (
            self.routes.is_local(uri) or self.proxy.is_ours(uri.host, uri.port)
        )

    def _register(self, request: SipMessage, source: Endpoint, now: float) -> Answer:
        if self.registrar is None:
            return Answer(403, "Registration not offered here")
        identity = None
        if self.register_auth is not None:
            verdict = self.register_auth.verify(request, self.realm, now)
            if isinstance(verdict, Authenticated):
                identity = verdict.identity
            elif isinstance(verdict, AuthFailure):
                return Answer(verdict.status, verdict.reason)
        decision = self.registrar.handle(
            request, identity, Source(source.host, source.port, source.transport), now
        )
        response = decision.response
        if response.needs_challenge and self.register_auth is not None:
            challenge = self.register_auth.challenge(self.realm, now)
            return Answer(challenge.status, challenge.reason, challenge.headers)
        return Answer(response.status, response.reason, response.headers)

    def _authenticate(
        self, authenticator: DigestAuthenticator, request: SipMessage, now: float
    ) -> Answer | None:
        verdict = authenticator.verify(request, self.realm, now)
        if isinstance(verdict, Authenticated):
            return None
        if isinstance(verdict, Challenge):
            return Answer(verdict.status, verdict.reason, verdict.headers)
        return Answer(verdict.status, verdict.reason)

    def _expand_dns(
        self, decided: routing.RouteDecision, now: float
    ) -> routing.RouteDecision | Answer | Resolve:
        """Replace targets whose next hop is a name by what RFC 3263 resolution found
        (cached), or ask for the lookup: a Request-URI of another domain, and a next hop
        of the route table, the default upstream or a contact given by name."""
        if all(is_ip_literal(t.next_hop) for t in decided.targets):
            return decided
        expanded: list[routing.Target] = []
        for target in decided.targets:
            if is_ip_literal(target.next_hop):
                expanded.append(target)
                continue
            key = lookup_key(target)
            cached = self._resolved.get(key)
            if cached is None or cached[0] <= now:
                if not self.dns:
                    continue  # resolution disabled: this target cannot be reached
                return Resolve(key)
            found = routing.expand_dns(target, cached[1])
            if isinstance(found, routing.Reject):
                continue
            expanded.extend(found.targets)
        if not expanded:
            return Answer(503, "Service Unavailable (DNS found no server)")
        down = self.hops.down(now) if self.hops is not None else frozenset()
        if down:  # an address held down for not answering is tried last (alg.hop_health)
            expanded.sort(key=lambda t: (t.next_hop, t.port) in down)
        return routing.RouteDecision(tuple(expanded), decided.parallel)

    def _target(self, target: routing.Target) -> Target | None:
        """A routing target as the core's. A name is left only where resolution is off
        or found nothing (`_expand_dns`): such a target is skipped."""
        if not is_ip_literal(target.next_hop):
            return None
        transport = (target.transport or "udp").upper()
        port = target.port or (5061 if transport == "TLS" else 5060)
        host = target.next_hop.strip("[]")
        side = self.proxy.side_of(host)
        endpoint = Endpoint(side, transport, host, port, name=target.server_name)
        return Target(endpoint, target.uri, target.path)


def hop_lookup_key(host: str, port: int | None, transport: str | None) -> str:
    port_part = f":{port}" if port is not None else ""
    transport_part = f";transport={transport}" if transport else ""
    return f"sip:{host}{port_part}{transport_part}"


def lookup_key(target: routing.Target) -> str:
    """What to resolve for a target whose next hop is a name: the Request-URI itself for
    a domain of someone else's (RFC 3263 §4: its transport, port and SRV records), or a
    URI of the configured hop with the port and transport it was given (§4.2: a port
    means its A/AAAA records; without one, the transport's SRV records first)."""
    if target.needs_resolution:
        return target.uri
    return hop_lookup_key(target.next_hop, target.port, target.transport)
