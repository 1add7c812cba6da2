"""The filter agent's configuration: one TOML file, loaded into a frozen `AgentConfig`.

Every option (see `filter_agent/agent.example.toml` for a commented example). Relative
paths are relative to the directory of the configuration file.

    [agent]
    listen              "host:port" or "unix:/path" where FCP is served. Required.
    state_db            SQLite file holding the agent's state across restarts. Required.
    log_level           DEBUG | INFO | WARNING | ERROR. Default "INFO".
    max_lifetime        longest lifetime granted, seconds (MIDCOM RFC 5189 §2.1.8,
                        PCP RFC 6887 §15: granted = min(requested, max)). Default 3600.
    observe_interval    how often kernel counters are read (counters, last-seen, idle
                        timeouts), seconds. Default 1.0.
    table_poll_interval how often the agent checks that its nftables table still exists,
                        seconds; a deleted table is rebuilt at the next poll. Default 0.25.
    idempotency_ttl     how long a request's idempotency key is remembered, seconds.
                        Default 120: five times the longest retry span of fcp.client
                        (4 attempts, 5 s deadlines, backoff up to 2 s) and far beyond the
                        ALG's; the agent keeps ~0.7 KB per remembered operation, in memory
                        and in its database, for this long (bench/agent_records.py).
    conntrack_dump_interval
                        the longest a released port-unknown flow's conntrack entry waits
                        for the dump that finds it (one walk of the host's whole conntrack
                        table, ~10 ms of kernel time each): releases meanwhile share it.
                        The flow is dropped per packet at once anyway. Seconds, default 2.
    latch               learn a port-unknown rule's remote port from the remote's first
                        packet (NFQUEUE, RFC 7362 latching); when false, or when the kernel
                        can queue neither way, such rules stay address-only. Default true.
    latch_queue         the NFQUEUE number used for latching (0..65535). Default 5189.
    element_writer      how set/map element changes (every call's bindings and pinholes)
                        reach the kernel: "netlink" sends the nfnetlink batch itself
                        (drivers/nfnetlink.py, ~0.1 ms a change), "libnftables" goes through
                        libnftables' JSON API (~0.2 ms more). Same transaction, all or
                        nothing, either way. Default "netlink".

    [tls]               mutual TLS (required unless clients.insecure_identity is set)
    ca                  PEM CA that signs the ALG/ctl client certificates
    cert                PEM certificate chain of the agent
    key                 PEM private key of the agent

    [clients]
    allowed             identities (URI SAN urn:sipwall:<id>) that may use FCP. Required.
    admin               identities that may list and release every owner's objects
                        (`sipwall ctl`); they cannot create objects. Default [].
    insecure_identity   serve FCP WITHOUT TLS, every caller being this identity; only on a
                        unix socket or loopback. For a lab. Default unset.

    [pool]              the public addresses NAT bindings are taken from (one pool per agent)
    name                pool name shown to clients. Default "public".
    addresses           public IPv4 addresses. Required, at least one.
    port_min, port_max  public port range (within 1024..65535). Default 20000..59999.
    quarantine          seconds before a freed port is handed out again. Default 120.

    [quotas]
    ports_per_owner     public ports one identity may hold. Default: unlimited.
    ports_per_group     public ports one group (call) may hold. Default: unlimited.
    rules_per_binding   pinholes per binding (forks, re-INVITEs). Default 32.
    max_block           largest BLOCK binding, ports. Default 64.

A bad file raises `ConfigError` naming the offending key (`pool.addresses`); the command
line prints it and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcp.idempotency import DEFAULT_TTL_SECONDS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ELEMENT_WRITERS = ("netlink", "libnftables")
_SECTIONS = {
    "agent": {
        "listen",
        "state_db",
        "log_level",
        "max_lifetime",
        "observe_interval",
        "table_poll_interval",
        "idempotency_ttl",
        "conntrack_dump_interval",
        "latch",
        "latch_queue",
        "element_writer",
    },
    "tls": {"ca", "cert", "key"},
    "clients": {"allowed", "admin", "insecure_identity"},
    "pool": {"name", "addresses", "port_min", "port_max", "quarantine"},
    "quotas": {"ports_per_owner", "ports_per_group", "rules_per_binding", "max_block"},
}


class ConfigError(ValueError):
    """The configuration is unusable; `key` names the option (dotted path)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class PoolSettings:
    name: str
    addresses: tuple[str, ...]
    port_min: int
    port_max: int
    quarantine: float


