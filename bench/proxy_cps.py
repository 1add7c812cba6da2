"""Calls per second and CPU per call: the sipwall ALG against Kamailio 5.6, same lab, same run.

Lab (`labs/proxy_lab.py`; namespaces created and removed here, also on failure, Ctrl-C and
SIGTERM; the gw does not route, so every message crosses the proxy):

    uac (10.77.0.10, sipp UAC) -- gw (10.77.0.1 | 203.0.113.1, proxy) -- uas (203.0.113.20)

Proxies, one after the other in the gw namespace:

  kamailio           Kamailio 5.6 with the reference edge-proxy config (labs/kamailio/),
                     `kamailio -n 2 -x tlsf -X tlsf -m 2048 -DD -E -P <pidfile>`
  sipwall-stateful   `python -m sipwall alg` (one process), [proxy] mode = "stateful"
  sipwall-stateless  the same with mode = "stateless"
  sipwall-stateless-2w  stateless with [proxy] workers = 2: a supervisor and two worker
                     processes sharing the UDP ports (alg.workers)
  sipwall-stateful-2w   stateful with [proxy] workers = 2: each worker owns the calls
                     whose Call-ID hashes to it and hands the others over (alg.affinity)

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

    python bench/proxy_cps.py                  # ~15-20 min; LAST line (one process):
                                               #   proxy_cps_stateful_vs_kamailio: <pct> %
                                               # before it the same for stateless, and for
                                               # both with 2 workers (Kamailio runs -n 2)
    python bench/proxy_cps.py --quick --proxies sipwall-stateful   # smoke: 50 cps, 3 s
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from labs import cps_bench, proxy_lab
from labs.cps_bench import BenchStep, Peers, best, log_lines
from labs.proxy_lab import Proxy, ProxyLab

PREFIX = "swc"
PROXIES: dict[str, Callable[[ProxyLab], Proxy]] = {
    "kamailio": proxy_lab.start_kamailio,
    "sipwall-stateful": lambda pl: proxy_lab.start_sipwall(pl, "stateful"),
    "sipwall-stateless": lambda pl: proxy_lab.start_sipwall(pl, "stateless"),
    "sipwall-stateless-2w": lambda pl: proxy_lab.start_sipwall(pl, "stateless", workers=2),
    "sipwall-stateful-2w": lambda pl: proxy_lab.start_sipwall(pl, "stateful", workers=2),
}
LADDER = (100, 200, 400, 800, 1600, 3200, 6400, 12800)
REFINE = 3  # steps between the last pass and the first failure


@dataclass(frozen=True)
class Step(BenchStep):
    """m.cpu = (proxy CPU seconds over the step,)."""

    @property
    def us_per_call(self) -> float:
        return self.m.us_per_call(self.m.cpu[0])

    def row(self) -> str:
        m = self.m
        return (
            f"{m.cells()} {m.cpu[0] / m.wall:>6.2f} {m.sipp_cpu / m.wall:>6.2f} "
            f"{m.host_busy / m.wall:>5.2f} {m.gw_drops:>7} {m.peer_drops:>7} "
            f"{self.us_per_call:>8.0f} {m.log_problems:>6}  {'pass' if self.passed else 'FAIL'}"
        )


HEADER = (
    f"{cps_bench.COLUMNS} {'cores':>6} {'sipp':>6} {'host':>5} {'gwdrop':>7} {'peerdrop':>7} "
    f"{'us/call':>8} {'logerr':>6}  result"
)


def run_step(pl: ProxyLab, proxy: Proxy, uas_pids: list[int], rate: int, seconds: float) -> Step:
    m = cps_bench.measure(
        pl, proxy, uas_pids, rate, seconds, cpu=lambda p: (p.cpu(),), logs=[proxy.log]
    )
    return Step(proxy.name, m)


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
    the failed step's backlog and retransmissions; a passing step is followed by a wait
    until the proxy is idle."""
    peers = Peers(pl, name, PROXIES[name], spawned)

    def step(proxy: Proxy, uas_pid: int, rate: int) -> Step:
        s = run_step(pl, proxy, [uas_pid], rate, seconds)
        if s.passed:
            cps_bench.settle(proxy)
        return s

    steps = cps_bench.run_ladder(
        peers, HEADER, ladder=ladder, refine=0 if quick else REFINE, started=started, step=step
    )
    problems = [line for line in log_lines(peers.logs[0]) if cps_bench.LOG_PROBLEM.search(line)]
    if problems:
        print(f"  {name} log: {len(problems)} warning/error lines, first ones:")
        for line in problems[:5]:
            print(f"    {line[:200]}")
    return steps


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
    for name in ("sipwall-stateless", "sipwall-stateless-2w", "sipwall-stateful-2w"):
        if "kamailio" in results and name in results and kam:
            top = best(results[name])
            pct = 100 * (top.rate if top else 0) / kam.rate
            lines.append(f"proxy_cps_{name.removeprefix('sipwall-').replace('-', '_')}"
                         f"_vs_kamailio: {pct:.1f} %")  # fmt: skip
    if "kamailio" in results and "sipwall-stateful" in results and kam:
        pct = 100 * (sw.rate if sw else 0) / kam.rate
        lines.append(f"proxy_cps_stateful_vs_kamailio: {pct:.1f} %")
    else:
        lines.append("proxy_cps_stateful_vs_kamailio: n/a (needs kamailio and sipwall-stateful)")
    return lines


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
    cps_bench.install_sigterm()
    started = time.monotonic()
    results: dict[str, list[Step]] = {}

    def body(pl: ProxyLab, spawned: list[int]) -> None:
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

    run = cps_bench.run_in_lab(
        PREFIX, seconds, body, tmp_prefix="sipwall-cps-", keep_logs=args.keep_logs
    )
    if run is None:
        return 130
    print(run.removed_line())
    print(f"total {time.monotonic() - started:.0f} s")
    for line in summary(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
