"""Network-namespace lab helpers: namespaces, veth links, addresses, routes, forwarding.

Rules these helpers enforce (ARCHITECTURE §6): every host is a namespace created here and
named `<prefix>-<pid>-<role>`; links are created *inside* namespaces (a veth pair is born in
one lab namespace with its peer placed straight into another), so the root namespace's
links, addresses, routes, nftables and conntrack are never touched. `Lab` is a context
manager that removes everything on success, failure and Ctrl-C; `cleanup_stale` removes
namespaces left by a lab process that died.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from pyroute2 import IPRoute, netns

T = TypeVar("T")

PREFIX = "swt"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove `<prefix>-<pid>-*` namespaces whose creating process is dead."""
    removed = []
    for name in netns.listnetns():
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != prefix or not parts[1].isdigit():
            continue
        if _pid_alive(int(parts[1])):
            continue
        netns.remove(name)
        removed.append(name)
    return removed


def poll_until(
    what: str,
    timeout: float,
    probe: Callable[[], T],
    error: Callable[[str], Exception] = TimeoutError,
) -> T:
    """Call `probe` every 50 ms until it returns something truthy and return that; at the
    deadline raise `error("<what>: not within <timeout>s")` (each lab its own error)."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise error(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)  # polling, bounded by the deadline


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.01, what: str = ""
) -> None:
    """Poll `predicate` until true or raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s: {what}")
        time.sleep(interval)


@dataclass
class Lab:
    """A set of namespaces owned by this process."""

    prefix: str = PREFIX
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def name(self, role: str) -> str:
        return f"{self.prefix}-{os.getpid()}-{role}"

    def add_host(self, role: str) -> str:
        name = self.name(role)
        if name in netns.listnetns():
            raise RuntimeError(f"namespace {name} already exists")
        netns.create(name)
        self.namespaces.append(name)
        with IPRoute(netns=name) as ipr:
            (lo,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo, state="up")
        return name

    def link(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair between two lab namespaces, created inside `ns_a`."""
        with IPRoute(netns=ns_a) as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})
            (idx,) = ipr.link_lookup(ifname=if_a)
            ipr.link("set", index=idx, state="up")
        with IPRoute(netns=ns_b) as ipr:
            (idx,) = ipr.link_lookup(ifname=if_b)
            ipr.link("set", index=idx, state="up")

    def address(self, ns: str, ifname: str, cidr: str) -> None:
        addr, plen = cidr.split("/")
        with IPRoute(netns=ns) as ipr:
            (idx,) = ipr.link_lookup(ifname=ifname)
            ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))

    def route(self, ns: str, dst: str, gateway: str) -> None:
        with IPRoute(netns=ns) as ipr:
            ipr.route("add", dst=dst, gateway=gateway)

    def forwarding(self, ns: str, on: bool = True) -> None:
        # sysctls under net/ are per network namespace; this writes the lab's copy only.
        self.run(ns, ["sysctl", "-q", "-w", f"net.ipv4.ip_forward={int(on)}"])

    def run(self, ns: str, argv: Sequence[str], timeout: float = 30) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout

    def spawn(self, ns: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start a process inside `ns`; it is killed when the lab closes."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.processes.clear()
        for name in reversed(self.namespaces):
            if name in netns.listnetns():
                netns.remove(name)  # its veth ends, tables and conntrack go with it
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        cleanup_stale(self.prefix)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class GatewayLab:
    """inside (10.77.0.10) -- gw (10.77.0.1 | 203.0.113.1) -- outside (.20 and .30)."""

    lab: Lab
    inside: str
    gw: str
    outside: str
    inside_addr: str = "10.77.0.10"
    gw_inside_addr: str = "10.77.0.1"
    public_addr: str = "203.0.113.1"
    remote_addr: str = "203.0.113.20"
    other_remote_addr: str = "203.0.113.30"


@contextmanager
def gateway_lab(prefix: str = PREFIX) -> Iterator[GatewayLab]:
    with Lab(prefix) as lab:
        inside, gw, outside = lab.add_host("in"), lab.add_host("gw"), lab.add_host("out")
        lab.link(gw, "gw-in", inside, "in0")
        lab.link(gw, "gw-out", outside, "out0")
        lab.address(inside, "in0", "10.77.0.10/24")
        lab.address(gw, "gw-in", "10.77.0.1/24")
        lab.address(gw, "gw-out", "203.0.113.1/24")
        lab.address(outside, "out0", "203.0.113.20/24")
        lab.address(outside, "out0", "203.0.113.30/24")
        lab.route(inside, "0.0.0.0/0", "10.77.0.1")
        lab.forwarding(gw)
        yield GatewayLab(lab, inside, gw, outside)
