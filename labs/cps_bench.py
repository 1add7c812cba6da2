"""The step-and-measure machinery the calls-per-second benches share.

`bench/proxy_cps.py` (plain proxies) and `bench/alg_cps.py` (media anchoring) both drive
the proxy lab of `labs/proxy_lab.py` the same way:

  * a step places rate x seconds calls with a sipp UAC and waits for it to finish them;
    `measure()` takes what both report of it (sipp's counters, wall and CPU time, UDP
    receive-buffer drops, new WARNING/ERROR lines in the proxy's logs, host load);
  * `Peers` (re)starts the proxy under test together with the sipp UAS, so that a step
    after a failing one does not inherit its backlog and retransmissions;
  * `run_ladder()` steps up a ladder of rates to the first failure, then up to `refine`
    steps between the last pass P and that failure (P x 2^(k/(refine+1)));
  * `run_in_lab()` builds the lab in a scratch directory, removes it on success, failure,
    Ctrl-C and SIGTERM (`install_sigterm()`), and checks that no namespace and none of
    the processes the run started are left.

`Measured` holds a step's figures, the pass criterion and the first table columns
(`COLUMNS`, `Measured.cells()`); the rest of a row, its CPU split and what a bench checks
after a step (alg_cps: settle, what the agent still holds) stay in the bench.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol, TypeVar

from labs import proxy_lab
from labs.anchor_lab import stop_quietly
from labs.netns import wait_until
from labs.proxy_lab import Proxy, ProxyLab, SippStats

# The pass criterion of the Kamailio baseline README: failed calls < 0.1 % and achieved
# >= 0.97 x target.
MAX_FAILED = 0.001
MIN_ACHIEVED = 0.97
PAUSE_MS = 1000  # call length (the scenario's <pause/>)
RECV_TIMEOUT_MS = 8000  # sipp -recv_timeout: a call with no expected message this long fails
BUDGET = 13 * 60  # seconds; stepping stops (reported) when a run gets near 15 minutes
LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


def log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def rcvbuf_drops(pl: ProxyLab, ns: str) -> int:
    """UDP datagrams dropped on full socket receive buffers in `ns` so far."""
    return proxy_lab.udp_counters(pl.lab, ns).get("RcvbufErrors", 0)


def settle(proxy: Proxy, idle_cores: float = 0.05, timeout: float = 15) -> None:
    """Until the proxy (and agent) worked off a backlog: CPU below `idle_cores` for 0.5 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proxy.alive():
        c0 = proxy.cpu()
        time.sleep(0.5)
        if proxy.cpu() - c0 <= idle_cores * 0.5:
            return


def run_uac(
    pl: ProxyLab, tag: str, rate: int, calls: int, *, scenario: Path | None = None
) -> tuple[SippStats, float, float]:
    """One sipp UAC run; (its stats, wall seconds, its CPU seconds)."""
    stat, err, out = (pl.workdir / f"{tag}-uac{ext}" for ext in (".csv", ".err", ".out"))
    argv = proxy_lab.sipp_uac_argv(
        rate,
        calls,
        stat,
        err,
        pause_ms=PAUSE_MS,
        recv_timeout_ms=RECV_TIMEOUT_MS,
        scenario=scenario,
    )
    t0 = time.monotonic()
    uac = proxy_lab.spawn_logged(pl.lab, pl.uac, argv, out)
    uac_cpu = 0.0
    limit = t0 + calls / rate + (PAUSE_MS + 2 * RECV_TIMEOUT_MS) / 1000 + 30
    while uac.poll() is None and time.monotonic() < limit:
        uac_cpu = max(uac_cpu, proxy_lab.cpu_seconds([uac.pid]))  # sampled until it exits
        time.sleep(0.2)
    if uac.poll() is None:  # a sipp that never finishes: its unfinished calls count as failed
        uac.kill()
        uac.wait()
    return SippStats.read(stat), time.monotonic() - t0, uac_cpu


