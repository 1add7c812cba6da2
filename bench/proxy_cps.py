"""Calls per second and CPU per call: the sipwall ALG against Kamailio 5.6, same lab, same run.

Lab (`labs/proxy_lab.py`; namespaces created and removed here, also on failure, Ctrl-C and
SIGTERM; the gw does not route, so every message crosses the proxy):

    uac (10.77.0.10, sipp UAC) -- gw (10.77.0.1 | 203.0.113.1, proxy) -- uas (203.0.113.20)

Proxies, one after the other in the gw namespace:

  kamailio           Kamailio 5.6 with the reference edge-proxy config (labs/kamailio/),
                     `kamailio -n 2 -x tlsf -X tlsf -m 2048 -DD -E -P <pidfile>`
  sipwall-stateful   `python -m sipwall alg` (one process), [proxy] mode = "stateful"
  sipwall-stateless  the same with mode = "stateless"

sipwall config: inside 10.77.0.1:5060, outside 203.0.113.1:5060, udp only, inside_networks
10.77.0.0/24, log level WARNING; the R-URI sip:service@203.0.113.20:5060 is routed by its
host (alg/static_router.py). Peers: the reference sipp scenarios (labs/sipp/uac_sdp.xml,
uas_sdp.xml: INVITE(SDP) 100 180 200(SDP) ACK, 1 s pause, BYE 200), `-t u1`,
`-buff_size 4194304`, the UAC sending to the proxy with `-rsa 10.77.0.1:5060`.

Each step places rate x 15 s calls (`sipp -r rate -m calls`) and waits for the UAC to
finish them; a call that gets no expected message for 8 s fails (`-recv_timeout`). Rates
go 100, 200, 400, ... until the first failing step, then up to three steps between the
last pass P and that failure (P x 2^(k/4), k = 1..3) stop at their first failure too.
After a failing step the proxy and the UAS are restarted, so the next step does not
inherit its backlog; a passing step is followed by a wait until the proxy is idle.
Pass (the Kamailio baseline README's criterion): failed calls < 0.1 % and achieved >= 0.97 x
target, where achieved = successful calls / the time sipp took to create them (from its
1 s statistics, interpolated), and the proxy still running. CPU per call = utime + stime of
the proxy's processes (/proc/PID/stat, Kamailio's main and all its workers) over the step,
divided by the step's calls; "cores" is that CPU over the step's wall time. The figure
reported per proxy is the CPU per call at its highest passing rate (near saturation).
utime + stime leave out the softirq time the kernel spends moving the datagrams.

Table columns: achieved cps; calls placed; failed calls (and %); retrans = sipp UAC
retransmissions; unexp = unexpected, dead-call and out-of-call messages at the UAC; cores
= proxy CPU / wall; sipp = UAC + UAS CPU / wall; host = busy cores of the whole machine
(/proc/stat; anything above proxy + sipp is other work sharing the 2 cores); gwdrop and
peerdrop = UDP datagrams dropped on full socket receive buffers (RcvbufErrors) in the gw
namespace and in the uac + uas namespaces; us/call = proxy CPU per call; logerr = new
WARNING/ERROR/Traceback lines in the proxy's output.

    python bench/proxy_cps.py                  # ~8-10 min, stops itself by 15; LAST line:
                                               #   proxy_cps_stateful_vs_kamailio: <pct> %
    python bench/proxy_cps.py --quick --proxies sipwall-stateful   # smoke: 50 cps, 3 s
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from labs import proxy_lab
from labs.netns import wait_until
from labs.proxy_lab import Proxy, ProxyLab, SippStats

PREFIX = "swc"
PROXIES: dict[str, Callable[[ProxyLab], Proxy]] = {
    "kamailio": proxy_lab.start_kamailio,
    "sipwall-stateful": lambda pl: proxy_lab.start_sipwall(pl, "stateful"),
    "sipwall-stateless": lambda pl: proxy_lab.start_sipwall(pl, "stateless"),
}
LADDER = (100, 200, 400, 800, 1600, 3200, 6400, 12800)
REFINE = 3  # steps between the last pass and the first failure
MAX_FAILED = 0.001
MIN_ACHIEVED = 0.97
PAUSE_MS = 1000  # call length (the scenario's <pause/>)
RECV_TIMEOUT_MS = 8000
BUDGET = 13 * 60  # seconds; stepping stops (reported) when the run gets near 15 minutes
LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


@dataclass(frozen=True)
class Step:
    proxy: str
    rate: int
    calls: int
    ok: int
    failed: int
    achieved: float
    retrans: int
    unexpected: int
    dead_msgs: int
    timeouts: int
    wall: float
    cpu: float  # proxy CPU seconds over the step
    sipp_cpu: float  # uac + uas CPU seconds (uac sampled until just before it exits)
    log_problems: int  # new WARNING/ERROR/Traceback lines in the proxy's output
    proxy_alive: bool
    gw_drops: int  # UDP datagrams dropped on full receive buffers in the gw namespace
    peer_drops: int  # ... in the uac and uas namespaces (sipp)
    host_busy: float  # CPU seconds all cores were busy over the step (anyone's work)

    @property
    def failed_ratio(self) -> float:
        return self.failed / self.calls if self.calls else 1.0

    @property
    def passed(self) -> bool:
        return (
            self.proxy_alive
            and self.failed_ratio < MAX_FAILED
            and self.achieved >= MIN_ACHIEVED * self.rate
        )

    @property
    def us_per_call(self) -> float:
        return 1e6 * self.cpu / self.calls if self.calls else 0.0

    def row(self) -> str:
        return (
            f"{self.rate:>6} {self.achieved:>9.1f} {self.calls:>7} {self.failed:>7} "
            f"{100 * self.failed_ratio:>7.2f} {self.retrans:>7} "
            f"{self.unexpected + self.dead_msgs:>6} "
            f"{self.cpu / self.wall:>6.2f} {self.sipp_cpu / self.wall:>6.2f} "
            f"{self.host_busy / self.wall:>5.2f} {self.gw_drops:>7} {self.peer_drops:>7} "
            f"{self.us_per_call:>8.0f} {self.log_problems:>6}  {'pass' if self.passed else 'FAIL'}"
        )


HEADER = (
    f"{'rate':>6} {'achieved':>9} {'calls':>7} {'failed':>7} {'fail%':>7} {'retrans':>7} "
    f"{'unexp':>6} {'cores':>6} {'sipp':>6} {'host':>5} {'gwdrop':>7} {'peerdrop':>7} "
    f"{'us/call':>8} {'logerr':>6}  result"
)


def _log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def drops(pl: ProxyLab, ns: str) -> int:
    return proxy_lab.udp_counters(pl.lab, ns).get("RcvbufErrors", 0)


def settle(proxy: Proxy, idle_cores: float = 0.05, timeout: float = 15) -> None:
    """Wait until the proxy has worked off a backlog (CPU below `idle_cores` for 0.5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proxy.alive():
        c0 = proxy.cpu()
        time.sleep(0.5)
        if proxy.cpu() - c0 <= idle_cores * 0.5:
            return


def run_step(pl: ProxyLab, proxy: Proxy, uas_pids: list[int], rate: int, seconds: float) -> Step:
    calls = max(1, round(rate * seconds))
    tag = f"{proxy.name}-{rate}"
    stat, err, out = (pl.workdir / f"{tag}-uac{ext}" for ext in (".csv", ".err", ".out"))
    argv = proxy_lab.sipp_uac_argv(
        rate, calls, stat, err, pause_ms=PAUSE_MS, recv_timeout_ms=RECV_TIMEOUT_MS
    )
    log_before = len(_log_lines(proxy.log))
    drops0 = {ns: drops(pl, ns) for ns in (pl.gw, pl.uac, pl.uas)}
    idle0 = proxy_lab.host_idle_seconds()
    cpu0, sipp0, t0 = proxy.cpu(), proxy_lab.cpu_seconds(uas_pids), time.monotonic()
    uac = proxy_lab.spawn_logged(pl.lab, pl.uac, argv, out)
    uac_cpu = 0.0
    limit = t0 + seconds + (PAUSE_MS + 2 * RECV_TIMEOUT_MS) / 1000 + 30
    while uac.poll() is None and time.monotonic() < limit:
        uac_cpu = max(uac_cpu, proxy_lab.cpu_seconds([uac.pid]))
        time.sleep(0.2)
    if uac.poll() is None:  # a sipp that never finishes: its unfinished calls count as failed
        uac.kill()
        uac.wait()
    wall = time.monotonic() - t0
    cpu = proxy.cpu() - cpu0
    sipp_cpu = uac_cpu + proxy_lab.cpu_seconds(uas_pids) - sipp0
    host_busy = (os.cpu_count() or 1) * wall - (proxy_lab.host_idle_seconds() - idle0)
    dropped = {ns: drops(pl, ns) - n for ns, n in drops0.items()}
    stats = SippStats.read(stat)
    ok = stats.last("SuccessfulCall(C)")
    created_by = stats.time_to_create(calls)
    achieved = ok / created_by if created_by else 0.0
    problems = [line for line in _log_lines(proxy.log)[log_before:] if LOG_PROBLEM.search(line)]
    return Step(
        proxy=proxy.name,
        rate=rate,
        calls=calls,
        ok=ok,
        failed=calls - ok,
        achieved=achieved,
        retrans=stats.last("Retransmissions(C)"),
        unexpected=stats.last("FailedUnexpectedMessage(C)"),
        dead_msgs=stats.last("DeadCallMsgs(C)") + stats.last("OutOfCallMsgs(C)"),
        timeouts=stats.last("FailedTimeoutOnRecv(C)") + stats.last("FailedMaxUDPRetrans(C)"),
        wall=wall,
        cpu=cpu,
        sipp_cpu=sipp_cpu,
        log_problems=len(problems),
        proxy_alive=proxy.alive(),
        gw_drops=dropped[pl.gw],
        peer_drops=dropped[pl.uac] + dropped[pl.uas],
        host_busy=host_busy,
    )


def rates_after(passed: list[int], failed: int | None, quick: bool) -> list[int]:
    if quick or failed is None or not passed:
        return []
    last = passed[-1]
    between = [round(last * 2 ** (k / 4)) for k in range(1, REFINE + 1)]
    return [r for r in between if last < r < failed]


@dataclass
class Peers:
    """The proxy under test and the sipp UAS, (re)started together."""

    pl: ProxyLab
    name: str
    spawned: list[int]
    proxy: Proxy | None = None
    uas: subprocess.Popen[str] | None = None

    def start(self) -> Proxy:
        out = self.pl.workdir / f"{self.name}-uas.out"
        argv = proxy_lab.sipp_uas_argv(self.pl.workdir / f"{self.name}-uas.csv")
        self.uas = proxy_lab.spawn_logged(self.pl.lab, self.pl.uas, argv, out)
        self.spawned.append(self.uas.pid)
        proxy_lab.wait_listening(self.pl, self.uas, self.pl.uas, [proxy_lab.UAS_ADDR], out)
        self.proxy = PROXIES[self.name](self.pl)
        self.spawned.extend(self.proxy.pids())
        return self.proxy

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            code = self.proxy.proc.returncode
            if code not in (0, -signal.SIGTERM):
                print(f"  {self.name} (pid {self.proxy.main_pid}) exited with {code}", flush=True)
        if self.uas is not None:
            self.uas.terminate()
            try:
                self.uas.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.uas.kill()
                self.uas.wait()
        self.proxy = self.uas = None


def bench_proxy(
    pl: ProxyLab,
    name: str,
    *,
    ladder: tuple[int, ...],
    seconds: float,
    quick: bool,
    started: float,
    spawned: list[int],
) -> list[Step]:
    """Step `name` up the ladder, then between its last pass and first failure. After a
    failing step the proxy and the UAS are restarted, so the next step does not inherit
    the failed step's backlog and retransmissions."""
    peers = Peers(pl, name, spawned)
    steps: list[Step] = []
    try:
        proxy = peers.start()
        print(f"\n== {name} (pid {proxy.main_pid}, processes {len(proxy.pids())}) ==", flush=True)
        print(HEADER, flush=True)

        def step(rate: int) -> bool:
            if time.monotonic() - started > BUDGET:
                print(f"  (time budget reached: {name} not stepped to {rate} cps)", flush=True)
                return False
            if peers.proxy is None or peers.uas is None:
                peers.start()
            assert peers.proxy is not None and peers.uas is not None
            s = run_step(pl, peers.proxy, [peers.uas.pid], rate, seconds)
            steps.append(s)
            print(s.row(), flush=True)
            if not s.passed:
                peers.stop()
            else:
                settle(peers.proxy)
            return s.passed

        passed: list[int] = []
        failed_at: int | None = None
        for rate in ladder:
            if not step(rate):
                failed_at = rate
                break
            passed.append(rate)
        for rate in rates_after(passed, failed_at, quick):
            if not step(rate):
                break
    finally:
        peers.stop()
    problems = [line for line in _log_lines(proxy.log) if LOG_PROBLEM.search(line)]
    if problems:
        print(f"  {name} log: {len(problems)} warning/error lines, first ones:")
        for line in problems[:5]:
            print(f"    {line[:200]}")
    return steps


def best(steps: list[Step]) -> Step | None:
    ok = [s for s in steps if s.passed]
    return max(ok, key=lambda s: s.rate) if ok else None


def summary(results: dict[str, list[Step]]) -> list[str]:
    lines = []
    for name, steps in results.items():
        key = name.replace("-", "_")
        top = best(steps)
        lines.append(f"{key}_max_cps: {top.rate if top else 0}")
        lines.append(
            f"{key}_cpu_us_per_call: {top.us_per_call:.0f}"
            if top
            else f"{key}_cpu_us_per_call: n/a"
        )
    kam, sw = best(results.get("kamailio", [])), best(results.get("sipwall-stateful", []))
    if "kamailio" in results and "sipwall-stateful" in results and kam:
        pct = 100 * (sw.rate if sw else 0) / kam.rate
        lines.append(f"proxy_cps_stateful_vs_kamailio: {pct:.1f} %")
    else:
        lines.append("proxy_cps_stateful_vs_kamailio: n/a (needs kamailio and sipwall-stateful)")
    return lines


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one 50 cps step of 3 s")
    parser.add_argument(
        "--proxies", default=",".join(PROXIES), help=f"comma-separated subset of {list(PROXIES)}"
    )
    parser.add_argument("--step-seconds", type=float, default=None, help="seconds per step")
    parser.add_argument(
        "--rates", help="comma-separated rates to step through instead of the ladder"
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the run's logs and stats here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.proxies.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROXIES]
    if unknown or not names:
        parser.error(f"unknown proxies {unknown}; choose from {list(PROXIES)}")
    for tool in ("sipp", *(["kamailio"] if "kamailio" in names else [])):
        if shutil.which(tool) is None:
            print(f"{tool} not found (Debian packages sip-tester, kamailio)", file=sys.stderr)
            return 2
    ladder: tuple[int, ...] = (50,) if args.quick else LADDER
    if args.rates:
        ladder = tuple(int(r) for r in args.rates.split(","))
    seconds = args.step_seconds or (3.0 if args.quick else 15.0)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    results: dict[str, list[Step]] = {}
    spawned: list[int] = []
    namespaces: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sipwall-cps-") as tmp:
            workdir = Path(tmp)
            try:
                with proxy_lab.proxy_lab(PREFIX, workdir) as pl:
                    namespaces = list(pl.lab.namespaces)
                    print(f"lab: {' '.join(namespaces)}; {seconds:g} s per step", flush=True)
                    for name in names:
                        results[name] = bench_proxy(
                            pl,
                            name,
                            ladder=ladder,
                            seconds=seconds,
                            quick=args.quick,
                            started=started,
                            spawned=spawned,
                        )
                    spawned.extend(p.pid for p in pl.lab.processes)
            finally:
                if args.keep_logs:
                    shutil.copytree(workdir, args.keep_logs, dirs_exist_ok=True)
    except KeyboardInterrupt:
        print("interrupted: lab removed", file=sys.stderr)
        return 130
    wait_until(lambda: not leftovers(namespaces, spawned), timeout=5, what="lab cleanup")
    pids = " ".join(map(str, dict.fromkeys(spawned)))
    print(f"\nlab removed: namespaces {' '.join(namespaces)}; pids {pids}")
    print(f"total {time.monotonic() - started:.0f} s")
    for line in summary(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
