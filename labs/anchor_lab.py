"""The proxy lab with media anchoring: the filter agent next to the sipwall ALG in the gw.

    uac (10.77.0.10) -- gw (10.77.0.1 | 203.0.113.1: ALG + agent) -- uas (203.0.113.20)

On top of `labs/proxy_lab.py` (same namespaces, same cleanup), this starts in the gw
namespace:

  * the filter agent, `python -m sipwall agent --config agent.toml`, serving FCP on
    127.0.0.1:7700 over mutual TLS, with the public pool 203.0.113.1:20000-59999 and its
    nftables table in the gw namespace (it goes with the namespace);
  * the ALG, `python -m sipwall alg --config alg.toml`, with `[media] enabled = true` and
    that agent as its only `[[media.agents]]` (identity alg-1): every call reserves a
    public binding for the caller's offer, enables the pinholes on the answer and
    releases them at BYE.

The PKI (CA, the agent's server pair for 127.0.0.1, clients alg-1 and ctl) is generated
into the lab's work directory (`fcp.certs`), like the agent-service lab tests do.
`holdings()` asks the agent, as the admin identity `ctl` (`sipwall ctl`), what it still
holds, and `table_elements()` reads its nftables sets: both must be empty once every
call has hung up.

A caveat of the peers: sipp's reference UAC offers m=audio 6000 in every call, and one
inside endpoint maps into one call at a time (endpoint-independent mapping), so
concurrent calls need `labs/sipp/uac_sdp_ports.xml` (`[auto_media_port]`: 6000 + 4 x
call number, wrapping after 2500 calls).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcp.certs import generate_lab_pki, write_lab_pki
from labs.netns import wait_until
from labs.proxy_lab import (
    GW_OUTSIDE,
    Proxy,
    ProxyLab,
    descendants,
    sipwall_config,
    spawn_logged,
    wait_listening,
)

AGENT_ADDR = "127.0.0.1"
AGENT_PORT = 7700
ALG_IDENTITY = "alg-1"
ADMIN_IDENTITY = "ctl"
PORT_MIN = 20000
PORT_MAX = 59999
AGENT_TABLE = "sipwall"  # the agent's nftables table (family inet)


def write_pki(workdir: Path) -> Path:
    """CA, server pair for 127.0.0.1, client pairs alg-1 and ctl, in `workdir/pki`."""
    pki = workdir / "pki"
    if not (pki / "ca.pem").exists():
        write_lab_pki(pki, generate_lab_pki([AGENT_ADDR], [ALG_IDENTITY, ADMIN_IDENTITY]))
    return pki


def agent_config(pki: Path, state_db: Path, *, quarantine: float, log_level: str) -> str:
    return f"""\
[agent]
listen = "{AGENT_ADDR}:{AGENT_PORT}"
state_db = "{state_db}"
log_level = "{log_level}"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/server.pem"
key = "{pki}/server.key"

[clients]
allowed = ["{ALG_IDENTITY}"]
admin = ["{ADMIN_IDENTITY}"]

[pool]
addresses = ["{GW_OUTSIDE}"]
port_min = {PORT_MIN}
port_max = {PORT_MAX}
quarantine = {quarantine}
"""


def media_config(pki: Path, stats_file: Path) -> str:
    return f"""
[media]
enabled = true

[[media.agents]]
name = "gw1"
address = "{AGENT_ADDR}:{AGENT_PORT}"
ca = "{pki}/ca.pem"
cert = "{pki}/{ALG_IDENTITY}.pem"
key = "{pki}/{ALG_IDENTITY}.key"