@dataclass(frozen=True)
class Quotas:
    ports_per_owner: int | None
    ports_per_group: int | None
    rules_per_binding: int
    max_block: int


@dataclass(frozen=True)
class AgentConfig:
    listen: str
    state_db: Path
    tls: TlsFiles | None
    allowed: frozenset[str]
    admin: frozenset[str]
    insecure_identity: str | None
    pool: PoolSettings
    quotas: Quotas
    log_level: str = "INFO"
    max_lifetime: float = 3600.0
    observe_interval: float = 1.0
    table_poll_interval: float = 0.25
    idempotency_ttl: float = DEFAULT_TTL_SECONDS
    conntrack_dump_interval: float = 2.0
    latch: bool = True
    latch_queue: int = 5189
    element_writer: str = "netlink"


# ---- typed getters: every error names its key ------------------------------------------


def _table(doc: Mapping[str, Any], name: str, *, required: bool) -> Mapping[str, Any]:
    value = doc.get(name)
    if value is None:
        if required:
            raise ConfigError(name, "section is missing")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table ([section])")
    unknown = sorted(set(value) - _SECTIONS[name])
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", "unknown option")
    return value


def _str(section: Mapping[str, Any], where: str, key: str, default: str | None = None) -> str:
    value = section.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}", "is required")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}", "must be a non-empty string")
    return value


def _number(
    section: Mapping[str, Any], where: str, key: str, default: float, *, minimum: float
) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}", "must be a number")
    if value < minimum:
        raise ConfigError(f"{where}.{key}", f"must be at least {minimum}")
    return float(value)


def _int(
    section: Mapping[str, Any], where: str, key: str, default: int | None, *, lo: int, hi: int
) -> int | None:
    value = section.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}", "must be an integer")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}.{key}", f"must be within {lo}..{hi}")
    return value


def _bool(section: Mapping[str, Any], where: str, key: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}", "must be true or false")
    return value


def _identities(section: Mapping[str, Any], where: str, key: str) -> frozenset[str]:
    from fcp.certs import CertificateError, check_identity

    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key}", "must be a list of identity strings")
    try:
        return frozenset(check_identity(v) for v in value)
    except CertificateError as exc:
        raise ConfigError(f"{where}.{key}", str(exc)) from None


def _path(base: Path, section: Mapping[str, Any], where: str, key: str) -> Path:
    path = Path(_str(section, where, key))
    return path if path.is_absolute() else base / path


