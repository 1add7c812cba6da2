"""Building a running ALG from its configuration: stores, policies and the proxy core.

Kept apart from the asyncio shell so that tests can assemble exactly what `sipwall alg`
runs, and from the core so that the core stays free of files and databases.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import dns.asyncresolver
from dns.exception import DNSException

from alg import routing
from alg.auth import Algorithm, DigestAuthenticator, DigestPolicy, Role
from alg.cdr import CallRecorder, Cdr, CdrWriter
from alg.config import AlgConfig, ConfigError
from alg.dns_resolver import AsyncDnsResolver, ResolvedTarget
from alg.edge import EdgeRouter, LocationLookup
from alg.errors import AlgError, RouteTableError
from alg.hop_health import HopHealth
from alg.location import LocationStore, OnCoreClock, SqliteLocationStore
from alg.media.agents import AgentConfig, AgentPool
from alg.media.antiforgery import TrustedPeer as MediaTrustedPeer
from alg.media.core import MediaConfig, MediaCore
from alg.media.masking import InsideNetworks
from alg.media.rewrite import Hiding
from alg.media.session_timer import TimerSettings as MediaTimers
from alg.proxy import ProxyCore
from alg.ratelimit import Rate, RateLimitConfig, RateLimiter
from alg.registrar import Registrar, RegistrarPolicy
from alg.relayed import RelayedRegistrations, SqliteRelayedJournal
from alg.sip import SipUri, is_ip_literal, parse_uri
from alg.subscribers import SqliteSubscriberStore
from fcp.client import ClientTls, FcpClient
from sipwall.heap import HeapPolicy

log = logging.getLogger("sipwall.alg.dns")


class StaticAndRegistered:
    """Registered contacts first, then the configured static contacts of the same user
    (a phone reachable before, or without, registering)."""

    def __init__(self, registered: LocationLookup, static: dict[str, tuple[str, ...]]) -> None:
        self.registered = registered
        self.static = static

    def lookup(self, aor: str, now: float) -> Sequence[routing.Contact]:
        found = list(self.registered.lookup(aor, now))
        user = aor.removeprefix("sip:").partition("@")[0] if "@" in aor else ""
        found += [routing.Contact(uri) for uri in self.static.get(user, ())]
        return found


@dataclass
class AlgServices:
    config: AlgConfig
    core: ProxyCore
    edge: EdgeRouter
    location: LocationStore
    subscribers: SqliteSubscriberStore | None
    cdr_writer: CdrWriter | None
    relayed_journal: SqliteRelayedJournal | None = None
    resolver: AsyncDnsResolver = field(default_factory=AsyncDnsResolver)
    rng: random.Random = field(default_factory=random.Random)
    heap: HeapPolicy | None = None  # the running process's collector policy (alg.main)

    async def resolve(self, uri: str, now: Callable[[], float]) -> None:
        """RFC 3263 resolution of a Request-URI into the router's cache (an empty
        answer makes the parked requests fail with 503)."""
        parsed = parse_uri(uri)
        found: tuple[ResolvedTarget, ...] = ()
        if isinstance(parsed, SipUri):
            try:
                found = await self.resolver.resolve(parsed, self.rng)
            except (OSError, DNSException, AlgError) as exc:
                log.warning("DNS resolution of %s failed: %s", uri, exc)
        self.edge.remember_resolution(uri, found, now())

    def counters(self) -> dict[str, object]:
        """Everything countable about the running ALG (`sipwall ctl stats`)."""
        core = self.core
        counters: dict[str, object] = {
            "proxy": dict(sorted(core.stats.items())),
            "transactions": core.transaction_count,
            # next hops held down for not answering (alg.hop_health), as host:port
            "next_hops_held_down": [
                f"{host}:{port}" for host, port in sorted(core.hops.down(time.monotonic()))
            ],
        }
        if core.limiter is not None:
            counters["ratelimit"] = asdict(core.limiter.stats())
        if core.media is not None:
            media = core.media
            counters["media"] = dict(sorted((media.stats + media.pool.stats).items()))
            # the loop's clock (time.monotonic) is the one the breakers were fed with
            counters["agents"] = media.pool.snapshot(time.monotonic())
        if self.heap is not None:
            counters["collector"] = self.heap.stats(time.monotonic())
        return counters

    def write_counters(self) -> None:
        if self.config.stats_file:
            path = Path(self.config.stats_file)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.counters(), indent=2, sort_keys=True) + "\n")
            temporary.replace(path)  # readers never see a half-written file

    def reload(self) -> None:
        """Reload the route table (SIGHUP); on error the running table stays."""
        self.edge.reload_routes(_routing_table(self.config))

    def write_calls(self, calls: list[Cdr], wall_offset: float) -> None:
        """Write finished calls; the core's clock is monotonic, CDRs carry wall time."""
        if self.cdr_writer is None:
            return
        for cdr in calls:
            shifted = replace(
                cdr,
                start=cdr.start + wall_offset,
                answer=None if cdr.answer is None else cdr.answer + wall_offset,
                end=cdr.end + wall_offset,
            )
            self.cdr_writer.write(shifted, shifted.end)

    def close(self) -> None:
        """Close the stores; idempotent."""
        self.location.close()
        if self.relayed_journal is not None:
            self.relayed_journal.close()
        if self.subscribers is not None:
            self.subscribers.close()
        if self.cdr_writer is not None:
            self.cdr_writer.close()


def _routing_table(config: AlgConfig) -> routing.RoutingTable:
    table = (
        routing.RoutingTable.load(config.routes_file)
        if config.routes_file
        else routing.RoutingTable()
    )
    if config.upstream and not table.default:
        table = replace(table, default=(routing.NextHop.parse(config.upstream),))
    named = sorted(host for host, _ in table.hops() if not is_ip_literal(host))
    if named and config.dns_resolver == "off":
        # else every call routed there would get a 503 with no other word of why
        raise RouteTableError(
            f'next hop {named[0]!r} is a name: resolving it needs [dns] resolver = "system"'
        )
    return table