@dataclass(frozen=True)
class Measured:
    """What both benches take of one step; `cpu` is the delta of the bench's CPU split
    (e.g. (proxy,) or (ALG, agent)) over the step."""

    rate: int
    calls: int
    ok: int
    achieved: float  # successful calls / the time sipp took to create them
    stats: SippStats
    wall: float
    cpu: tuple[float, ...]
    sipp_cpu: float  # uac + uas CPU seconds (uac sampled until just before it exits)
    host_busy: float  # CPU seconds all cores were busy over the step (anyone's work)
    gw_drops: int  # UDP datagrams dropped on full receive buffers in the gw namespace
    peer_drops: int  # ... in the uac and uas namespaces (sipp)
    log_problems: int  # new WARNING/ERROR/Traceback lines in the proxy's logs
    alive: bool

    @property
    def failed(self) -> int:
        return self.calls - self.ok

    @property
    def failed_ratio(self) -> float:
        return self.failed / self.calls if self.calls else 1.0

    @property
    def passed(self) -> bool:
        return (
            self.alive
            and self.failed_ratio < MAX_FAILED
            and self.achieved >= MIN_ACHIEVED * self.rate
        )

    @property
    def retrans(self) -> int:
        return self.stats.last("Retransmissions(C)")

    @property
    def unexpected(self) -> int:
        """Unexpected, dead-call and out-of-call messages at the UAC."""
        return (
            self.stats.last("FailedUnexpectedMessage(C)")
            + self.stats.last("DeadCallMsgs(C)")
            + self.stats.last("OutOfCallMsgs(C)")
        )

    def us_per_call(self, cpu: float) -> float:
        return 1e6 * cpu / self.calls if self.calls else 0.0

    def cells(self) -> str:
        """The first columns of a table row, under `COLUMNS`."""
        return (
            f"{self.rate:>6} {self.achieved:>9.1f} {self.calls:>7} {self.failed:>7} "
            f"{100 * self.failed_ratio:>7.2f} {self.retrans:>7} {self.unexpected:>6}"
        )


COLUMNS = (
    f"{'rate':>6} {'achieved':>9} {'calls':>7} {'failed':>7} {'fail%':>7} {'retrans':>7} "
    f"{'unexp':>6}"
)


@dataclass(frozen=True)
class BenchStep:
    """One step as a bench reports it (its subclass adds the table row)."""

    proxy: str
    m: Measured

    @property
    def rate(self) -> int:
        return self.m.rate

    @property
    def passed(self) -> bool:
        return self.m.passed


def measure(
    pl: ProxyLab,
    proxy: Proxy,
    uas_pids: list[int],
    rate: int,
    seconds: float,
    *,
    cpu: Callable[[Proxy], tuple[float, ...]],
    logs: Sequence[Path],
    scenario: Path | None = None,
) -> Measured:
    calls = max(1, round(rate * seconds))
    since = {log: len(log_lines(log)) for log in logs}
    drops0 = {ns: rcvbuf_drops(pl, ns) for ns in (pl.gw, pl.uac, pl.uas)}
    idle0 = proxy_lab.host_idle_seconds()
    cpu0, uas0 = cpu(proxy), proxy_lab.cpu_seconds(uas_pids)
    stats, wall, uac_cpu = run_uac(pl, f"{proxy.name}-{rate}", rate, calls, scenario=scenario)
    cpu1 = cpu(proxy)
    dropped = {ns: rcvbuf_drops(pl, ns) - n for ns, n in drops0.items()}
    created_by = stats.time_to_create(calls)
    ok = stats.last("SuccessfulCall(C)")
    problems = [
        line for log in logs for line in log_lines(log)[since[log] :] if LOG_PROBLEM.search(line)
    ]
    return Measured(
        rate=rate,
        calls=calls,
        ok=ok,
        achieved=ok / created_by if created_by else 0.0,
        stats=stats,
        wall=wall,
        cpu=tuple(b - a for a, b in zip(cpu0, cpu1, strict=True)),
        sipp_cpu=uac_cpu + proxy_lab.cpu_seconds(uas_pids) - uas0,
        host_busy=(os.cpu_count() or 1) * wall - (proxy_lab.host_idle_seconds() - idle0),
        gw_drops=dropped[pl.gw],
        peer_drops=dropped[pl.uac] + dropped[pl.uas],
        log_problems=len(problems),
        alive=proxy.alive(),
    )


# -- the proxy under test and the ladder -------------------------------------------------


@dataclass
class Peers:
    """The proxy under test (with its agent, if any) and the sipp UAS, (re)started
    together. `logs` gathers the logs of every proxy started (`logs_of`)."""

    pl: ProxyLab
    name: str
    start_proxy: Callable[[ProxyLab], Proxy]
    spawned: list[int]
    logs_of: Callable[[Proxy], list[Path]] = lambda proxy: [proxy.log]
    proxy: Proxy | None = None
    uas: subprocess.Popen[str] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> Proxy:
        out = self.pl.workdir / f"{self.name}-uas.out"
        argv = proxy_lab.sipp_uas_argv(self.pl.workdir / f"{self.name}-uas.csv")
        self.uas = proxy_lab.spawn_logged(self.pl.lab, self.pl.uas, argv, out)
        self.spawned.append(self.uas.pid)
        proxy_lab.wait_listening(self.pl, self.uas, self.pl.uas, [proxy_lab.UAS_ADDR], out)
        self.proxy = self.start_proxy(self.pl)
        self.spawned.extend(self.proxy.pids())
        self.logs.extend(p for p in self.logs_of(self.proxy) if p not in self.logs)
        return self.proxy

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            code = self.proxy.proc.returncode
            if code not in (0, -signal.SIGTERM):
                print(f"  {self.name} (pid {self.proxy.main_pid}) exited with {code}", flush=True)
        if self.uas is not None:
            stop_quietly(self.uas)
        self.proxy = self.uas = None