def _listen(value: str) -> str:
    if value.startswith("unix:"):
        if len(value) <= len("unix:"):
            raise ConfigError("agent.listen", "unix: needs a path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("agent.listen", f"{value!r} is not host:port or unix:/path")
    return value


def _addresses(section: Mapping[str, Any]) -> tuple[str, ...]:
    value = section.get("addresses")
    if not isinstance(value, list) or not value:
        raise ConfigError("pool.addresses", "must be a non-empty list of IPv4 addresses")
    out = []
    for item in value:
        try:
            address = ipaddress.ip_address(item) if isinstance(item, str) else None
        except ValueError:
            address = None
        if address is None or address.version != 4:
            raise ConfigError("pool.addresses", f"{item!r} is not an IPv4 address")
        out.append(str(address))
    if len(set(out)) != len(out):
        raise ConfigError("pool.addresses", "duplicate address")
    return tuple(out)


# ---- loading ----------------------------------------------------------------------------


def parse(doc: Mapping[str, Any], base: Path) -> AgentConfig:
    """Validate a parsed TOML document; `base` resolves relative paths."""
    unknown = sorted(set(doc) - set(_SECTIONS))
    if unknown:
        raise ConfigError(unknown[0], "unknown section")
    agent = _table(doc, "agent", required=True)
    clients = _table(doc, "clients", required=True)
    pool = _table(doc, "pool", required=True)
    quotas = _table(doc, "quotas", required=False)
    tls_section = _table(doc, "tls", required=False)

    allowed = _identities(clients, "clients", "allowed")
    if not allowed:
        raise ConfigError("clients.allowed", "must list at least one identity")
    admin = _identities(clients, "clients", "admin")
    insecure = clients.get("insecure_identity")
    if insecure is not None:
        insecure = _str(clients, "clients", "insecure_identity")
        if insecure not in allowed:
            raise ConfigError("clients.insecure_identity", "must be one of clients.allowed")
    tls = None
    if tls_section:
        tls = TlsFiles(
            _path(base, tls_section, "tls", "ca"),
            _path(base, tls_section, "tls", "cert"),
            _path(base, tls_section, "tls", "key"),
        )
    elif insecure is None:
        raise ConfigError("tls", "section is missing (or set clients.insecure_identity)")
    listen = _listen(_str(agent, "agent", "listen"))
    if tls is None:
        from fcp.server import is_local_address

        if not is_local_address(listen):
            raise ConfigError("agent.listen", "without TLS only a unix socket or loopback")

    port_min = _int(pool, "pool", "port_min", 20000, lo=1024, hi=65535)
    port_max = _int(pool, "pool", "port_max", 59999, lo=1024, hi=65535)
    assert port_min is not None and port_max is not None  # defaults given
    if port_min >= port_max:
        raise ConfigError("pool.port_min", "must be below pool.port_max")
    writer = _str(agent, "agent", "element_writer", "netlink")
    if writer not in ELEMENT_WRITERS:
        raise ConfigError("agent.element_writer", f"must be one of {', '.join(ELEMENT_WRITERS)}")
    level = _str(agent, "agent", "log_level", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError("agent.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    latch_queue = _int(agent, "agent", "latch_queue", 5189, lo=0, hi=65535)
    assert latch_queue is not None  # default given
    rules = _int(quotas, "quotas", "rules_per_binding", 32, lo=1, hi=1024)
    max_block = _int(quotas, "quotas", "max_block", 64, lo=1, hi=4096)
    assert rules is not None and max_block is not None  # defaults given
    return AgentConfig(
        listen=listen,
        state_db=_path(base, agent, "agent", "state_db"),
        tls=tls,
        allowed=allowed,
        admin=admin,
        insecure_identity=insecure,
        pool=PoolSettings(
            _str(pool, "pool", "name", "public"),
            _addresses(pool),
            port_min,
            port_max,
            _number(pool, "pool", "quarantine", 120.0, minimum=0.0),
        ),
        quotas=Quotas(
            _int(quotas, "quotas", "ports_per_owner", None, lo=1, hi=1 << 31),
            _int(quotas, "quotas", "ports_per_group", None, lo=1, hi=1 << 31),
            rules,
            max_block,
        ),
        log_level=level,
        max_lifetime=_number(agent, "agent", "max_lifetime", 3600.0, minimum=1.0),
        observe_interval=_number(agent, "agent", "observe_interval", 1.0, minimum=0.05),
        table_poll_interval=_number(agent, "agent", "table_poll_interval", 0.25, minimum=0.05),
        idempotency_ttl=_number(
            agent, "agent", "idempotency_ttl", DEFAULT_TTL_SECONDS, minimum=1.0
        ),
        conntrack_dump_interval=_number(
            agent, "agent", "conntrack_dump_interval", 2.0, minimum=0.0
        ),
        latch=_bool(agent, "agent", "latch", True),
        latch_queue=latch_queue,
        element_writer=writer,
    )


def load(path: Path) -> AgentConfig:
    """Read and validate a TOML file; every failure is a `ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return parse(doc, path.resolve().parent)
