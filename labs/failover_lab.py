"""Two gateways, two filter agents, one ALG: new calls fail over from gw1's agent to gw2's.

    alice 10.77.0.10 --+-- gw1 10.77.0.1 | 203.0.113.1  (ALG + agent "gw1") --+-- carol
                       +-- gw2 10.77.0.2 | 203.0.113.2  (agent "gw2")       --+   203.0.113.20
                       inside default gateway: 10.77.0.254 (VRRP-style virtual address)

On the `two-gateways` topology this starts

  * gw1's agent (FCP on 127.0.0.1:7700, pool 203.0.113.1) and gw2's agent (FCP on
    10.77.0.2:7700 over the LAN, pool 203.0.113.2), each with a server certificate for its
    own address from one lab CA (`fcp.certs`); clients alg-1 (the ALG) and ctl (admin);
  * the ALG in gw1 with both as `[[media.agents]]`: gw1 weighted 100000 to 1 (a primary
    and a backup; one call in 100001 lands on gw2 while both are healthy — the test checks
    per call which agent holds the group anyway);
  * baresip phones alice (inside, registered through the ALG) and carol (outside).

The inside's media leaves through whichever gateway holds the inside default-gateway
address. A real pair of gateways runs VRRP (RFC 5798) for it: the backup takes the
address over when the master fails (keepalived tracking the agent with a check script)
and announces the move with a gratuitous ARP (RFC 5798 §6.4.2), which updates the hosts'
neighbour caches. Neither keepalived nor arping is installed here, so `vrrp_master(host)`
does the same two things by hand: moves 10.77.0.254/24 to `host`'s LAN interface and
broadcasts the gratuitous ARP from there (an AF_PACKET socket opened inside the
namespace). The topology (labs/topologies/two-gateways.toml) routes the phones via the
virtual address and gives it to gw1 at first; nothing touches the phones' routes.
Signalling is not affected: the ALG's inside address 10.77.0.1 is on-link.

Everything runs under the lab's bookkeeping (`labs.build`): processes are started through
the lab and stopped with it, on success, failure and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcp.certs import generate_ca, issue_client, issue_server, write_pair
from labs import build
from labs.baresip import Phone, PhoneConfig
from labs.gateway_config import AgentEntry, AgentFiles, AlgFiles, agent_toml, alg_toml
from labs.netns import poll_until
from labs.nsock import socket_in
from labs.topology import load

SCENARIO = "two-gateways"
FCP_PORT = 7700
DOMAIN = "sipwall.example"
VIP = "10.77.0.254"  # the inside default gateway, held by the VRRP master
LAN_IF, WAN_IF = "lan0", "wan0"
ALICE_HZ, CAROL_HZ = 440, 660


@dataclass(frozen=True)
class Gateway:
    host: str
    inside: str
    outside: str
    fcp_listen: str  # where its agent serves FCP
    weight: float


GATEWAYS = (
    Gateway("gw1", "10.77.0.1", "203.0.113.1", f"127.0.0.1:{FCP_PORT}", 100000.0),
    Gateway("gw2", "10.77.0.2", "203.0.113.2", f"10.77.0.2:{FCP_PORT}", 1.0),
)
ALG_GW = GATEWAYS[0]


class FailoverError(RuntimeError):
    """The lab could not do or see something in time."""


def poll(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """`labs.netns.poll_until`, raising FailoverError at the deadline."""
    return poll_until(what, timeout, probe, FailoverError)


def gratuitous_arp(ns: str, iface: str, address: str) -> None:
    """Broadcast an ARP announcement for `address` from `iface` in namespace `ns`: an ARP
    request whose sender and target are both the address (RFC 5227 §3; what a new VRRP
    master sends, RFC 5798 §6.4.2). Receivers that know the address update their entry."""
    sock = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind((iface, 0x0806))
        mac: bytes = sock.getsockname()[4]
        ip = ipaddress.IPv4Address(address).packed
        ether = b"\xff" * 6 + mac + struct.pack("!H", 0x0806)
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\0" * 6 + ip
        for _ in range(3):  # like keepalived's garp repeat: one may be lost
            sock.send(ether + arp)


@dataclass
class FailoverLab:
    """The running lab; `close()` stops everything (also from a `finally`)."""

    lab: build.RunningLab
    work: Path
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    alg: subprocess.Popen[bytes] | None = None
    captures: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    vrrp_holder: str = "gw1"  # the topology gives gw1 the virtual address at first

    @property
    def pki(self) -> Path:
        return self.work / "pki"

    @property
    def stats_file(self) -> Path:
        return self.work / "alg-stats.json"

    def pcap(self, host: str) -> Path:
        return self.work / f"{host}-{WAN_IF}.pcap"

    # -- setup ---------------------------------------------------------------------------

    def write_configs(self) -> None:
        ca = generate_ca()
        write_pair(self.pki, "ca", ca)
        for gw in GATEWAYS:
            host = gw.fcp_listen.rpartition(":")[0]
            write_pair(self.pki, f"{gw.host}-server", issue_server(ca, [host]))
        for identity in ("alg-1", "ctl"):
            write_pair(self.pki, identity, issue_client(ca, identity))
        for gw in GATEWAYS:
            agent = AgentFiles(
                gw.fcp_listen, gw.outside, self.pki, f"{gw.host}-server", f"{gw.host}-agent.db"
            )
            (self.work / f"{gw.host}-agent.toml").write_text(agent_toml(agent))
        entries = [AgentEntry(gw.host, gw.fcp_listen, self.pki, gw.weight) for gw in GATEWAYS]
        alg = AlgFiles(ALG_GW.inside, ALG_GW.outside, entries, (DOMAIN,), stats=self.stats_file)
        (self.work / "alg.toml").write_text(alg_toml(alg))

    def start_captures(self) -> None:
        """dumpcap on each gateway's outside interface: everything that left for outside."""
        for gw in GATEWAYS:
            argv = ["dumpcap", "-q", "-P", "-i", WAN_IF, "-a", "duration:300"]
            self.captures[gw.host] = self.lab.spawn(
                gw.host, [*argv, "-w", str(self.pcap(gw.host))], name="dumpcap"
            )
        for gw in GATEWAYS:
            log = self.lab.log_path(gw.host, "dumpcap")

            def capturing(log: Path = log) -> bool:
                return log.exists() and "Capturing on" in log.read_text(errors="replace")

            poll(f"capture on {gw.host} {WAN_IF}", 15, capturing)

    def stop_captures(self) -> None:
        for proc in self.captures.values():
            if proc.poll() is None:
                proc.terminate()  # dumpcap completes the file on SIGTERM
        for proc in self.captures.values():
            _wait(proc)
            self.lab.forget(proc)
        self.captures.clear()

    def start_agents(self) -> None:
        for gw in GATEWAYS:
            argv = [sys.executable, "-m", "sipwall", "agent"]
            argv += ["--config", str(self.work / f"{gw.host}-agent.toml")]
            self.agents[gw.host] = self.lab.spawn(gw.host, argv, name="agent")
        for gw in GATEWAYS:
            log = self.lab.log_path(gw.host, "agent")
            proc = self.agents[gw.host]

            def ready(proc: subprocess.Popen[bytes] = proc, log: Path = log) -> bool:
                if proc.poll() is not None:
                    raise FailoverError(f"agent exited: {log.read_text(errors='replace')[-500:]}")
                return "agent ready" in log.read_text(errors="replace")

            poll(f"{gw.host}'s agent ready", 30, ready)

    def start_alg(self) -> None:
        argv = [sys.executable, "-m", "sipwall", "alg", "--config", str(self.work / "alg.toml")]
        alg = self.lab.spawn(ALG_GW.host, argv, name="alg")
        self.alg = alg
        log = self.lab.log_path(ALG_GW.host, "alg")

        def watching() -> bool:
            if alg.poll() is not None:
                raise FailoverError(f"ALG exited: {log.read_text(errors='replace')[-800:]}")
            text = log.read_text(errors="replace")
            return "sipwall alg: ready" in text and all(
                f"agent {gw.host}: event watch_started" in text for gw in GATEWAYS
            )

        poll("the ALG ready and watching both agents", 30, watching)

    def vrrp_master(self, host: str) -> None:
        """Move the inside default-gateway address to `host` and announce it there."""
        for gw in GATEWAYS:
            if gw.host != host and gw.host == self.vrrp_holder:
                self.lab.run(gw.host, ["ip", "addr", "del", f"{VIP}/24", "dev", LAN_IF])
        self.lab.run(host, ["ip", "addr", "add", f"{VIP}/24", "dev", LAN_IF])
        self.vrrp_holder = host
        gratuitous_arp(self.lab.ns(host), LAN_IF, VIP)

    def phones(self) -> tuple[Phone, Phone]:
        alice = PhoneConfig(
            "alice",
            self.lab.address("alice"),
            tone_hz=ALICE_HZ,
            domain=DOMAIN,
            registrar=f"sip:{ALG_GW.inside}",
            outbound_proxy=f"sip:{ALG_GW.inside}:5060",
            register_interval=600,
        )
        carol = PhoneConfig(
            "carol",
            self.lab.address("carol"),
            tone_hz=CAROL_HZ,
            outbound_proxy=f"sip:{ALG_GW.outside}:5060",
            rtp_ports=(12000, 12099),
        )
        return (
            Phone(self.lab, "alice", alice, self.work / "alice"),
            Phone(self.lab, "carol", carol, self.work / "carol"),
        )

    # -- observing ---------------------------------------------------------------------

    def ctl(self, host: str, what: str) -> list[dict[str, Any]]:
        """`sipwall ctl <what> --json` against `host`'s agent, as the admin identity."""
        gw = next(g for g in GATEWAYS if g.host == host)
        argv = [sys.executable, "-m", "sipwall", "ctl", "--agent", gw.fcp_listen]
        argv += ["--ca", str(self.pki / "ca.pem"), "--cert", str(self.pki / "ctl.pem")]
        argv += ["--key", str(self.pki / "ctl.key"), what, "--json"]
        done = self.lab.run(host, argv, timeout=30, check=False)
        if done.returncode != 0:
            raise FailoverError(f"sipwall ctl {what} on {host}: {done.stderr.strip()[-300:]}")
        records: list[dict[str, Any]] = json.loads(done.stdout or "[]")
        return records

    def table_elements(self, host: str) -> int | None:
        """Elements in the sets and maps of the agent's table in `host` (None: no table);
        read from the kernel, so it also works once the agent is dead."""
        done = self.lab.run(
            host, ["nft", "-j", "list", "table", "inet", "sipwall"], timeout=15, check=False
        )
        if done.returncode != 0:
            return None
        count = 0
        for item in json.loads(done.stdout).get("nftables", []):
            for kind in ("set", "map"):
                if kind in item:
                    count += len(item[kind].get("elem", []))
        return count

    def alg_counters(self) -> dict[str, Any]:
        """The ALG's counters, written on SIGUSR1 (`[files] stats`)."""
        assert self.alg is not None

        def stamp() -> tuple[int, int] | None:
            with contextlib.suppress(FileNotFoundError):
                st = self.stats_file.stat()
                return (st.st_ino, st.st_mtime_ns)
            return None

        before = stamp()
        os.kill(self.alg.pid, signal.SIGUSR1)  # `ip netns exec` execs: this is the ALG
        poll("the ALG's counters written", 10, lambda: stamp() not in (None, before))
        data: dict[str, Any] = json.loads(self.stats_file.read_text())
        return data

    def kill_agent(self, host: str, signum: int) -> None:
        proc = self.agents[host]
        os.kill(proc.pid, signum)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            raise FailoverError(f"{host}'s agent still running after {signum}") from None
        self.lab.forget(proc)

    # -- teardown ---------------------------------------------------------------------

    def stop(self) -> None:
        """The ALG first, then the agents and the captures; the lab closes separately."""
        procs = [self.alg] if self.alg is not None else []
        procs += list(self.agents.values())
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            _wait(proc)
            self.lab.forget(proc)
        self.alg = None
        self.agents.clear()
        self.stop_captures()


