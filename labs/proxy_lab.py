"""A gateway lab with a SIP proxy in the gw namespace and sipp at both ends.

    uac (10.77.0.10) -- gw (10.77.0.1 | 203.0.113.1, the proxy) -- uas (203.0.113.20)

The gw does not forward IP (net.ipv4.ip_forward stays 0 in its namespace), so every SIP
message between the ends goes through the proxy under test; no traffic can leave the lab.
The proxies are Kamailio with the reference edge-proxy config (`labs/kamailio/`) or the
sipwall ALG (stateful or stateless), the peers sipp with the reference scenarios
(`labs/sipp/uac_sdp.xml`, `uas_sdp.xml`: INVITE(SDP) 100 180 200(SDP) ACK pause BYE 200).

Processes are started with `spawn_logged` (output to files, never to a pipe nobody reads:
a full pipe would stall a proxy mid-benchmark) and registered with the `Lab`. On the way
out `proxy_lab` kills, by pid, every process still living in one of its namespaces (a
Kamailio worker whose parent died, a sipp that outlived its wrapper) before the
namespaces themselves go, on success, failure and Ctrl-C/SIGTERM alike.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from labs.netns import Lab, wait_until

REPO = Path(__file__).resolve().parent.parent
SIPP_DIR = REPO / "labs" / "sipp"
KAMAILIO_CFG = REPO / "labs" / "kamailio" / "kamailio.cfg"

UAC_ADDR = "10.77.0.10"
GW_INSIDE = "10.77.0.1"
GW_OUTSIDE = "203.0.113.1"
UAS_ADDR = "203.0.113.20"
SIP_PORT = 5060
SERVICE = "service"  # R-URI sip:service@203.0.113.20:5060, routed by its host
SIPP_BUFFER = 4 * 1024 * 1024  # the reference's -buff_size (64 KiB drops bursts)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProxyLab:
    lab: Lab
    uac: str
    gw: str
    uas: str
    workdir: Path


# -- processes ---------------------------------------------------------------------------


def spawn_logged(lab: Lab, ns: str, argv: Sequence[str], log: Path) -> subprocess.Popen[str]:
    """Start `argv` in `ns` with stdout+stderr appended to `log`; killed with the lab.

    `ip netns exec` execs the command, so the Popen pid is the program's own pid."""
    with open(log, "ab") as out:
        proc: subprocess.Popen[str] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=log.parent,
        )
    lab.processes.append(proc)
    return proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it (Kamailio's main and its forked workers)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            parent_of[int(entry)] = int(fields[1])
    found = [pid] if pid in parent_of else []
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier}
        found.extend(sorted(frontier))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes (/proc/PID/stat), in seconds; gone ones count 0."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / _CLK_TCK


def udp_counters(lab: Lab, ns: str) -> dict[str, int]:
    """The UDP MIB (/proc/net/snmp) of a lab namespace, e.g. RcvbufErrors: datagrams
    dropped because a socket's receive buffer was full."""
    rows = [
        line.split()[1:]
        for line in lab.run(ns, ["cat", "/proc/net/snmp"]).splitlines()
        if line.startswith("Udp:")
    ]
    names, values = rows
    return dict(zip(names, map(int, values), strict=True))