def media_core(config: AlgConfig, location: LocationStore | None = None) -> MediaCore | None:
    """The media anchoring core for `[media]` (None when it is off)."""
    settings = config.media
    if not settings.enabled:
        return None
    if settings.secret_file:
        secret = Path(settings.secret_file).read_bytes().strip()
        if len(secret) < 16:
            raise ConfigError(f"{settings.secret_file}: the media secret needs >= 16 bytes")
    else:
        # tokens (masked Contacts, Call-IDs) then do not survive a restart of the ALG
        secret = secrets.token_bytes(32)
    hiding = Hiding(
        config.outside.address,
        config.outside.port,
        InsideNetworks.of(*config.inside_networks),
        strip_ice=settings.strip_ice,
        outside_tls_port=config.outside.tls.port if config.outside.tls is not None else None,
    )
    trusted = tuple(MediaTrustedPeer.of(t.address, *t.subnets) for t in settings.trusted)
    pool = AgentPool(tuple(AgentConfig(a.name, a.weight) for a in settings.agents))
    timers = MediaTimers(interval=settings.session_interval, slack=settings.session_slack)
    return MediaCore(
        MediaConfig(
            hiding,
            secret,
            timers=timers,
            trusted=trusted,
            max_idle=settings.media_timeout,
            registrations=location,
        ),
        pool,
    )


def agent_clients(config: AlgConfig) -> dict[str, FcpClient]:
    """One FCP client per configured agent (mTLS; plaintext only to unix/loopback)."""
    clients = {}
    for agent in config.media.agents:
        tls = None
        if agent.ca and agent.cert and agent.key:
            tls = ClientTls.from_files(Path(agent.ca), Path(agent.cert), Path(agent.key))
            if agent.server_name:
                tls = replace(tls, server_name=agent.server_name)
        clients[agent.name] = FcpClient(agent.address, tls)
    return clients


def assemble(config: AlgConfig) -> AlgServices:
    proxy = config.proxy_config()
    subscribers_db = config.auth.subscribers
    authenticating = subscribers_db is not None
    proxy = replace(proxy, auth_realm=config.auth.realm if authenticating else None)
    # The core's clock is monotonic (asyncio's loop.time() is time.monotonic()); stores
    # that outlive the process keep POSIX times (alg.location.OnCoreClock).
    wall_offset = time.time() - time.monotonic()
    location = SqliteLocationStore(config.registrar.database)
    on_core = OnCoreClock(location, wall_offset)
    journal = SqliteRelayedJournal(config.registrar.database)
    subscribers = SqliteSubscriberStore(subscribers_db) if subscribers_db is not None else None
    domains = frozenset(config.domains) | {config.inside.address, config.outside.address}
    static = {user.user: user.contacts for user in config.static_users}
    router_config = routing.RouterConfig(
        domains, StaticAndRegistered(LocationLookup(on_core), static), _routing_table(config)
    )
    policy = DigestPolicy(
        nonce_lifetime=config.auth.nonce_lifetime,
        algorithms=tuple(Algorithm(name) for name in config.auth.algorithms),
    )
    keys = [secrets.token_bytes(32)]

    def authenticator(role: Role) -> DigestAuthenticator | None:
        if subscribers is None:
            return None
        return DigestAuthenticator(subscribers, keys, role=role, policy=policy)

    registrar = None
    if config.registrar.enabled:
        registrar = Registrar(
            location,
            domains,
            RegistrarPolicy(
                min_expires=config.registrar.min_expires,
                max_expires=config.registrar.max_expires,
                default_expires=config.registrar.default_expires,
                max_contacts=config.registrar.max_contacts,
                require_auth=authenticating and config.auth.register,
            ),
            wall_offset=wall_offset,
        )
    hops = HopHealth(
        proxy.hop_hold_down, proxy.hop_probe_interval, watched=router_config.table.hops()
    )
    edge = EdgeRouter(
        proxy,
        router_config,
        registrar=registrar,
        register_auth=authenticator(Role.UAS) if config.auth.register else None,
        outbound_auth=authenticator(Role.PROXY) if config.auth.outbound else None,
        realm=config.auth.realm,
        dns=config.dns_resolver == "system",
        relayed=RelayedRegistrations(journal=journal, now=time.time()),
        wall_offset=wall_offset,
        hops=hops,
    )
    limiter = None
    if config.ratelimit.enabled:
        settings = config.ratelimit
        limiter = RateLimiter(
            RateLimitConfig(
                invite=Rate(*settings.invite),
                register=Rate(*settings.register),
                other=Rate(*settings.other),
            )
        )
    recorder = CallRecorder() if config.cdr_file else None
    core = ProxyCore(
        proxy,
        edge,
        limiter=limiter,
        recorder=recorder,
        media=media_core(config, on_core),
        hops=hops,
    )
    writer = CdrWriter(config.cdr_file) if config.cdr_file else None
    return AlgServices(
        config,
        core,
        edge,
        location,
        subscribers,
        writer,
        journal,
        resolver=dns_resolver(config.dns_nameservers),
    )


def dns_resolver(nameservers: Sequence[str]) -> AsyncDnsResolver:
    """RFC 3263 over the given DNS servers, or those of the host's /etc/resolv.conf."""
    if not nameservers:
        return AsyncDnsResolver()
    configured = dns.asyncresolver.Resolver(configure=False)
    configured.nameservers = list(nameservers)
    return AsyncDnsResolver(configured)
