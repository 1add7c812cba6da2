"""The filter agent's and the ALG's configuration files for a lab gateway.

The demo, the provider scenario and the two-gateway failover lab all run `sipwall agent`
and `sipwall alg` in a gateway namespace with a lab PKI (`fcp.certs`); they differ only in
addresses, the ALG's routing (domains, upstream) and how many agents it knows. A relative
path in the agent's file is relative to that file's directory (filter_agent/config.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INSIDE_NETWORK = "10.77.0.0/24"  # ARCHITECTURE §6: the inside LAN of every scenario


@dataclass(frozen=True)
class AgentFiles:
    """Where an agent serves FCP and which PKI files and state it uses."""

    listen: str  # host:port
    public: str  # its public address pool (one address)
    pki: Path
    server: str = "server"  # the server pair's file stem in `pki`
    state_db: str = "agent.db"
    log_level: str = "INFO"


def agent_toml(agent: AgentFiles) -> str:
    return f"""\
[agent]
listen = "{agent.listen}"
state_db = "{agent.state_db}"
log_level = "{agent.log_level}"
observe_interval = 0.5
table_poll_interval = 0.25

[tls]
ca = "{agent.pki}/ca.pem"
cert = "{agent.pki}/{agent.server}.pem"
key = "{agent.pki}/{agent.server}.key"

[clients]
allowed = ["alg-1"]
admin = ["ctl"]

[pool]
addresses = ["{agent.public}"]
port_min = 20000
port_max = 29999
"""


@dataclass(frozen=True)
class AgentEntry:
    """One `[[media.agents]]` of the ALG: it connects as identity alg-1."""

    name: str
    address: str  # host:port
    pki: Path
    weight: float | None = None


@dataclass(frozen=True)
class AlgFiles:
    inside: str
    outside: str
    agents: Sequence[AgentEntry]
    domains: Sequence[str] = ()
    upstream: str | None = None  # host:port
    stats: Path | None = None
    log_level: str = "INFO"
    # Where the ALG keeps what must survive its restart: the registrar's database (also
    # the relayed registrations' journal) and the media secret that keys the topology-
    # hiding tokens. None: in memory, a random secret per start.
    state_dir: Path | None = None
    # SIP over TLS on the outside / inside: (certificate, key, CA) PEM files; None: UDP
    outside_tls: tuple[Path, Path, Path] | None = None
    inside_tls: tuple[Path, Path, Path] | None = None
    # DNS servers in the lab (labs/dns_server.py) for next hops given by name; () : no DNS
    nameservers: Sequence[str] = ()


SECRET_FILE = "media.secret"


def write_alg_state_dir(path: Path) -> Path:
    """A state directory for `AlgFiles.state_dir`, with a fresh media secret in it."""
    path.mkdir(parents=True, exist_ok=True)
    secret = path / SECRET_FILE
    if not secret.exists():
        secret.write_text(os.urandom(32).hex() + "\n")
        secret.chmod(0o600)
    return path


def _transports(tls: tuple[Path, Path, Path] | None) -> str:
    if tls is None:
        return 'transports = ["udp"]\n'
    cert, key, ca = tls
    return f'transports = ["udp", "tls"]\ntls_cert = "{cert}"\ntls_key = "{key}"\ntls_ca = "{ca}"\n'


def alg_toml(alg: AlgFiles) -> str:
    proxy = [f'inside_networks = ["{INSIDE_NETWORK}"]']
    if alg.domains:
        proxy.append("domains = [" + ", ".join(f'"{d}"' for d in alg.domains) + "]")
    if alg.upstream is not None:
        proxy.append(f'upstream = "{alg.upstream}"')
    agents = []
    for entry in alg.agents:
        lines = ["[[media.agents]]", f'name = "{entry.name}"', f'address = "{entry.address}"']
        if entry.weight is not None:
            lines.append(f"weight = {entry.weight}")
        lines += [
            f'ca = "{entry.pki}/ca.pem"',
            f'cert = "{entry.pki}/alg-1.pem"',
            f'key = "{entry.pki}/alg-1.key"',
        ]
        agents.append("\n".join(lines))
    files = f'[files]\nstats = "{alg.stats}"\n' if alg.stats is not None else ""
    dns = ""
    if alg.nameservers:
        servers = ", ".join(f'"{n}"' for n in alg.nameservers)
        dns = f'[dns]\nresolver = "system"\nnameservers = [{servers}]\n'

    database, secret = ":memory:", ""
    if alg.state_dir is not None:
        database = str(alg.state_dir / "registrar.db")
        secret = f'secret_file = "{alg.state_dir / SECRET_FILE}"\n'

    return (
        f'[inside]\naddress = "{alg.inside}"\n{_transports(alg.inside_tls)}'
        f'[outside]\naddress = "{alg.outside}"\n{_transports(alg.outside_tls)}'
        "[proxy]\n" + "\n".join(proxy) + "\n"
        f'[registrar]\nenabled = true\ndatabase = "{database}"\n'
        f"[media]\nenabled = true\n{secret}" + "\n".join(agents) + "\n"
        f'{files}{dns}[log]\nlevel = "{alg.log_level}"\n'
    )