def host_idle_seconds() -> float:
    """CPU seconds all cores have been idle (/proc/stat idle + iowait). Busy time over a
    window is cores x wall - this difference: the idle clock is exact on a tickless
    kernel, where the busy fields are only sampled at ticks."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields[3] + fields[4]) / _CLK_TCK


def netns_pids(ns: str) -> list[int]:
    """pids of the processes whose network namespace is the named one."""
    try:
        target = os.stat(f"/run/netns/{ns}")
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            found.append(int(entry))
    return found


def kill_netns_processes(namespaces: Sequence[str], timeout: float = 5) -> list[int]:
    """SIGTERM, then SIGKILL, every process left in these (lab-owned) namespaces."""
    killed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for ns in namespaces for pid in netns_pids(ns)]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        killed.extend(p for p in pids if p not in killed)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not any(netns_pids(ns) for ns in namespaces), timeout)
    return killed


def listening(lab: Lab, ns: str, addrs: Sequence[str], port: int = SIP_PORT) -> bool:
    out = lab.run(ns, ["ss", "-Hunl"])
    return all(f"{addr}:{port} " in out for addr in addrs)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_listening(
    pl: ProxyLab, proc: subprocess.Popen[str], ns: str, addrs: Sequence[str], log: Path
) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited (rc={proc.returncode}):\n{_tail(log)}")
        return listening(pl.lab, ns, addrs)

    wait_until(ready, timeout=15, interval=0.05, what=f"{addrs} listening in {ns}")


# -- the lab -----------------------------------------------------------------------------


@contextlib.contextmanager
def proxy_lab(prefix: str, workdir: Path) -> Iterator[ProxyLab]:
    """uac -- gw -- uas, namespaces `<prefix>-<pid>-{uac,gw,uas}`; everything removed on exit."""
    with Lab(prefix) as lab:
        try:
            uac, gw, uas = lab.add_host("uac"), lab.add_host("gw"), lab.add_host("uas")
            lab.link(gw, "gw-in", uac, "in0")
            lab.link(gw, "gw-out", uas, "out0")
            lab.address(uac, "in0", f"{UAC_ADDR}/24")
            lab.address(gw, "gw-in", f"{GW_INSIDE}/24")
            lab.address(gw, "gw-out", f"{GW_OUTSIDE}/24")
            lab.address(uas, "out0", f"{UAS_ADDR}/24")
            lab.route(uac, "0.0.0.0/0", GW_INSIDE)
            yield ProxyLab(lab, uac, gw, uas, workdir)
        finally:
            kill_netns_processes(list(lab.namespaces))


# -- proxies -----------------------------------------------------------------------------


@dataclass
class Proxy:
    """A proxy running in the gw namespace: its main pid, log, and how to stop it."""

    name: str
    proc: subprocess.Popen[str]
    log: Path
    main_pid: int

    def pids(self) -> list[int]:
        return descendants(self.main_pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to the main pid (Kamailio's from its pid file), then SIGKILL stragglers."""
        pids = self.pids()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.main_pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:  # workers are ours by construction (descendants of our process)
            if _stat_fields(pid) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_kamailio(pl: ProxyLab, children: int = 2, shm_mb: int = 2048) -> Proxy:
    """Kamailio 5.6 in the foreground with the reference config, as its README runs it."""
    rundir = pl.workdir / "kamailio"
    rundir.mkdir(exist_ok=True)
    pidfile = rundir / "kamailio.pid"
    pidfile.unlink(missing_ok=True)  # a restart must not read the previous run's pid
    log = pl.workdir / "kamailio.log"
    argv = [
        "kamailio",
        "-f",
        str(KAMAILIO_CFG),
        "-P",
        str(pidfile),
        "-Y",
        str(rundir),
        "-n",
        str(children),
        "-x",
        "tlsf",
        "-X",
        "tlsf",
        "-m",
        str(shm_mb),
        "-DD",
        "-E",
    ]
    proc = spawn_logged(pl.lab, pl.gw, argv, log)
    wait_listening(pl, proc, pl.gw, (GW_INSIDE, GW_OUTSIDE), log)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 10)
    main_pid = int(pidfile.read_text().strip())
    if main_pid != proc.pid:
        raise RuntimeError(f"kamailio pid file says {main_pid}, we started {proc.pid}")
    return Proxy("kamailio", proc, log, main_pid)


def sipwall_config(mode: str, workers: int = 1) -> str:
    return f"""\
[inside]
address = "{GW_INSIDE}"
port = {SIP_PORT}
transports = ["udp"]

[outside]
address = "{GW_OUTSIDE}"
port = {SIP_PORT}
transports = ["udp"]

[proxy]
mode = "{mode}"
workers = {workers}
inside_networks = ["10.77.0.0/24"]

[log]
level = "WARNING"
"""


