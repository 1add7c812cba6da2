"""Helpers for labs at scale: many realistic calls' pinholes at once, a trafgen UDP stream,
and counters (links, CPU time) read from the lab's controlling process.

Bulk calls: `other_calls(n)` builds n distinct calls of other subscribers, each one SINGLE
binding with one inbound pinhole for an exact remote address and port, so every call puts
one element in dnat4, snat4 and in4. Their keys never collide with a test's own call on
the gateway's primary public address (203.0.113.1, inside 10.77.0.10): the other calls'
public addresses are 203.0.113.2 and up (ports 20000-59999), their inside endpoints
10.77.0.11-.250 on even (RTP) ports, their remotes 198.51.100.1-.250. `install`
sends them through the agent's planner and driver, `batch` calls per transaction, as
`bench/agent_install.py` does.

Listing a 100k-element set with nft takes seconds (the tool always fetches the whole set,
even for `get element`), so checks at scale read one set, once.

trafgen (Debian `netsniff-ng`) builds frames itself and sends them through a
PACKET_TX_RING: one process pushes several hundred thousand packets per second into a veth,
where a Python sender manages a few tens of thousands. The frames carry the right MAC
addresses, so the sender namespace needs no ARP and no route. trafgen always runs with a
packet count (`-n`), inside a lab namespace, with the flags that stop it from tuning the
host (IRQ affinities, net.core socket memory), and is stopped with `stop_trafgen`, which
also reaches the sending process trafgen forks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from filter_agent.driver import NftDriver
from filter_agent.model import Binding, BindingKind, Direction, Protocol, Rule
from filter_agent.plan import MAP_DATA, Change, TableSpec, plan_change
from labs.netns import Lab

Call = tuple[Rule, Binding]

_INSIDE_HOSTS = 240  # 10.77.0.11 - 10.77.0.250
_PORTS_PER_HOST = 20000  # even ports 16384 - 56382
_PUBLIC_PORTS = 40000  # 20000 - 59999 per public address
_REMOTE_HOSTS = 250  # 198.51.100.1 - .250
MAX_OTHER_CALLS = _INSIDE_HOSTS * _PORTS_PER_HOST


def other_calls(n: int, *, lifetime: float = 3600.0, owner: str = "bulk") -> list[Call]:
    """n distinct calls of other subscribers as (pinhole, its binding); deterministic, so
    `other_calls(m)[:n] == other_calls(n)`."""
    if not 0 <= n <= MAX_OTHER_CALLS:
        raise ValueError(f"between 0 and {MAX_OTHER_CALLS} other calls")
    first_public = ipaddress.IPv4Address("203.0.113.2")
    calls: list[Call] = []
    for i in range(n):
        slot, host = divmod(i, _INSIDE_HOSTS)
        b = Binding(
            f"{owner}-b{i}",
            owner,
            f"{owner}-c{i}",
            Protocol.UDP,
            f"10.77.0.{11 + host}",
            16384 + 2 * slot,  # RTP on even ports (RFC 3550 §11)
            str(first_public + i // _PUBLIC_PORTS),
            (20000 + i % _PUBLIC_PORTS,),
            BindingKind.SINGLE,
            lifetime,
        )
        r = Rule(
            f"{owner}-r{i}",
            owner,
            b.id,
            b.group,
            Direction.INBOUND,
            f"198.51.100.{1 + i % _REMOTE_HOSTS}",
            30000 + 2 * (i // _REMOTE_HOSTS % 15000),
            None,
            lifetime,
        )
        calls.append((r, b))
    return calls


def install(driver: NftDriver, spec: TableSpec, calls: Sequence[Call], batch: int = 5000) -> None:
    """Put the calls' bindings and pinholes, `batch` calls per transaction. Timeouts are
    the calls' lifetimes counted from now=0 (kernel timers, so the elements expire by
    themselves like any agent's)."""
    for start in range(0, len(calls), batch):
        chunk = tuple(calls[start : start + batch])
        change = Change(put_bindings=tuple(b for _, b in chunk), put_rules=chunk)
        driver.apply(plan_change(spec, change, now=0.0))


def _nft_json(lab: Lab, ns: str, argv: Sequence[str]) -> list[dict[str, Any]]:
    out = lab.run(ns, ["nft", "-j", *argv], timeout=60)
    items: list[dict[str, Any]] = json.loads(out).get("nftables", [])
    return items


def count_elements(lab: Lab, ns: str, set_name: str, spec: TableSpec | None = None) -> int:
    """Number of elements of one of the agent's sets or maps, listed by nft in `ns`."""
    spec = spec or TableSpec()
    kind = "map" if set_name in MAP_DATA else "set"
    for item in _nft_json(lab, ns, ["list", kind, spec.family, spec.name, set_name]):
        if kind in item:
            return len(item[kind].get("elem", []))
    return 0


def element_packets(
    lab: Lab, ns: str, set_name: str, key: Sequence[str | int], spec: TableSpec | None = None
) -> int | None:
    """The packet counter of one element of a counted set (None: no such element).
    (nft 1.0.6 prints nothing for `-j get element`, so this reads the text form.)"""
    spec = spec or TableSpec()
    wanted = " . ".join(str(k) for k in key)
    argv = ["nft", "get", "element", spec.family, spec.name, set_name, f"{{ {wanted} }}"]
    try:
        out = lab.run(ns, argv, timeout=60)
    except subprocess.CalledProcessError:
        return None
    found = re.search(r"counter packets (\d+)", out)
    return int(found.group(1)) if found else None


