"""Calls per second with media anchoring, beside Kamailio, and the setup delay anchoring adds.

Lab (`labs/proxy_lab.py` + `labs/anchor_lab.py`; namespaces created and removed here, also
on failure, Ctrl-C and SIGTERM; the gw does not route, so every message crosses the proxy):

    uac (10.77.0.10, sipp UAC) -- gw (10.77.0.1 | 203.0.113.1, proxy [+ agent]) -- uas

Proxies in the gw namespace, one after the other:

  kamailio           Kamailio 5.6, the reference edge-proxy config (labs/kamailio/), a plain
                     proxy: no media handling at all
  sipwall-anchored   `python -m sipwall alg` (stateful) with `[media] enabled = true` and the
                     real filter agent (`python -m sipwall agent`, FCP over mTLS on
                     127.0.0.1:7700, pool 203.0.113.1:20000-59999, port quarantine 120 s,
                     its nftables table in the gw): every call reserves a public binding
                     when its offer crosses, enables the pinholes (DNAT in, SNAT out) when
                     the answer crosses, and releases them at BYE
  sipwall-plain      the same ALG and config without [media] (only for the setup delay)

Peers: sipp with `labs/sipp/uac_sdp_ports.xml` (the reference uac_sdp.xml offering a media
port of its own per call, `[auto_media_port]`: one inside endpoint maps into one call at
a time) and `uas_sdp.xml`; `-t u1`, `-buff_size 4194304`, 1 s calls, 8 s recv timeout.
Every proxy gets the same scenario.

1. Calls/sec. Each step places rate x seconds calls and waits for the UAC to finish them;
   pass = failed calls < 0.1 %, achieved >= 0.97 x target, proxy (and agent) alive.
   sipwall-anchored steps 25, 50, 100, 200, ... to its first failure, then up to three
   steps between the last pass and it (P x 2^(k/4)); proxy, agent and UAS are restarted
   after a failing step. Between steps the run waits until ALG and agent are idle and the
   agent holds nothing (`held` = bindings + rules still held then). Kamailio (its maximum
   is sipp-bound, several thousand cps) steps 1000, 2000, 4000, 8000 to its first failure
   plus one step between; `--kamailio-cps N` takes N instead of measuring it.
   CPU per call = utime + stime of the ALG and the agent (with its counter worker) over
   the step / calls, from /proc; the figure reported is the one at the highest pass.
2. Setup delay. sipwall-plain and sipwall-anchored alternately (`--pdd-rounds`) at the
   same moderate rate (`--pdd-rate`, default 25 cps), with dumpcap (kernel timestamps) on
   the UAC's interface and on both gw interfaces. Per call (matched by the caller's From
   tag, which the ALG keeps): INVITE->180 (post-dial delay) and INVITE->200 at the UAC,
   and the time each message spent inside the gw (in on one interface, out on the other):
   INVITE (held for the reservation), 180, 200 (held for the enable). The anchoring cost
   is anchored minus plain, percentile by percentile (the runs are not paired call by
   call): anchoring_pdd_* on INVITE->180, anchoring_answer_* on INVITE->200.
   `--fcp-breakdown` also captures the FCP connection on the gw's loopback (anchored runs
   only, so it is off for the headline) and splits the anchored INVITE's time in the gw
   at its Reserve: INVITE in -> Reserve sent (the ALG), -> its answer back (gRPC, TLS and
   the agent), -> INVITE out (the ALG).

Table columns: achieved cps; calls placed; failed calls (and %); retrans = sipp UAC
retransmissions; unexp = unexpected/dead-call/out-of-call messages at the UAC; alg and
agent = cores (CPU / wall) of the ALG (Kamailio: all its processes) and of the agent;
sipp = UAC + UAS cores; host = busy cores of the whole machine (other engineers' work
included); gwdrop / peerdrop = UDP RcvbufErrors in the gw / in the uac + uas namespaces;
us/call = (ALG + agent) CPU per call, agt_us = the agent's share; held = what the agent
still held after the step settled (failed steps included: a call the ALG gave up on
keeps its binding until it expires); logerr = new WARNING/ERROR/Traceback lines in the ALG's
and the agent's logs.

    python bench/alg_cps.py                     # ~8-10 min; LAST line:
                                                #   alg_cps_anchored_vs_kamailio: <pct> %
    python bench/alg_cps.py --kamailio-cps 4000 # skip Kamailio's steps
    python bench/alg_cps.py --quick             # smoke: 20 cps for 3 s, tiny delay run
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from labs import anchor_lab, cps_bench, proxy_lab
from labs.anchor_lab import AnchoredProxy
from labs.cps_bench import LOG_PROBLEM, BenchStep, Peers, best, log_lines, settle
from labs.proxy_lab import Proxy, ProxyLab

PREFIX = "swa"
SCENARIO = proxy_lab.SIPP_DIR / "uac_sdp_ports.xml"
ANCHORED_LADDER = (25, 50, 100, 200, 400, 800, 1600)
KAMAILIO_LADDER = (1000, 2000, 4000, 8000)
REFINE = 3
QUARANTINE = 120.0  # the agent's default


# -- one step ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step(BenchStep):
    """m.cpu = (ALG or Kamailio CPU seconds, agent CPU seconds) over the step; held =
    bindings + rules the agent still held once the step settled."""

    held: int | None = None

    @property
    def us_per_call(self) -> float:
        return self.m.us_per_call(sum(self.m.cpu))

    @property
    def agent_us_per_call(self) -> float:
        return self.m.us_per_call(self.m.cpu[1])

    def row(self) -> str:
        m = self.m
        held = "-" if self.held is None else str(self.held)
        return (
            f"{m.cells()} {m.cpu[0] / m.wall:>5.2f} {m.cpu[1] / m.wall:>6.2f} "
            f"{m.sipp_cpu / m.wall:>5.2f} {m.host_busy / m.wall:>5.2f} "
            f"{m.gw_drops:>7} {m.peer_drops:>8} {self.us_per_call:>8.0f} "
            f"{self.agent_us_per_call:>7.0f} {held:>5} {m.log_problems:>6}  "
            f"{'pass' if self.passed else 'FAIL'}"
        )


HEADER = (
    f"{cps_bench.COLUMNS} {'alg':>5} {'agent':>6} {'sipp':>5} {'host':>5} {'gwdrop':>7} "
    f"{'peerdrop':>8} {'us/call':>8} {'agt_us':>7} {'held':>5} {'logerr':>6}  result"
)


def _logs(proxy: Proxy) -> list[Path]:
    logs = [proxy.log]
    if isinstance(proxy, AnchoredProxy) and proxy.agent is not None:
        logs.append(proxy.agent.log)
    return logs


def _split_cpu(proxy: Proxy) -> tuple[float, float]:
    """(ALG or Kamailio CPU seconds, agent CPU seconds) so far."""
    if isinstance(proxy, AnchoredProxy):
        agent = proxy.agent.cpu() if proxy.agent is not None else 0.0
        return proxy_lab.cpu_seconds(proxy.alg_pids()), agent
    return proxy.cpu(), 0.0


def run_step(pl: ProxyLab, proxy: Proxy, uas_pids: list[int], rate: int, seconds: float) -> Step:
    m = cps_bench.measure(
        pl, proxy, uas_pids, rate, seconds, cpu=_split_cpu, logs=_logs(proxy), scenario=SCENARIO
    )
    return Step(proxy.name, m)


def held_after(pl: ProxyLab, proxy: Proxy, timeout: float = 10) -> int | None:
    """Bindings + rules the agent still holds once the calls are over (waits up to
    `timeout` for the releases to land); None without an agent or if it does not answer."""
    if not isinstance(proxy, AnchoredProxy) or proxy.agent is None or not proxy.agent.alive():
        return None
    deadline = time.monotonic() + timeout
    held = -1
    while time.monotonic() < deadline:
        try:
            held = sum(anchor_lab.holdings(pl).values())
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return None
        if held == 0:
            break
        time.sleep(0.5)
    return held


# -- the proxies -------------------------------------------------------------------------


def _starter(name: str, quarantine: float) -> Callable[[ProxyLab], Proxy]:
    if name == "kamailio":
        return proxy_lab.start_kamailio
    media = name == "sipwall-anchored"

    def start(pl: ProxyLab) -> Proxy:
        return anchor_lab.start_anchored_sipwall(pl, media=media, quarantine=quarantine)

    return start


@dataclass
class Leftover:
    bindings: int | None = None
    rules: int | None = None
    nft_elements: int | None = None


def bench_proxy(
    pl: ProxyLab,
    name: str,
    *,
    ladder: Sequence[int],
    refine: int,
    seconds: float,
    started: float,
    spawned: list[int],
    quarantine: float,
    leftover: Leftover | None = None,
) -> list[Step]:
    peers = Peers(pl, name, _starter(name, quarantine), spawned, logs_of=_logs)

    def step(proxy: Proxy, uas_pid: int, rate: int) -> Step:
        s = run_step(pl, proxy, [uas_pid], rate, seconds)
        settle(proxy)
        s = replace(s, held=held_after(pl, proxy))
        if leftover is not None and s.held is not None:  # what the last step left
            hold = anchor_lab.holdings(pl)
            leftover.bindings, leftover.rules = hold["bindings"], hold["rules"]
            leftover.nft_elements = anchor_lab.table_elements(pl)
        return s

    steps = cps_bench.run_ladder(
        peers, HEADER, ladder=ladder, refine=refine, started=started, step=step
    )
    report_log_problems(name, peers.logs)
    return steps


_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+\s+")


def report_log_problems(name: str, logs: list[Path], top: int = 8) -> None:
    """The distinct WARNING/ERROR lines of the logs (timestamps and numbers dropped), most
    frequent first, and the last line of each distinct traceback (the exception)."""
    counts: Counter[str] = Counter()
    total = 0
    for log in logs:
        lines = log_lines(log)
        for i, line in enumerate(lines):
            if not LOG_PROBLEM.search(line):
                continue
            total += 1
            if line.startswith("Traceback"):
                j = i + 1
                while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j]):
                    j += 1
                last = lines[j] if j < len(lines) else "?"
                counts[f"{log.name}: Traceback ... {last[:100]}"] += 1
            else:
                text = re.sub(r"\d+", "N", _STAMP.sub("", line))[:130]
                counts[f"{log.name}: {text}"] += 1
    if counts:
        print(
            f"  {name} logs: {total} warning/error/traceback lines; distinct, most frequent first:"
        )
        for text, n in counts.most_common(top):
            print(f"    {n:>6} x {text}")


# -- setup delay -------------------------------------------------------------------------


@dataclass
class Delays:
    """Per-call milliseconds of one proxy's delay runs."""

    pdd: list[float] = field(default_factory=list)  # INVITE -> 180 at the UAC
    answer: list[float] = field(default_factory=list)  # INVITE -> 200 at the UAC
    gw_invite: list[float] = field(default_factory=list)  # INVITE in gw-in -> out gw-out
    gw_180: list[float] = field(default_factory=list)
    gw_200: list[float] = field(default_factory=list)
    uas: list[float] = field(default_factory=list)  # INVITE out gw-out -> 200 in gw-out
    # --fcp-breakdown, anchored: the INVITE's time in the gw split at the FCP Reserve
    fcp_pre: list[float] = field(default_factory=list)  # INVITE in -> Reserve sent
    fcp_rpc: list[float] = field(default_factory=list)  # Reserve sent -> answer back
    fcp_post: list[float] = field(default_factory=list)  # answer back -> INVITE out
    calls: int = 0
    failed: int = 0
    alg_cpu: float = 0.0
    agent_cpu: float = 0.0

    def series(self) -> dict[str, list[float]]:
        return {
            "INVITE->180 at UAC (PDD)": self.pdd,
            "INVITE->200 at UAC": self.answer,
            "INVITE inside gw": self.gw_invite,
            "180 inside gw": self.gw_180,
            "200 inside gw": self.gw_200,
            "UAS (gw-out INVITE->200)": self.uas,
            "INVITE in->Reserve out": self.fcp_pre,
            "Reserve->answer (agent)": self.fcp_rpc,
            "answer->INVITE out": self.fcp_post,
        }


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