def start_sipwall(pl: ProxyLab, mode: str, workers: int = 1) -> Proxy:
    """`python -m sipwall alg --config alg.toml` in the given mode: one process, or a
    supervisor and its `workers` (stateless only, alg.workers)."""
    name = f"sipwall-{mode}" + (f"-{workers}w" if workers > 1 else "")
    config = pl.workdir / f"alg-{name}.toml"
    config.write_text(sipwall_config(mode, workers))
    log = pl.workdir / f"{name}.log"
    offset = log.stat().st_size if log.exists() else 0  # a restart appends to the log
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
    wait_listening(pl, proc, pl.gw, (GW_INSIDE, GW_OUTSIDE), log)
    return Proxy(name, proc, log, proc.pid)


# -- sipp --------------------------------------------------------------------------------


def sipp_uas_argv(stat_file: Path, recv_timeout_ms: int = 8000) -> list[str]:
    return [
        "sipp",
        "-sf",
        str(SIPP_DIR / "uas_sdp.xml"),
        "-i",
        UAS_ADDR,
        "-p",
        str(SIP_PORT),
        "-t",
        "u1",
        "-buff_size",
        str(SIPP_BUFFER),
        "-recv_timeout",
        str(recv_timeout_ms),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "1",
    ]


def sipp_uac_argv(
    rate: int,
    calls: int,
    stat_file: Path,
    error_file: Path,
    *,
    pause_ms: int = 1000,
    recv_timeout_ms: int = 8000,
    scenario: Path | None = None,
) -> list[str]:
    """The UAC: `calls` calls at `rate` cps through the proxy (-rsa), then it exits.
    `scenario` replaces the reference `uac_sdp.xml` (e.g. `uac_sdp_ports.xml`)."""
    return [
        "sipp",
        f"{UAS_ADDR}:{SIP_PORT}",
        "-sf",
        str(scenario or SIPP_DIR / "uac_sdp.xml"),
        "-s",
        SERVICE,
        "-i",
        UAC_ADDR,
        "-p",
        str(SIP_PORT),
        "-rsa",
        f"{GW_INSIDE}:{SIP_PORT}",
        "-t",
        "u1",
        "-buff_size",
        str(SIPP_BUFFER),
        "-r",
        str(rate),
        "-m",
        str(calls),
        "-d",
        str(pause_ms),
        "-recv_timeout",
        str(recv_timeout_ms),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(error_file),
        "-max_log_size",
        "2000000",
    ]


@dataclass(frozen=True)
class SippStats:
    """Cumulative counters of a sipp run from its -trace_stat CSV (one row per -fd)."""

    rows: list[dict[str, str]]

    @classmethod
    def read(cls, path: Path) -> SippStats:
        try:
            with open(path, newline="", encoding="latin-1") as f:
                rows = list(csv.DictReader(f, delimiter=";"))
        except FileNotFoundError:
            rows = []
        return cls(rows)

    def last(self, column: str) -> int:
        return int(self.rows[-1][column]) if self.rows else 0

    @staticmethod
    def elapsed(row: dict[str, str]) -> float:
        """Seconds since the start: CurrentTime - StartTime, each "date<TAB>time<TAB>epoch"
        (ElapsedTime(C) has whole seconds only)."""
        return float(row["CurrentTime"].split()[-1]) - float(row["StartTime"].split()[-1])

    def time_to_create(self, calls: int) -> float | None:
        """When the `calls`-th call was created, interpolated between stat rows."""
        previous_t, previous_n = 0.0, 0
        for row in self.rows:
            t, n = self.elapsed(row), int(row["OutgoingCall(C)"])
            if n >= calls:
                if n == previous_n:
                    return t
                return previous_t + (t - previous_t) * (calls - previous_n) / (n - previous_n)
            previous_t, previous_n = t, n
        return None