def rule_packets(lab: Lab, ns: str, family: str, table: str, chain: str) -> list[int]:
    """Packet counters of the counter-carrying rules of one chain, in rule order."""
    return [
        int(stmt["counter"]["packets"])
        for item in _nft_json(lab, ns, ["list", "chain", family, table, chain])
        for stmt in item.get("rule", {}).get("expr", [])
        if "counter" in stmt
    ]


# -- trafgen -----------------------------------------------------------------------------


def trafgen_available() -> bool:
    return shutil.which("trafgen") is not None


@dataclass(frozen=True)
class UdpFrame:
    """One Ethernet/IPv4/UDP frame for trafgen; checksums computed by trafgen.

    The default payload (172 bytes) is an RTP packet of G.711 at 20 ms: a 12-byte RTP
    header (version 2, PT 0) and 160 bytes of samples."""

    src_mac: str
    dst_mac: str
    src: str
    sport: int
    dst: str
    dport: int
    payload: int = 172

    def config(self) -> str:
        if self.payload < 12:
            raise ValueError("payload must hold an RTP header")
        return (
            "{\n"
            f"  eth(da={self.dst_mac}, sa={self.src_mac}, type=0x0800),\n"
            f"  ipv4(saddr={self.src}, daddr={self.dst}, ttl=64, df),\n"
            f"  udp(sp={self.sport}, dp={self.dport}),\n"
            "  0x80, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0xa0, 0x12, 0x34, 0x56, 0x78,\n"
            f"  fill(0xd5, {self.payload - 12}),\n"
            "}\n"
        )


def trafgen_argv(
    dev: str, config: Path, *, count: int, rate_pps: int | None = None, cpu: int | None = None
) -> list[str]:
    """One trafgen process (-P 1) sending `count` frames out of `dev`, as fast as it can
    or at `rate_pps`; `cpu` pins it (taskset)."""
    if count <= 0:
        raise ValueError("trafgen needs a bound: count > 0")
    # -Q: leave IRQ affinities alone; --no-sock-mem: leave the global net.core socket
    # memory sysctls alone (-A is listed in --help but not accepted by 0.6.8).
    argv = ["trafgen", "-o", dev, "-i", str(config), "-P", "1", "-n", str(count)]
    argv += ["-Q", "--no-sock-mem", "-C"]
    if rate_pps is not None:
        argv += ["-b", f"{rate_pps}pps"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    return argv


def children(pid: int) -> list[int]:
    """pids whose parent is `pid` (trafgen's parent forks the process that sends)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def stop_trafgen(proc: subprocess.Popen[str], timeout: float = 5) -> None:
    """Stop a trafgen started with `Lab.spawn`, and the sending process it forked.

    trafgen's stop is SIGINT to the whole group, as from a terminal: the forked sender
    checks it between batches and the parent then reaps it. Killing only the parent
    would orphan the sender, which would go on until its count runs out."""
    workers = children(proc.pid)
    for pid in workers:  # ours by construction: children of the trafgen we started
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in workers:  # a sender that outlived its parent (re-parented, same name)
        try:
            with open(f"/proc/{pid}/comm", encoding="ascii") as f:
                alive = f.read().strip() == "trafgen"
        except OSError:
            alive = False
        if alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- counters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkCounters:
    rx_packets: int
    tx_packets: int
    rx_dropped: int
    tx_dropped: int


class Links:
    """Link statistics of lab namespaces over netlink sockets kept open, so one read takes
    well under a millisecond and measurement windows are exact."""

    def __init__(self) -> None:
        self._sockets: dict[str, IPRoute] = {}

    def _link(self, ns: str, ifname: str) -> Any:
        ipr = self._sockets.get(ns)
        if ipr is None:
            ipr = self._sockets[ns] = IPRoute(netns=ns)
        (link,) = ipr.get_links(ifname=ifname)
        return link

    def counters(self, ns: str, ifname: str) -> LinkCounters:
        stats = self._link(ns, ifname).get("IFLA_STATS64")
        return LinkCounters(
            int(stats["rx_packets"]),
            int(stats["tx_packets"]),
            int(stats["rx_dropped"]),
            int(stats["tx_dropped"]),
        )

    def mac(self, ns: str, ifname: str) -> str:
        return str(self._link(ns, ifname).get("IFLA_ADDRESS"))

    def close(self) -> None:
        for ipr in self._sockets.values():
            ipr.close()
        self._sockets.clear()

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def runtime_ns(pid: int) -> int:
    """CPU time a task has run, in ns (/proc/PID/schedstat, exact even with tick-based
    accounting); 0 once the task is gone."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return 0


def softirq_threads() -> list[int]:
    """pids of the ksoftirqd/N threads (softirq work the kernel defers out of the
    sending task's context runs there)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="ascii") as f:
                if f.read().startswith("ksoftirqd/"):
                    pids.append(int(entry))
        except OSError:
            continue
    return sorted(pids)