Times = dict[tuple[str, str], float]


def _gaps(a: Times, ea: str, b: Times, eb: str) -> list[float]:
    """Milliseconds from event `ea` in `a` to event `eb` in `b`, call by call (From tag)."""
    return [1000 * (b[(tag, eb)] - t) for (tag, e), t in a.items() if e == ea and (tag, eb) in b]


# an FCP message of the Reserve or its answer, not an HTTP/2 WINDOW_UPDATE or PING (a
# 13-17 byte frame in a TLS record of ~40 bytes)
FCP_MESSAGE_BYTES = 80


def fcp_split(
    gw_in: Times, gw_out: Times, segments: list[anchor_lab.TcpSegment]
) -> tuple[list[float], list[float], list[float]]:
    """Milliseconds of each anchored INVITE in the gw, split at its Reserve: INVITE in ->
    the first FCP message to the agent; -> the last one back before the INVITE leaves;
    -> the INVITE out. Calls come 40 ms apart and the Reserve is the only operation an
    INVITE waits for, so these are its request and answer (TLS hides the content)."""
    port = anchor_lab.AGENT_PORT
    big = [s for s in segments if s.length >= FCP_MESSAGE_BYTES]
    to_agent = sorted(s.t for s in big if s.dport == port)
    from_agent = sorted(s.t for s in big if s.sport == port)
    pre: list[float] = []
    rpc: list[float] = []
    post: list[float] = []
    for (tag, event), t_in in gw_in.items():
        t_out = gw_out.get((tag, "INVITE"))
        if event != "INVITE" or t_out is None:
            continue
        i = bisect.bisect_left(to_agent, t_in)  # the first message after it arrived
        if i == len(to_agent) or to_agent[i] > t_out:
            continue
        sent = to_agent[i]
        j = bisect.bisect_right(from_agent, t_out) - 1  # the last one back before it left
        if j < 0 or from_agent[j] < sent:
            continue
        back = from_agent[j]
        pre.append(1000 * (sent - t_in))
        rpc.append(1000 * (back - sent))
        post.append(1000 * (t_out - back))
    return pre, rpc, post