[files]
stats = "{stats_file}"
"""


def start_agent(
    pl: ProxyLab, *, quarantine: float = 5.0, log_level: str = "WARNING", tag: str = "agent"
) -> Proxy:
    """The filter agent in the gw namespace; ready once it says so and listens on FCP.

    A fresh state database per start: a restarted agent must not inherit bindings of a
    failed step."""
    pki = write_pki(pl.workdir)
    state_db = pl.workdir / f"{tag}-state.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{state_db}{suffix}").unlink(missing_ok=True)
    config = pl.workdir / f"{tag}.toml"
    config.write_text(agent_config(pki, state_db, quarantine=quarantine, log_level=log_level))
    log = pl.workdir / f"{tag}.log"
    argv = [sys.executable, "-m", "sipwall", "agent", "--config", str(config)]
    proc = spawn_logged(pl.lab, pl.gw, argv, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited (rc={proc.returncode}):\n{log.read_text()[-2000:]}")
        out = pl.lab.run(pl.gw, ["ss", "-Htnl"])  # dual-stack: [::ffff:127.0.0.1]:7700
        return f"{AGENT_ADDR}:{AGENT_PORT} " in out or f"{AGENT_ADDR}]:{AGENT_PORT} " in out

    wait_until(ready, timeout=20, interval=0.05, what="agent listening")
    holdings(pl)  # one FCP round trip over mTLS (admin identity): the agent serves
    return Proxy(tag, proc, log, proc.pid)


@dataclass
class AnchoredProxy(Proxy):
    """The ALG (`proc`, `log`, `main_pid`) with its agent: CPU, liveness and stop cover both."""

    agent: Proxy | None = None
    stats_file: Path | None = None

    def alg_pids(self) -> list[int]:
        return descendants(self.main_pid)

    def pids(self) -> list[int]:
        return self.alg_pids() + (self.agent.pids() if self.agent else [])

    def alive(self) -> bool:
        return self.proc.poll() is None and (self.agent is None or self.agent.alive())

    def stop(self, timeout: float = 10) -> None:
        """The ALG first (it releases nothing at exit, the agent's state goes with it), then
        the agent."""
        Proxy.stop(self, timeout)
        if self.agent is not None:
            self.agent.stop(timeout)

    def alg_stats(self) -> dict[str, Any]:
        """The ALG's counters, written at exit (`[files] stats`)."""
        if self.stats_file is None or not self.stats_file.exists():
            return {}
        with contextlib.suppress(ValueError):
            data: dict[str, Any] = json.loads(self.stats_file.read_text())
            return data
        return {}


def start_anchored_sipwall(
    pl: ProxyLab,
    mode: str = "stateful",
    *,
    media: bool = True,
    quarantine: float = 5.0,
    agent_log_level: str = "WARNING",
) -> AnchoredProxy:
    """Agent + ALG with `[media] enabled = true` (or the ALG alone, `media=False`, with the
    same config otherwise: the baseline for what anchoring adds)."""
    name = f"sipwall-{mode}-{'anchored' if media else 'plain'}"
    agent = start_agent(pl, quarantine=quarantine, log_level=agent_log_level) if media else None
    try:
        pki = write_pki(pl.workdir)
        stats = pl.workdir / f"{name}-stats.json"
        stats.unlink(missing_ok=True)
        config = pl.workdir / f"{name}.toml"
        text = sipwall_config(mode)
        if media:
            text += media_config(pki, stats)
        else:
            text += f'\n[files]\nstats = "{stats}"\n'
        config.write_text(text)
        log = pl.workdir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        argv = [sys.executable, "-m", "sipwall", "alg", "--config", str(config)]
        proc = spawn_logged(pl.lab, pl.gw, argv, log)
        wait_until(
            lambda: (
                "sipwall alg: ready" in log.read_text(errors="replace")[offset:]
                or proc.poll() is not None
            ),
            timeout=20,
            interval=0.05,
            what="sipwall alg ready",
        )
        wait_listening(pl, proc, pl.gw, ("10.77.0.1", GW_OUTSIDE), log)
    except BaseException:
        if agent is not None:
            agent.stop()
        raise
    return AnchoredProxy(name, proc, log, proc.pid, agent=agent, stats_file=stats)


# -- what the agent holds ----------------------------------------------------------------


def ctl(pl: ProxyLab, what: str, timeout: float = 10) -> list[Any]:
    """`sipwall ctl <what> --json` as the admin identity, in the gw namespace."""
    pki = pl.workdir / "pki"
    argv = [
        "ip",
        "netns",
        "exec",
        pl.gw,
        sys.executable,
        "-m",
        "sipwall",
        "ctl",
        "--agent",
        f"{AGENT_ADDR}:{AGENT_PORT}",
        "--ca",
        str(pki / "ca.pem"),
        "--cert",
        str(pki / f"{ADMIN_IDENTITY}.pem"),
        "--key",
        str(pki / f"{ADMIN_IDENTITY}.key"),
        what,
        "--json",
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=pl.workdir
    )
    if done.returncode != 0:
        raise RuntimeError(f"sipwall ctl {what}: rc={done.returncode} {done.stderr[-500:]}")
    data = json.loads(done.stdout or "[]")
    return data if isinstance(data, list) else list(data)


def holdings(pl: ProxyLab) -> dict[str, int]:
    """How many bindings and rules (pinholes) the agent holds, for every owner."""
    return {what: len(ctl(pl, what)) for what in ("bindings", "rules")}


def table_elements(pl: ProxyLab) -> int | None:
    """Elements in the sets and maps of the agent's nftables table in the gw (None: no
    table). Its pinholes and NAT mappings are elements; the skeleton has none."""
    done = subprocess.run(
        ["ip", "netns", "exec", pl.gw, "nft", "-j", "list", "tables"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    tables = [
        (item["table"]["family"], item["table"]["name"])
        for item in json.loads(done.stdout or "{}").get("nftables", [])
        if "table" in item
    ]
    if not tables:
        return None
    count = 0
    for family, table in tables:
        done = subprocess.run(
            ["ip", "netns", "exec", pl.gw, "nft", "-j", "list", "table", family, table],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        for item in json.loads(done.stdout or "{}").get("nftables", []):
            for kind in ("set", "map"):
                if kind in item:
                    count += len(item[kind].get("elem", []))
    return count


def stop_quietly(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- packet captures (for the setup delay and where it goes) -----------------------------


def start_capture(
    pl: ProxyLab, ns: str, ifname: str, tag: str, capture_filter: str = "udp port 5060"
) -> tuple[subprocess.Popen[str], Path]:
    """`dumpcap` on one lab interface, SIP port only unless `capture_filter` says
    otherwise, classic pcap (kernel timestamps)."""
    path = pl.workdir / f"{tag}-{ifname}.pcap"
    log = pl.workdir / f"{tag}-{ifname}.dumpcap.log"
    offset = log.stat().st_size if log.exists() else 0
    argv = ["dumpcap", "-i", ifname, "-f", capture_filter, "-P", "-q", "-B", "32", "-w", str(path)]
    proc = spawn_logged(pl.lab, ns, argv, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"dumpcap exited (rc={proc.returncode}): {log.read_text()[-500:]}")
        return "Capturing on" in log.read_text(errors="replace")[offset:]

    wait_until(ready, timeout=10, interval=0.05, what=f"dumpcap on {ns}/{ifname}")
    return proc, path


@dataclass(frozen=True)
class SipPacket:
    """One SIP datagram seen on an interface: when, between whom, what, which call."""

    t: float
    src: str
    dst: str
    first_line: str
    from_tag: str  # the caller's From tag: the same on both sides of the ALG
    cseq_method: str

    @property
    def status(self) -> int | None:
        if self.first_line.startswith("SIP/2.0 "):
            return int(self.first_line.split()[1])
        return None

    @property
    def method(self) -> str | None:
        return None if self.first_line.startswith("SIP/") else self.first_line.split(" ", 1)[0]


_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\x4d\x3c\xb2\xa1": ("<", 1e-9)}
_PCAP_MAGIC |= {b"\xa1\xb2\xc3\xd4": (">", 1e-6), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_SHORT = {"f": "from", "i": "call-id"}


def _sip(payload: bytes) -> tuple[str, str, str] | None:
    head = payload.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    from_tag = cseq = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = _SHORT.get(name.strip().lower(), name.strip().lower())
        if name == "from":
            for param in value.split(";")[1:]:
                key, _, tag = param.partition("=")
                if key.strip().lower() == "tag":
                    from_tag = tag.strip()
        elif name == "cseq":
            cseq = value.split()[-1] if value.split() else ""
    if not lines[0]:
        return None
    return lines[0], from_tag, cseq


@dataclass(frozen=True)
class TcpSegment:
    """One TCP segment that carries data (IPv4 over Ethernet or loopback)."""

    t: float
    sport: int
    dport: int
    length: int  # bytes of TCP payload


def read_tcp_segments(path: Path) -> list[TcpSegment]:
    """The TCP segments with a payload in a classic pcap file (pure ACKs left out)."""
    import struct

    out: list[TcpSegment] = []
    for t, ip in _ipv4_frames(path):
        if len(ip) < 20 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack("!HH", tcp[:4])
        length = total - ihl - (tcp[12] >> 4) * 4
        if length > 0:
            out.append(TcpSegment(t, sport, dport, length))
    return out


def _ipv4_frames(path: Path) -> list[tuple[float, bytes]]:
    """(time, IPv4 packet) of each frame of a classic pcap file."""
    import struct

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        return []
    order, unit = _PCAP_MAGIC[data[:4]]
    (linktype,) = struct.unpack(order + "I", data[20:24])
    link_len = {1: 14, 113: 16}.get(linktype)
    if link_len is None:
        raise ValueError(f"{path}: link type {linktype} not handled")
    frames: list[tuple[float, bytes]] = []
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(order + "IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        ip = frame[link_len:]
        if ip and ip[0] >> 4 == 4:
            frames.append((sec + frac * unit, ip))
    return frames


def read_pcap(path: Path) -> list[SipPacket]:
    """The SIP datagrams (IPv4/UDP over Ethernet) of a classic pcap file."""
    import ipaddress

    packets: list[SipPacket] = []
    for t, ip in _ipv4_frames(path):
        if len(ip) < 20 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        parsed = _sip(udp[8:])
        if parsed is None:
            continue
        src = str(ipaddress.IPv4Address(ip[12:16]))
        dst = str(ipaddress.IPv4Address(ip[16:20]))
        packets.append(SipPacket(t, src, dst, *parsed))
    return packets


def first_times(packets: list[SipPacket], src_prefix: str = "") -> dict[tuple[str, str], float]:
    """{(from tag, event): first time seen} for the INVITE transaction's events "INVITE",
    "180" and "200" (a retransmission is later, so the first copy is the one that counts);
    `src_prefix` keeps only datagrams from such source addresses."""
    seen: dict[tuple[str, str], float] = {}
    for p in packets:
        if not p.src.startswith(src_prefix) or p.cseq_method != "INVITE" or not p.from_tag:
            continue
        event = "INVITE" if p.method == "INVITE" else str(p.status)
        if event in ("INVITE", "180", "200"):
            seen.setdefault((p.from_tag, event), p.t)
    return seen
