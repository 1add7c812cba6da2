"""Build and tear down a topology as network namespaces (pyroute2), with leftover cleanup.

Theory of operation
-------------------
`up()` claims the lab name under a lock (cleaning leftovers first), writes the state file,
then creates namespaces one by one — each namespace is added to the state file *before*
it is created — links, bridges, addresses, routes, sysctls and the gateway firewall. Any
exception or signal during the build tears down what exists and re-raises. The process
calling `up()` is the lab's *owner*; a lab whose owner is dead is a leftover.

`teardown()` works from the state file alone, so any process can do it, and it is
idempotent: stop recorded processes (SIGTERM, then SIGKILL at a deadline), kill whatever
else still runs inside the lab's namespaces (a process keeps a namespace alive after
`ip netns delete`), delete the namespaces — their veth ends, nftables tables and conntrack
go with them — and finally the state directory. Nothing here touches the root namespace:
links are born inside lab namespaces and routes and sysctls are set inside them.

Leftovers (`find_leftovers`): a state directory whose owner is dead, or `swlab-<lab>-*`
namespaces without any state directory. `up()` removes them and refuses to start if one
cannot be removed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pyroute2 import IPRoute, netns

from labs import state as st
from labs.signals import deferred_signals
from labs.topology import Host, Topology

Progress = Callable[[str], None]
STOP_GRACE = 3.0


def _quiet(message: str) -> None:
    pass


def _nothing() -> None:
    pass


# --- processes and namespaces -----------------------------------------------------------


def _netns_id(name: str) -> tuple[int, int] | None:
    try:
        s = os.stat(f"/run/netns/{name}")
    except FileNotFoundError:
        return None
    return s.st_dev, s.st_ino


def pids_in_netns(name: str) -> list[int]:
    """Processes whose network namespace is the named one (what `ip netns pids` does)."""
    ident = _netns_id(name)
    if ident is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            s = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == ident and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


def _signal(ref: st.ProcRef, signum: int) -> None:
    if ref.alive():
        try:
            os.kill(ref.pid, signum)
        except ProcessLookupError:
            pass


def stop_processes(refs: Sequence[st.ProcRef], grace: float = STOP_GRACE) -> list[st.ProcRef]:
    """SIGTERM, wait up to `grace`, SIGKILL; returns those still alive after all that."""
    live = [r for r in refs if r.alive()]
    for ref in live:
        _signal(ref, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        _reap(live)
        live = [r for r in live if r.alive()]
        if live:
            time.sleep(0.02)
    for ref in live:
        _signal(ref, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        _reap(live)
        live = [r for r in live if r.alive()]
        if live:
            time.sleep(0.02)
    return live


def _reap(refs: Sequence[st.ProcRef]) -> None:
    """Collect those of `refs` that are exited children of ours (only those: other code's
    children are not ours to wait for). A zombie already counts as dead for alive()."""
    for ref in refs:
        try:
            os.waitpid(ref.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def remove_namespace(name: str, grace: float = STOP_GRACE) -> None:
    """Kill everything inside the namespace, then delete it; LabError if it stays."""
    if _netns_id(name) is None:
        return
    refs = []
    for pid in pids_in_netns(name):
        start = st.start_time(pid)
        if start is not None:
            refs.append(st.ProcRef(pid, start, name=f"in {name}"))
    stubborn = stop_processes(refs, grace)
    if stubborn:
        raise st.LabError(f"cannot stop pids {[r.pid for r in stubborn]} inside {name}")
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise st.LabError(f"cannot remove namespace {name}: {exc}") from exc
    if _netns_id(name) is not None:
        raise st.LabError(f"namespace {name} is still there after removal")


def our_namespaces() -> list[str]:
    return sorted(n for n in netns.listnetns() if st.parse_ns_name(n) is not None)


def teardown(lab: str, root: Path = st.STATE_ROOT, progress: Progress = _quiet) -> None:
    """Remove a lab from its state file and namespace names; idempotent, any process."""
    with deferred_signals():  # a second Ctrl-C must not leave half a lab behind
        state = st.read_state(lab, root)
        if state is not None and state.phase != "tearing-down":
            st.write_state(dataclasses.replace(state, phase="tearing-down"), root)
        refs = state.processes if state else ()
        if refs:
            progress(f"stopping {len(refs)} process(es)")
            stubborn = stop_processes(refs)
            if stubborn:
                raise st.LabError(f"cannot stop {[r.pid for r in stubborn]} of lab {lab}")
        names = set(state.namespaces if state else ())
        names |= {n for n in our_namespaces() if st.ns_lab(n) == lab}
        for name in sorted(names):
            progress(f"removing namespace {name}")
            remove_namespace(name)
        shutil.rmtree(st.lab_dir(lab, root), ignore_errors=True)
        if st.lab_dir(lab, root).exists():
            raise st.LabError(f"cannot remove {st.lab_dir(lab, root)}")


@dataclass(frozen=True)
class Leftover:
    lab: str
    reason: str
    namespaces: tuple[str, ...]


def find_leftovers(root: Path = st.STATE_ROOT) -> list[Leftover]:
    found = []
    claimed = set()
    for lab in st.lab_names(root):
        claimed.add(lab)
        state = st.read_state(lab, root)
        if state is not None and state.owner.alive():
            continue
        why = "no readable state file" if state is None else f"owner {state.owner.pid} is dead"
        names = [n for n in our_namespaces() if st.ns_lab(n) == lab]
        found.append(Leftover(lab, why, tuple(names)))
    orphans: dict[str, list[str]] = {}
    for name in our_namespaces():
        owner_lab = st.ns_lab(name)
        if owner_lab is not None and owner_lab not in claimed:
            orphans.setdefault(owner_lab, []).append(name)
    found += [
        Leftover(lab, "namespaces without a state file", tuple(ns)) for lab, ns in orphans.items()
    ]
    return found


def clean_leftovers(root: Path = st.STATE_ROOT, progress: Progress = _quiet) -> list[Leftover]:
    """Remove every leftover; LabError (naming them) if any cannot be removed."""
    cleaned, failed = [], []
    for left in find_leftovers(root):
        progress(f"cleaning leftover lab {left.lab} ({left.reason})")
        try:
            teardown(left.lab, root, progress)
        except st.LabError as exc:
            failed.append(f"{left.lab}: {exc}")
        else:
            cleaned.append(left)
    if failed:
        raise st.LabError("leftovers that cannot be cleaned: " + "; ".join(failed))
    return cleaned


# --- building -------------------------------------------------------------------------


def _ns_run(ns: str, argv: Sequence[str], stdin: str | None = None) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise st.LabError(f"{' '.join(argv)} in {ns} failed: {done.stderr.strip()}")


def _index(ipr: Any, ifname: str) -> int:
    (idx,) = ipr.link_lookup(ifname=ifname)
    return int(idx)


class RunningLab:
    """A built lab owned by this process: namespaces, state file, spawned processes."""

    def __init__(self, topology: Topology, name: str, root: Path, progress: Progress) -> None:
        self.topology, self.name, self.root, self.progress = topology, name, root, progress
        self.checkpoint: Callable[[], None] = _nothing
        self._popens: list[subprocess.Popen[Any]] = []
        self._logs: list[IO[Any]] = []
        self.closed = False

    @property
    def dir(self) -> Path:
        return st.lab_dir(self.name, self.root)

    def state(self) -> st.LabState:
        state = st.read_state(self.name, self.root)
        if state is None:
            raise st.LabError(f"lab {self.name} has no state file")
        return state

    def _update(self, **changes: Any) -> None:
        st.write_state(dataclasses.replace(self.state(), **changes), self.root)

    def ns(self, host: str) -> str:
        self.topology.host(host)  # KeyError for a host the topology lacks
        return st.ns_name(self.name, host)

    def address(self, host: str) -> str:
        return self.topology.address(host)

    def run(
        self, host: str, argv: Sequence[str], timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        *,
        name: str,
        cwd: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start a process inside `host`, output to `<lab dir>/logs/<host>-<name>.log`.
        It is recorded in the state file, so `down` from any process stops it."""
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        log = open(logs / f"{host}-{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *argv],
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
        self._popens.append(proc)
        start = st.start_time(proc.pid)
        if start is not None:
            ref = st.ProcRef(proc.pid, start, host, name)
            self._update(processes=(*self.state().processes, ref))
        return proc

    def log_path(self, host: str, name: str) -> Path:
        return self.dir / "logs" / f"{host}-{name}.log"

    def forget(self, proc: subprocess.Popen[Any]) -> None:
        """Drop a process that has been stopped from the state file."""
        self._update(processes=tuple(p for p in self.state().processes if p.pid != proc.pid))

    def stop(self, proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
        """SIGTERM a process `spawn` started, SIGKILL it after `grace` seconds, forget it."""
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.forget(proc)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            teardown(self.name, self.root, self.progress)
        finally:
            for proc in self._popens:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            for log in self._logs:
                log.close()

    def __enter__(self) -> RunningLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait_operational(self, timeout: float = 10.0) -> None:
        """Wait until every lab interface is operationally UP. The kernel applies carrier
        changes from its linkwatch work, batched up to a second apart; until then a veth's
        transmit queue is a no-op, so e.g. the first ARP reply would vanish."""
        deadline = time.monotonic() + timeout
        for host in self.topology.hosts:
            ns = st.ns_name(self.name, host.name)
            names = [e.iface for e in self.topology.endpoints(host.name)]
            names += ["br0"] if host.kind == "switch" else []
            with IPRoute(netns=ns) as ipr:
                while True:
                    states = {
                        link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_OPERSTATE")
                        for link in ipr.get_links()
                    }
                    down = [n for n in names if states.get(n) != "UP"]
                    if not down:
                        break
                    if time.monotonic() >= deadline:
                        raise st.LabError(f"{host.name}: {down} not up after {timeout}s")
                    self.checkpoint()
                    time.sleep(0.02)  # polling link state, bounded by the deadline

    def _configure(self, host: Host) -> None:
        """Per-namespace settings, before any interface exists: sysctls (each namespace
        has its own net.* copy) and the gateway's firewall table."""
        ns = st.ns_name(self.name, host.name)
        sysctls = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        if host.forwarding:
            sysctls.append("net.ipv4.ip_forward=1")
        if host.kind == "switch":  # a switch only switches, even with br_netfilter loaded
            sysctls += [f"net.bridge.bridge-nf-call-{t}=0" for t in ("iptables", "arptables")]
        _ns_run(ns, ["sysctl", "-q", "-e", "-w", *sysctls])
        if host.firewall is not None:
            self.progress(f"firewall on {host.name}: forward policy {host.firewall.forward_policy}")
            _ns_run(ns, ["nft", "-f", "-"], stdin=host.firewall.ruleset())

    # building, called by up()
    def _build(self) -> None:
        topo = self.topology
        for host in topo.hosts:
            name = st.ns_name(self.name, host.name)
            self._update(namespaces=(*self.state().namespaces, name))
            self.checkpoint()
            self.progress(f"namespace {name}")
            netns.create(name)
            with IPRoute(netns=name) as ipr:
                ipr.link("set", index=_index(ipr, "lo"), state="up")
                if host.kind == "switch":
                    ipr.link("add", ifname="br0", kind="bridge")
            self._configure(host)
        for link in topo.links:
            a, b = link.a, link.b
            ns_a, ns_b = st.ns_name(self.name, a.host), st.ns_name(self.name, b.host)
            self.checkpoint()
            self.progress(f"link {a.host}:{a.iface} <-> {b.host}:{b.iface}")
            with IPRoute(netns=ns_a) as ipr:
                ipr.link(
                    "add", ifname=a.iface, kind="veth", peer={"ifname": b.iface, "net_ns_fd": ns_b}
                )
        for host in topo.hosts:
            ns = st.ns_name(self.name, host.name)
            with IPRoute(netns=ns) as ipr:
                bridge = _index(ipr, "br0") if host.kind == "switch" else None
                for end in topo.endpoints(host.name):
                    idx = _index(ipr, end.iface)
                    for addr in end.addresses:
                        ipr.addr(
                            "add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen
                        )
                    if bridge is not None:
                        ipr.link("set", index=idx, master=bridge)
                    ipr.link("set", index=idx, state="up")
                if bridge is not None:
                    ipr.link("set", index=bridge, state="up")
                for route in host.routes:
                    ipr.route("add", dst=str(route.to), gateway=str(route.via))
        self.checkpoint()
        self.progress("waiting for the links to come up")
        self._wait_operational()
        self.checkpoint()


def up(
    topology: Topology,
    name: str,
    *,
    root: Path = st.STATE_ROOT,
    progress: Progress = _quiet,
    checkpoint: Callable[[], None] = _nothing,
    source: str = "",
) -> RunningLab:
    """Build `topology` as lab `name`, owned by the calling process. `checkpoint` is
    called between build steps; whatever it raises aborts the build (torn down)."""
    st.check_lab_name(name)
    with st.locked(root):
        for left in clean_leftovers(root, progress):
            progress(f"cleaned leftover {left.lab}")
        existing = st.read_state(name, root)
        if existing is not None or st.lab_dir(name, root).exists():
            who = existing.owner.pid if existing else "?"
            raise st.LabError(
                f"lab {name} is already running (owner pid {who}); `sipwall lab down {name}`"
            )
        clash = [n for n in our_namespaces() if st.ns_lab(n) == name]
        if clash:
            raise st.LabError(f"namespaces {clash} exist for lab {name}")
        st.lab_dir(name, root).mkdir(parents=True)
        owner = st.ProcRef.of(os.getpid(), name="owner")
        st.write_state(st.LabState(name, topology.name, source, owner, "building"), root)
    lab = RunningLab(topology, name, root, progress)
    lab.checkpoint = checkpoint
    try:
        lab._build()
        lab._update(phase="up")
    except BaseException:
        progress("build failed or interrupted: tearing down")
        lab.close()
        raise
    return lab