def delay_run(
    pl: ProxyLab,
    name: str,
    *,
    rate: int,
    seconds: float,
    spawned: list[int],
    into: Delays,
    rnd: int,
    fcp: bool = False,
) -> None:
    peers = Peers(pl, name, _starter(name, QUARANTINE), spawned, logs_of=_logs)
    caps: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        tag = f"pdd-{name}-{rnd}"
        # the captures first: dumpcap says "Capturing on" a little before it really
        # captures (a run lost the first call on gw-out, 50 ms after that line), so they
        # get the peers' whole start-up to become live
        caps = [
            anchor_lab.start_capture(pl, pl.uac, "in0", tag),
            anchor_lab.start_capture(pl, pl.gw, "gw-in", tag),
            anchor_lab.start_capture(pl, pl.gw, "gw-out", tag),
        ]
        if fcp and "anchored" in name:  # the FCP connection, on the gw's loopback
            port = anchor_lab.AGENT_PORT
            caps.append(anchor_lab.start_capture(pl, pl.gw, "lo", tag, f"tcp port {port}"))
        spawned.extend(proc.pid for proc, _ in caps)
        proxy = peers.start()
        calls = max(1, round(rate * seconds))
        alg0, agent0 = _split_cpu(proxy)
        stats, _, _ = cps_bench.run_uac(pl, f"{tag}", rate, calls, scenario=SCENARIO)
        alg1, agent1 = _split_cpu(proxy)
        into.calls += calls
        into.failed += calls - stats.last("SuccessfulCall(C)")
        into.alg_cpu += alg1 - alg0
        into.agent_cpu += agent1 - agent0
        settle(proxy)
    finally:
        for proc, _ in caps:
            anchor_lab.stop_quietly(proc)
        peers.stop()
    uac = anchor_lab.first_times(anchor_lab.read_pcap(caps[0][1]))
    gw_in = anchor_lab.first_times(anchor_lab.read_pcap(caps[1][1]))
    gw_out = anchor_lab.first_times(anchor_lab.read_pcap(caps[2][1]))
    into.pdd += _gaps(uac, "INVITE", uac, "180")
    into.answer += _gaps(uac, "INVITE", uac, "200")
    into.gw_invite += _gaps(gw_in, "INVITE", gw_out, "INVITE")
    into.gw_180 += _gaps(gw_out, "180", gw_in, "180")
    into.gw_200 += _gaps(gw_out, "200", gw_in, "200")
    into.uas += _gaps(gw_out, "INVITE", gw_out, "200")
    if len(caps) > 3:
        pre, rpc, post = fcp_split(gw_in, gw_out, anchor_lab.read_tcp_segments(caps[3][1]))
        into.fcp_pre += pre
        into.fcp_rpc += rpc
        into.fcp_post += post