class StepLike(Protocol):
    @property
    def rate(self) -> int: ...

    @property
    def passed(self) -> bool: ...

    def row(self) -> str: ...


S = TypeVar("S", bound=StepLike)


def refine_rates(passed: Sequence[int], failed_at: int | None, refine: int) -> list[int]:
    """Up to `refine` rates between the last pass P and the first failure:
    P x 2^(k/(refine+1)), k = 1..refine."""
    if failed_at is None or not passed or refine <= 0:
        return []
    last = passed[-1]
    between = [round(last * 2 ** (k / (refine + 1))) for k in range(1, refine + 1)]
    return [r for r in between if last < r < failed_at]


def run_ladder(
    peers: Peers,
    header: str,
    *,
    ladder: Sequence[int],
    refine: int,
    started: float,
    step: Callable[[Proxy, int, int], S],
) -> list[S]:
    """Step `peers` up the ladder, then between its last pass and first failure; `step`
    (proxy, UAS pid, rate) runs and settles one step. After a failing step the proxy and
    the UAS are stopped, and started afresh for the next one."""
    steps: list[S] = []
    try:
        proxy = peers.start()
        print(
            f"\n== {peers.name} (pid {proxy.main_pid}, processes {len(proxy.pids())}) ==",
            flush=True,
        )
        print(header, flush=True)

        def one(rate: int) -> bool:
            if time.monotonic() - started > BUDGET:
                print(
                    f"  (time budget reached: {peers.name} not stepped to {rate} cps)", flush=True
                )
                return False
            if peers.proxy is None or peers.uas is None:
                peers.start()
            assert peers.proxy is not None and peers.uas is not None
            s = step(peers.proxy, peers.uas.pid, rate)
            steps.append(s)
            print(s.row(), flush=True)
            if not s.passed:
                peers.stop()
            return s.passed

        passed: list[int] = []
        failed_at: int | None = None
        for rate in ladder:
            if not one(rate):
                failed_at = rate
                break
            passed.append(rate)
        for rate in refine_rates(passed, failed_at, refine):
            if not one(rate):
                break
    finally:
        peers.stop()
    return steps


def best(steps: Sequence[S]) -> S | None:
    ok = [s for s in steps if s.passed]
    return max(ok, key=lambda s: s.rate) if ok else None


# -- the run -----------------------------------------------------------------------------


def leftovers(namespaces: list[str], pids: list[int]) -> list[str]:
    present = set(
        subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    found = [f"namespace {ns}" for ns in namespaces if ns in present]
    found += [f"pid {pid}" for pid in pids if os.path.exists(f"/proc/{pid}")]
    return found


_MAIN_PID = os.getpid()


def _terminate(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:  # a helper pyroute2 forked: die the default way
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt  # unwinds through the lab's cleanup like Ctrl-C


def install_sigterm() -> None:
    signal.signal(signal.SIGTERM, _terminate)


@dataclass(frozen=True)
class LabRun:
    namespaces: list[str]
    spawned: list[int]

    def removed_line(self) -> str:
        pids = " ".join(map(str, dict.fromkeys(self.spawned)))
        return f"\nlab removed: namespaces {' '.join(self.namespaces)}; pids {pids}"


def run_in_lab(
    prefix: str,
    seconds: float,
    body: Callable[[ProxyLab, list[int]], None],
    *,
    tmp_prefix: str,
    keep_logs: str | None,
) -> LabRun | None:
    """`body(lab, spawned)` in a fresh proxy lab (`spawned` gathers the pids it starts);
    None if interrupted (Ctrl-C, SIGTERM), once the lab is removed."""
    spawned: list[int] = []
    namespaces: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix=tmp_prefix) as tmp:
            workdir = Path(tmp)
            try:
                with proxy_lab.proxy_lab(prefix, workdir) as pl:
                    namespaces = list(pl.lab.namespaces)
                    print(f"lab: {' '.join(namespaces)}; {seconds:g} s per step", flush=True)
                    body(pl, spawned)
                    spawned.extend(p.pid for p in pl.lab.processes)
            finally:
                if keep_logs:
                    shutil.copytree(workdir, keep_logs, dirs_exist_ok=True)
    except KeyboardInterrupt:
        print("interrupted: lab removed", file=sys.stderr)
        return None
    wait_until(lambda: not leftovers(namespaces, spawned), timeout=5, what="lab cleanup")
    return LabRun(namespaces, spawned)
