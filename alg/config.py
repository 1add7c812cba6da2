"""ALG configuration: a frozen dataclass read from TOML (`sipwall alg --config alg.toml`).

Every option, with its default, is documented in `alg/alg.example.toml`. A bad file is
reported as `ConfigError` naming the key, never as a traceback.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alg.connections import ConnectionLimits
from alg.errors import AlgError
from alg.proxy_model import SIDES, Interface, ProxyConfig, Side
from alg.sip import DEFAULT_MAX_SIZE, is_ip_literal
from alg.tls import TlsSettings, TlsSetupError, contexts
from alg.transactions import TimerSettings


class ConfigError(AlgError):
    """The configuration file is unreadable or an option is invalid."""


@dataclass(frozen=True, slots=True)
class SideConfig:
    address: str
    port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    tls: TlsSettings | None = None  # set exactly when "tls" is in `transports`


@dataclass(frozen=True, slots=True)
class StaticUser:
    """A user reachable at fixed contacts (until it registers): `user -> contacts`."""

    user: str
    contacts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    enabled: bool = True
    database: str = ":memory:"  # SQLite file for the location service
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10


@dataclass(frozen=True, slots=True)
class AuthConfig:
    realm: str = "sipwall"
    subscribers: str | None = None  # SQLite subscriber db; None: no authentication
    register: bool = True  # challenge REGISTER with 401
    outbound: bool = True  # challenge requests leaving the inside with 407
    nonce_lifetime: int = 300
    # offered in this order (RFC 8760 §2.4: SHA-256 first); MD5-only phones need "MD5"
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    enabled: bool = False
    invite: tuple[float, float] = (5.0, 20.0)  # per second, burst
    register: tuple[float, float] = (2.0, 10.0)
    other: tuple[float, float] = (20.0, 100.0)


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    """One filter agent (one per gateway) the ALG anchors media through (FCP)."""

    name: str
    address: str  # host:port, or unix:/path (plaintext only there and on loopback)
    ca: str | None = None  # PEM files for mTLS; all three or none
    cert: str | None = None
    key: str | None = None
    weight: float = 1.0
    server_name: str | None = None  # when the address is not in the agent's certificate


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """An inside peer (an IP-PBX) allowed to signal media for other inside addresses."""

    address: str
    subnets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MediaSettings:
    enabled: bool = False
    agents: tuple[AgentEndpoint, ...] = ()
    secret_file: str | None = None  # >= 16 bytes; random per start when absent
    strip_ice: bool = True
    trusted: tuple[TrustedPeer, ...] = ()
    # RFC 4028: the Session-Expires the ALG inserts when the UAs use none, and the slack
    # added on top for the group lifetime (how long pinholes outlive a silent ALG)
    session_interval: int = 1800
    session_slack: int = 32
    # RTP timeout: a pinhole that saw no packet (RTP nor RTCP) for this many seconds is
    # removed by the agent (FCP max-idle), and the ALG ends its call with a BYE both ways
    # (alg.media.teardown). None: off.
    media_timeout: int | None = None


@dataclass(frozen=True, slots=True)
class AlgConfig:
    inside: SideConfig
    outside: SideConfig
    domains: tuple[str, ...] = ()
    inside_networks: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    mode: str = "stateful"  # or "stateless"
    # Processes sharing the UDP ports (SO_REUSEPORT; alg.workers, and for a stateful proxy
    # alg.call_steering and alg.affinity). See `check_workers` for what they need.
    workers: int = 1
    # TCP/TLS connections: how many, how many per source, closed after how long idle
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    record_route: bool = True
    max_message_size: int = DEFAULT_MAX_SIZE
    timer_c: float = 180.0
    t1: float = 0.5
    failover_timeout: float = 4.0  # serial targets: no answer at all by then, try the next
    hop_hold_down: float = 30.0  # a next hop that did not answer is routed last this long
    hop_probe_interval: float = 10.0  # OPTIONS to such a hop this often (0: never)
    static_users: tuple[StaticUser, ...] = ()
    upstream: str | None = None  # default outbound proxy, "host[:port][;transport=x]"
    log_level: str = "INFO"
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    routes_file: str | None = None  # prefix table (alg/routes.example.toml)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    cdr_file: str | None = None  # JSON lines, one record per call
    pid_file: str | None = None  # for `sipwall ctl reload` (SIGHUP)
    stats_file: str | None = None  # counters as JSON, written on SIGUSR1 and at exit
    # RFC 3263 lookups for other domains: "system" uses the host's resolver. Off by
    # default so that a lab or test run never queries a server outside the lab.
    dns_resolver: str = "off"
    # the DNS servers to ask, by address (port 53); empty: the host's /etc/resolv.conf
    dns_nameservers: tuple[str, ...] = ()
    media: MediaSettings = field(default_factory=MediaSettings)
    syslog: str | None = None  # "host[:port]" of an RFC 5424 collector (UDP)
    syslog_facility: str = "local0"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def proxy_config(self) -> ProxyConfig:
        sides: tuple[tuple[Side, SideConfig], ...] = (
            ("inside", self.inside),
            ("outside", self.outside),
        )
        interfaces: dict[Side, Interface] = {
            side: Interface(
                side,
                config.address,
                config.port,
                config.tls.port if config.tls is not None else None,
            )
            for side, config in sides
        }
        return ProxyConfig(
            interfaces=interfaces,
            inside_networks=self.inside_networks,
            record_route=self.record_route,
            stateless=self.mode == "stateless",
            timer_c=self.timer_c,
            failover_timeout=self.failover_timeout,
            hop_hold_down=self.hop_hold_down,
            hop_probe_interval=self.hop_probe_interval,
            timers=TimerSettings(t1=self.t1, t2=max(4.0, self.t1 * 8), t4=5.0),
        )


_SIDE_OPTIONS = frozenset(
    {
        "address",
        "port",
        "transports",
        "tls_port",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "tls_verify",
        "tls_require_client_cert",
    }
)


def _side(raw: Any, name: Side) -> SideConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] section is required (address, port, transports)")
    unknown = set(raw) - _SIDE_OPTIONS
    if unknown:
        raise ConfigError(f"[{name}]: unknown option(s) {', '.join(sorted(unknown))}")
    try:
        address = str(ipaddress.ip_address(raw["address"]))
    except KeyError:
        raise ConfigError(f"[{name}].address is required") from None
    except ValueError:
        raise ConfigError(f"[{name}].address is not an IP address: {raw['address']!r}") from None
    port = raw.get("port", 5060)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"[{name}].port must be 1-65535")
    transports = tuple(str(t).lower() for t in raw.get("transports", ("udp", "tcp")))
    if not transports or not set(transports) <= {"udp", "tcp", "tls"}:
        raise ConfigError(f"[{name}].transports must be a non-empty subset of udp, tcp, tls")
    tls = _tls(raw, name, port) if "tls" in transports else None
    if tls is None and any(key.startswith("tls_") for key in raw):
        raise ConfigError(f'[{name}]: tls_* options need "tls" in transports')
    return SideConfig(address, port, transports, tls)


def _tls(raw: Mapping[str, Any], name: Side, port: int) -> TlsSettings:
    files: dict[str, str | None] = {}
    for option in ("tls_cert", "tls_key", "tls_ca"):
        value = raw.get(option)
        if value is None:
            files[option] = None
            continue
        if not isinstance(value, str) or not Path(value).is_file():
            raise ConfigError(f"[{name}].{option} is not a readable file: {value!r}")
        files[option] = value
    cert, key = files["tls_cert"], files["tls_key"]
    if cert is None or key is None:
        raise ConfigError(f'[{name}]: "tls" in transports needs tls_cert and tls_key (PEM)')
    tls_port = raw.get("tls_port", 5061)
    if not isinstance(tls_port, int) or isinstance(tls_port, bool) or not 1 <= tls_port <= 65535:
        raise ConfigError(f"[{name}].tls_port must be 1-65535")
    if tls_port == port:
        raise ConfigError(f"[{name}].tls_port must differ from port (TCP listens there)")
    flags = {}
    for option, default in (("tls_verify", True), ("tls_require_client_cert", False)):
        value = raw.get(option, default)
        if not isinstance(value, bool):
            raise ConfigError(f"[{name}].{option} must be true or false")
        flags[option] = value
    if flags["tls_require_client_cert"] and files["tls_ca"] is None:
        raise ConfigError(f"[{name}].tls_require_client_cert needs tls_ca (whom to trust)")
    settings = TlsSettings(
        cert,
        key,
        tls_port,
        files["tls_ca"],
        flags["tls_verify"],
        flags["tls_require_client_cert"],
    )
    try:
        contexts(settings)  # a key that does not match its certificate fails here, not later
    except TlsSetupError as exc:
        raise ConfigError(f"[{name}]: {exc}") from None
    return settings


def _section(data: Mapping[str, Any], name: str, allowed: set[str]) -> Mapping[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"[{name}]: unknown option(s) {', '.join(sorted(unknown))}")
    return section


def _int_option(section: Mapping[str, Any], name: str, key: str, default: int) -> int:
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"[{name}].{key} must be a non-negative integer")
    return value


def _rate(
    section: Mapping[str, Any], key: str, default: tuple[float, float]
) -> tuple[float, float]:
    value = section.get(key, list(default))
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and v > 0 for v in value)
    ):
        raise ConfigError(f"[ratelimit].{key} must be [per_second, burst], both > 0")
    return float(value[0]), float(value[1])


def _services(data: Mapping[str, Any]) -> dict[str, Any]:
    registrar = _section(
        data,
        "registrar",
        {"enabled", "database", "min_expires", "max_expires", "default_expires", "max_contacts"},
    )
    auth = _section(
        data,
        "auth",
        {"realm", "subscribers", "register", "outbound", "nonce_lifetime", "algorithms"},
    )
    algorithms = tuple(str(a).upper() for a in auth.get("algorithms", ("SHA-256", "MD5")))
    if not algorithms or not set(algorithms) <= {"SHA-256", "MD5"}:
        raise ConfigError("[auth].algorithms must be a non-empty list of 'SHA-256', 'MD5'")
    limits = _section(data, "ratelimit", {"enabled", "invite", "register", "other"})
    files = _section(data, "files", {"routes", "cdr", "pid", "stats"})
    dns = _section(data, "dns", {"resolver", "nameservers"})
    resolver = str(dns.get("resolver", "off"))
    if resolver not in ("off", "system"):
        raise ConfigError("[dns].resolver must be 'off' or 'system'")
    nameservers = dns.get("nameservers", [])
    if not isinstance(nameservers, list) or not all(
        isinstance(n, str) and is_ip_literal(n) for n in nameservers
    ):
        raise ConfigError("[dns].nameservers must be a list of IP addresses")
    if nameservers and resolver == "off":
        raise ConfigError('[dns].nameservers needs resolver = "system"')
    minimum = _int_option(registrar, "registrar", "min_expires", 60)
    maximum = _int_option(registrar, "registrar", "max_expires", 3600)
    default = _int_option(registrar, "registrar", "default_expires", 3600)
    if not 0 < minimum <= default <= maximum:
        raise ConfigError("[registrar]: need 0 < min_expires <= default_expires <= max_expires")
    return {
        "registrar": RegistrarConfig(
            enabled=bool(registrar.get("enabled", True)),
            database=str(registrar.get("database", ":memory:")),
            min_expires=minimum,
            max_expires=maximum,
            default_expires=default,
            max_contacts=max(1, _int_option(registrar, "registrar", "max_contacts", 10)),
        ),
        "auth": AuthConfig(
            realm=str(auth.get("realm", "sipwall")),
            subscribers=auth.get("subscribers"),
            register=bool(auth.get("register", True)),
            outbound=bool(auth.get("outbound", True)),
            nonce_lifetime=max(10, _int_option(auth, "auth", "nonce_lifetime", 300)),
            algorithms=algorithms,
        ),
        "ratelimit": RateLimitSettings(
            enabled=bool(limits.get("enabled", False)),
            invite=_rate(limits, "invite", (5.0, 20.0)),
            register=_rate(limits, "register", (2.0, 10.0)),
            other=_rate(limits, "other", (20.0, 100.0)),
        ),
        "routes_file": files.get("routes"),
        "cdr_file": files.get("cdr"),
        "pid_file": files.get("pid"),
        "stats_file": files.get("stats"),
        "dns_resolver": resolver,
        "dns_nameservers": tuple(nameservers),
        "media": _media(data),
    }


def _media(data: Mapping[str, Any]) -> MediaSettings:
    media = _section(
        data,
        "media",
        {
            "enabled",
            "agents",
            "secret_file",
            "strip_ice",
            "trusted",
            "session_interval",
            "session_slack",
            "media_timeout",
        },
    )
    interval = _int_option(media, "media", "session_interval", 1800)
    slack = _int_option(media, "media", "session_slack", 32)
    if interval < 90:
        raise ConfigError("[media].session_interval must be >= 90 (RFC 4028 Min-SE)")
    timeout = _int_option(media, "media", "media_timeout", 0)  # 0: off
    agents = []
    for index, raw in enumerate(media.get("agents", [])):
        where = f"[media].agents[{index}]"
        if not isinstance(raw, dict) or "name" not in raw or "address" not in raw:
            raise ConfigError(f"{where} needs name and address")
        unknown = set(raw) - {"name", "address", "ca", "cert", "key", "weight", "server_name"}
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}")
        tls = [raw.get(k) for k in ("ca", "cert", "key")]
        if any(tls) and not all(tls):
            raise ConfigError(f"{where}: ca, cert and key go together (mTLS)")
        weight = raw.get("weight", 1.0)
        if not isinstance(weight, int | float) or weight <= 0:
            raise ConfigError(f"{where}.weight must be > 0")
        agents.append(
            AgentEndpoint(
                str(raw["name"]),
                str(raw["address"]),
                raw.get("ca"),
                raw.get("cert"),
                raw.get("key"),
                float(weight),
                raw.get("server_name"),
            )
        )
    enabled = bool(media.get("enabled", False))
    if enabled and not agents:
        raise ConfigError("[media] enabled needs at least one [[media.agents]]")
    trusted = []
    for index, raw in enumerate(media.get("trusted", [])):
        try:
            address = str(ipaddress.ip_address(raw["address"]))
            subnets = tuple(str(ipaddress.ip_network(n, strict=False)) for n in raw["subnets"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"[media].trusted[{index}] needs address and subnets") from None
        trusted.append(TrustedPeer(address, subnets))
    return MediaSettings(
        enabled,
        tuple(agents),
        media.get("secret_file"),
        bool(media.get("strip_ice", True)),
        tuple(trusted),
        interval,
        slack,
        timeout or None,
    )


def _seconds(proxy: Mapping[str, Any], key: str, default: float) -> float:
    value = proxy.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 3600:
        raise ConfigError(f"[proxy].{key} must be 0-3600 seconds (0: off)")
    return float(value)


def _connection_limits(proxy: Mapping[str, Any]) -> ConnectionLimits:
    default = ConnectionLimits()
    counts = {}
    for key, fallback in (
        ("max_connections", default.max_total),
        ("max_connections_per_source", default.max_per_source),
    ):
        value = proxy.get(key, fallback)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
            raise ConfigError(f"[proxy].{key} must be 1-1000000")
        counts[key] = value
    idle = proxy.get("connection_idle_timeout", default.idle_timeout)
    if not isinstance(idle, int | float) or isinstance(idle, bool) or idle < 0:
        raise ConfigError("[proxy].connection_idle_timeout must be >= 0 seconds (0: never)")
    return ConnectionLimits(
        counts["max_connections"], counts["max_connections_per_source"], float(idle)
    )


def parse_config(data: Mapping[str, Any]) -> AlgConfig:
    log_section = _section(data, "log", {"level", "syslog", "facility"})
    sides = {name: _side(data.get(name), name) for name in SIDES}
    proxy = data.get("proxy", {})
    mode = proxy.get("mode", "stateful")
    if mode not in ("stateful", "stateless"):
        raise ConfigError("[proxy].mode must be 'stateful' or 'stateless'")
    size = proxy.get("max_message_size", DEFAULT_MAX_SIZE)
    if not isinstance(size, int) or not 1024 <= size <= 1_000_000:
        raise ConfigError("[proxy].max_message_size must be 1024-1000000 bytes")
    networks = tuple(
        proxy.get("inside_networks", AlgConfig.__dataclass_fields__["inside_networks"].default)
    )
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"[proxy].inside_networks: bad network {network!r}") from None
    users = []
    for user, value in data.get("users", {}).items():
        contacts = [value] if isinstance(value, str) else value
        if not contacts or not all(isinstance(c, str) and c.startswith("sip:") for c in contacts):
            raise ConfigError(f"[users].{user} must be a sip: URI or a list of them")
        users.append(StaticUser(user, tuple(contacts)))
    workers = proxy.get("workers", 1)
    if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"[proxy].workers must be 1-{MAX_WORKERS}")
    config = AlgConfig(
        inside=sides["inside"],
        outside=sides["outside"],
        domains=tuple(proxy.get("domains", ())),
        inside_networks=networks,
        mode=mode,
        workers=workers,
        record_route=bool(proxy.get("record_route", True)),
        max_message_size=size,
        timer_c=float(proxy.get("timer_c", 180.0)),
        t1=float(proxy.get("t1", 0.5)),
        failover_timeout=_seconds(proxy, "failover_timeout", 4.0),
        hop_hold_down=_seconds(proxy, "hop_hold_down", 30.0),
        hop_probe_interval=_seconds(proxy, "hop_probe_interval", 10.0),
        static_users=tuple(users),
        upstream=proxy.get("upstream"),
        connections=_connection_limits(proxy),
        log_level=str(log_section.get("level", "INFO")).upper(),
        syslog=log_section.get("syslog"),
        syslog_facility=str(log_section.get("facility", "local0")),
        **_services(data),
    )
    check_workers(config)
    return config


MAX_WORKERS = 32


def check_workers(config: AlgConfig) -> None:
    """Several workers only where no state has to be shared between them: a stateless
    worker handles any message alone; a stateful one owns the calls whose Call-ID hashes
    to it (alg.affinity), and what is not per call cannot be shared."""
    if config.workers == 1:
        return
    why = [
        reason
        for reason, refused in (
            (
                'transports = ["udp"] on both sides (a TCP connection belongs to one worker)',
                any(side.transports != ("udp",) for side in (config.inside, config.outside)),
            ),
            ("no [media] (calls and their bindings live in one process)", config.media.enabled),
            (
                "no [auth] subscribers (nonce replay checks are per process)",
                config.auth.subscribers is not None,
            ),
            ("no cdr_file (a call's messages reach different workers)", config.cdr_file),
            (
                'for [proxy].domains, a registrar database file, not ":memory:" (the '
                "workers share the location service)",
                config.domains
                and config.registrar.enabled
                and config.registrar.database == ":memory:",
            ),
        )
        if refused
    ]
    if why:
        raise ConfigError(f"[proxy].workers = {config.workers} needs " + "; ".join(why))


def load_config(path: str | Path) -> AlgConfig:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data)