def delay_report(results: dict[str, Delays]) -> list[str]:
    lines = [
        f"{'':<26} {'mode':<9} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    ]
    for label in Delays().series():
        for mode, d in results.items():
            v = d.series()[label]
            if not v and label.startswith(("INVITE in->", "Reserve->", "answer->")):
                continue  # the FCP split: anchored runs with --fcp-breakdown only
            lines.append(
                f"{label:<26} {mode:<9} {len(v):>6} {pct(v, 50):>8.3f} {pct(v, 90):>8.3f} "
                f"{pct(v, 99):>8.3f} {max(v, default=float('nan')):>8.3f}"
            )
    for mode, d in results.items():
        us = 1e6 / d.calls if d.calls else 0.0
        lines.append(
            f"{mode}: {d.calls} calls, {d.failed} failed; CPU per call: ALG "
            f"{d.alg_cpu * us:.0f} us, agent {d.agent_cpu * us:.0f} us"
        )
    return lines


# -- the run -----------------------------------------------------------------------------


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke: 20 cps for 3 s, no Kamailio")
    parser.add_argument("--kamailio-cps", type=int, help="Kamailio's max cps, known: not measured")
    parser.add_argument("--rates", help="comma-separated anchored rates instead of the ladder")
    parser.add_argument("--kamailio-rates", help="comma-separated Kamailio rates")
    parser.add_argument("--step-seconds", type=float, help="seconds per step (default 10)")
    parser.add_argument("--pdd-rate", type=int, default=25, help="cps of the delay runs")
    parser.add_argument("--pdd-seconds", type=float, default=20, help="seconds per delay run")
    parser.add_argument("--pdd-rounds", type=int, default=2, help="plain/anchored alternations")
    parser.add_argument(
        "--quarantine", type=float, default=QUARANTINE, help="agent port quarantine"
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the run's logs, stats, pcaps here")
    parser.add_argument(
        "--fcp-breakdown",
        action="store_true",
        help="capture the FCP connection too, and split the anchored INVITE at its Reserve "
        "(one capture more in the anchored runs only: off for the headline)",
    )
    args = parser.parse_args(argv)
    for tool in ("sipp", "dumpcap", *(["kamailio"] if args.kamailio_cps is None else [])):
        if shutil.which(tool) is None and not (tool == "kamailio" and args.quick):
            print(f"{tool} not found (Debian: sip-tester, kamailio, wireshark-common)")
            return 2
    seconds = args.step_seconds or (3.0 if args.quick else 10.0)
    ladder: tuple[int, ...] = (20,) if args.quick else ANCHORED_LADDER
    if args.rates:
        ladder = tuple(int(r) for r in args.rates.split(","))
    kam_ladder: tuple[int, ...] = KAMAILIO_LADDER
    if args.kamailio_rates:
        kam_ladder = tuple(int(r) for r in args.kamailio_rates.split(","))
    pdd_rate, pdd_seconds, rounds = args.pdd_rate, args.pdd_seconds, args.pdd_rounds
    if args.quick:
        pdd_rate, pdd_seconds, rounds = 20, 2.0, 1
    run_kamailio = args.kamailio_cps is None and not args.quick
    cps_bench.install_sigterm()
    started = time.monotonic()
    results: dict[str, list[Step]] = {}
    delays = {"plain": Delays(), "anchored": Delays()}
    left = Leftover()
    print(f"load average at start: {_load()} ({os.cpu_count()} cores)", flush=True)

    def body(pl: ProxyLab, spawned: list[int]) -> None:
        results["sipwall-anchored"] = bench_proxy(
            pl,
            "sipwall-anchored",
            ladder=ladder,
            refine=0 if args.quick else REFINE,
            seconds=seconds,
            started=started,
            spawned=spawned,
            quarantine=args.quarantine,
            leftover=left,
        )
        if run_kamailio:
            results["kamailio"] = bench_proxy(
                pl,
                "kamailio",
                ladder=kam_ladder,
                refine=1,
                seconds=seconds,
                started=started,
                spawned=spawned,
                quarantine=args.quarantine,
            )
        print(
            f"\n== setup delay: {pdd_rate} cps x {pdd_seconds:g} s, "
            f"{rounds} round(s) of plain then anchored; load {_load()} ==",
            flush=True,
        )
        for rnd in range(rounds):
            for mode in ("plain", "anchored"):
                delay_run(
                    pl,
                    f"sipwall-{mode}",
                    rate=pdd_rate,
                    seconds=pdd_seconds,
                    spawned=spawned,
                    into=delays[mode],
                    rnd=rnd,
                    fcp=args.fcp_breakdown,
                )

    run = cps_bench.run_in_lab(
        PREFIX, seconds, body, tmp_prefix="sipwall-alg-cps-", keep_logs=args.keep_logs
    )
    if run is None:
        return 130
    for line in delay_report(delays):
        print(line)
    print(run.removed_line())
    print(
        f"anchored_leftover: bindings {left.bindings} rules {left.rules} "
        f"nft_elements {left.nft_elements}"  # after the last anchored step, before stopping
    )
    print(f"total {time.monotonic() - started:.0f} s; load average at end: {_load()}")
    for line in summary(results, delays, args.kamailio_cps):
        print(line)
    return 0


def summary(
    results: dict[str, list[Step]], delays: dict[str, Delays], kamailio_cps: int | None
) -> list[str]:
    lines = []
    top = best(results.get("sipwall-anchored", []))
    lines.append(f"sipwall_anchored_max_cps: {top.rate if top else 0}")
    if top:
        alg_us = top.us_per_call - top.agent_us_per_call
        lines.append(
            f"sipwall_anchored_cpu_split_us_per_call: alg {alg_us:.0f} + agent "
            f"{top.agent_us_per_call:.0f} (at {top.rate} cps)"
        )
        lines.append(f"sipwall_anchored_cpu_us_per_call: {top.us_per_call:.0f}")
    else:
        lines.append("sipwall_anchored_cpu_us_per_call: n/a")
    kam_rate: int | None = kamailio_cps
    if kam_rate is None and "kamailio" in results:
        kam = best(results["kamailio"])
        kam_rate = kam.rate if kam else None
        kam_note = "measured, this run"
    else:
        kam_note = "given by --kamailio-cps" if kam_rate else "not measured"
    lines.append(f"kamailio_max_cps: {kam_rate if kam_rate else 'n/a'} ({kam_note})")
    plain, anchored = delays["plain"], delays["anchored"]
    for key, attr in (("answer", "answer"), ("pdd", "pdd")):
        a, p = getattr(anchored, attr), getattr(plain, attr)
        for q in (50, 99):
            diff = pct(a, q) - pct(p, q)
            lines.append(
                f"anchoring_{key}_p{q}_ms: {diff:.3f} (anchored {pct(a, q):.3f} - "
                f"plain {pct(p, q):.3f})"
            )
    if top and kam_rate:
        lines.append(f"alg_cps_anchored_vs_kamailio: {100 * top.rate / kam_rate:.1f} %")
    else:
        lines.append("alg_cps_anchored_vs_kamailio: n/a (needs kamailio's max cps)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