def _wait(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start(name: str) -> FailoverLab:
    """Build the lab and start agents, ALG and captures; the caller closes it."""
    lab = build.up(load(SCENARIO), name, source=SCENARIO)
    try:
        work = lab.dir / "failover"
        work.mkdir()
        fo = FailoverLab(lab, work)
        fo.write_configs()
        fo.start_captures()
        fo.start_agents()
        fo.start_alg()
    except BaseException:
        lab.close()
        raise
    return fo


# --- reading the captures -------------------------------------------------------------


@dataclass(frozen=True)
class Sdp:
    t: float
    call_id: str
    src: str
    dst: str
    what: str  # "INVITE", "200" ...
    connection: str  # the SDP c= address


def sdp_sent(pcap: Path) -> list[Sdp]:
    """Every SIP message carrying SDP in a capture (retransmissions included)."""
    fields = ["frame.time_epoch", "sip.Call-ID", "ip.src", "ip.dst", "sip.Method"]
    fields += ["sip.Status-Code", "sdp.connection_info.address"]
    argv = ["tshark", "-r", str(pcap), "-n", "-Y", "sip && sdp", "-T", "fields"]
    argv += ["-E", "separator=|", "-E", "occurrence=f"]
    for f in fields:
        argv += ["-e", f]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise FailoverError(f"tshark {pcap}: {done.stderr.strip()[-300:]}")
    found = []
    for line in done.stdout.splitlines():
        t, call_id, src, dst, method, status, conn = line.split("|")
        found.append(Sdp(float(t), call_id, src, dst, method or status, conn))
    return found


def count_packets(pcap: Path, display_filter: str) -> int:
    argv = ["tshark", "-r", str(pcap), "-n", "-Y", display_filter, "-T", "fields"]
    argv += ["-e", "frame.number"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise FailoverError(f"tshark {pcap} {display_filter!r}: {done.stderr.strip()[-300:]}")
    return len(done.stdout.split())
