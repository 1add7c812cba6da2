"""`[proxy] workers = 2` (alg.workers) in the namespace proxy lab: the kernel spreads one
source's datagrams over both workers, SIGUSR1 reaches each, a killed worker is started
again and the proxy keeps forwarding, SIGTERM stops every process; stateful workers keep
every message of a call in the worker that owns it, retransmissions included: the kernel
delivers it there (alg.call_steering), and what it cannot place is handed over
(alg.affinity); a configuration that needs shared state is refused before anything
starts.

    uac (10.77.0.10, a probe) -- gw (10.77.0.1 | 203.0.113.1, sipwall) -- uas (a counter)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alg.call_steering import SCAN_BYTES
from labs import proxy_lab
from labs.netns import wait_until
from labs.proxy_lab import GW_INSIDE, SIP_PORT, UAC_ADDR, UAS_ADDR, Proxy, ProxyLab

pytestmark = pytest.mark.netns

# argv: uac gw uas port first count padding. One socket, so one 4-tuple for every
# request: the kernel's default reuseport hash would give them all to one worker. The
# padding (a header of that many bytes before the Call-ID) can put the Call-ID beyond
# what the kernel's steering program reads (alg.call_steering).
PROBE = r"""
import socket, sys
uac, gw, uas, port, first, count, padding = sys.argv[1:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((uac, 5070))
for i in range(int(first), int(first) + int(count)):
    s.sendto((
        f"OPTIONS sip:service@{uas}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {uac}:5070;branch=z9hG4bK-w{i}\r\n"
        + (f"X-Padding: {'p' * int(padding)}\r\n" if int(padding) else "")
        + "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{uac}>;tag=t{i}\r\n"
        f"To: <sip:service@{uas}>\r\n"
        f"Call-ID: w{i}@{uac}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode(), (gw, int(port)))
"""

# argv: uas port count. Counts the distinct requests forwarded to it, until count or 10 s.
COUNTER = r"""
import socket, sys, time
uas, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: the burst must all fit
s.bind((uas, port))
print("listening", flush=True)
s.settimeout(0.5)
seen, deadline = set(), time.monotonic() + 10
while len(seen) < count and time.monotonic() < deadline:
    try:
        data = s.recv(65535)
    except TimeoutError:
        continue
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"call-id:"):
            seen.add(line)
print(len(seen), flush=True)
"""


def config(workdir: Path, mode: str) -> Path:
    text = proxy_lab.sipwall_config(mode, workers=2)
    path = workdir / "alg-workers.toml"
    path.write_text(text + f'\n[files]\nstats = "{workdir / "stats.json"}"\n')
    return path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ProxyLab]:
    with proxy_lab.proxy_lab("sww", tmp_path) as pl:
        yield pl


def start(pl: ProxyLab, mode: str = "stateless") -> Proxy:
    log = pl.workdir / "alg.log"
    argv = [sys.executable, "-m", "sipwall", "alg", "--config", str(config(pl.workdir, mode))]
    proc = proxy_lab.spawn_logged(pl.lab, pl.gw, argv, log)
    wait_until(
        lambda: "sipwall alg: ready" in log.read_text() or proc.poll() is not None,
        timeout=30,
        what="supervisor ready",
    )
    assert proc.poll() is None, log.read_text()
    return Proxy("workers", proc, log, proc.pid)


def in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable]


def forward(pl: ProxyLab, first: int, count: int, padding: int = 0) -> int:
    """Send `count` OPTIONS from one source; how many reached the UAS."""
    counter = subprocess.Popen(
        [*in_ns(pl.uas), "-c", COUNTER, UAS_ADDR, str(SIP_PORT), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert counter.stdout is not None
    try:
        assert counter.stdout.readline().strip() == "listening"
        where = [UAC_ADDR, GW_INSIDE, UAS_ADDR, str(SIP_PORT)]
        probe = [*in_ns(pl.uac), "-c", PROBE, *where, str(first), str(count), str(padding)]
        subprocess.run(probe, check=True, timeout=30)
        return int(counter.stdout.readline())
    finally:
        counter.stdout.close()
        counter.wait(20)


def workers_of(proxy: Proxy) -> list[int]:
    return [pid for pid in proxy.pids() if pid != proxy.main_pid]


def counters(pl: ProxyLab, proxy: Proxy) -> list[dict[str, int]]:
    """SIGUSR1 to the supervisor; each worker writes stats.worker<I>.json."""
    files = [pl.workdir / f"stats.worker{i}.json" for i in range(2)]
    for path in files:
        path.unlink(missing_ok=True)
    os.kill(proxy.main_pid, signal.SIGUSR1)
    wait_until(lambda: all(p.exists() for p in files), timeout=10, what="counters written")
    return [json.loads(p.read_text())["proxy"] for p in files]


def options_per_worker(pl: ProxyLab, proxy: Proxy) -> list[int]:
    return [c.get("request.OPTIONS", 0) for c in counters(pl, proxy)]


def test_two_workers_share_one_source_and_survive_a_killed_worker(lab: ProxyLab) -> None:
    proxy = start(lab)
    workers = workers_of(proxy)
    assert len(workers) == 2
    assert forward(lab, 0, 400) == 400
    counts = options_per_worker(lab, proxy)
    assert sum(counts) == 400
    assert min(counts) >= 100, counts  # spread at random, not pinned by the 4-tuple hash

    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: "worker 0 is back" in proxy.log.read_text(), timeout=30, what="restart")
    assert "worker 0 exited (-9); starting it again" in proxy.log.read_text()
    replacement = set(workers_of(proxy)) - set(workers)
    assert len(replacement) == 1 and len(workers_of(proxy)) == 2
    assert forward(lab, 1000, 400) == 400
    fresh, old = options_per_worker(lab, proxy)
    assert old - counts[1] >= 100 and fresh >= 100, (fresh, old)  # both share again
    assert fresh + old - counts[1] == 400

    survivors = proxy.pids()
    os.kill(proxy.main_pid, signal.SIGTERM)
    assert proxy.proc.wait(20) == 0
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in survivors),
        timeout=10,
        what="every worker stopped",
    )


@pytest.mark.peers
def test_stateful_workers_keep_each_call_whole_under_loss(lab: ProxyLab) -> None:
    """sipp loses 5 % of what it sends and receives, so INVITEs, BYEs and responses are
    retransmitted; every message of a call must reach the worker holding its
    transactions. The kernel delivers each to that worker itself (alg.call_steering), so
    nothing is handed over between workers."""
    proxy = start(lab, "stateful")
    assert "steered by Call-ID on inside, outside" in proxy.log.read_text()
    uas = proxy_lab.spawn_logged(
        lab.lab, lab.uas, proxy_lab.sipp_uas_argv(lab.workdir / "uas.csv"), lab.workdir / "uas"
    )
    stat = lab.workdir / "uac.csv"
    argv = proxy_lab.sipp_uac_argv(60, 300, stat, lab.workdir / "uac.err", pause_ms=200)
    uac = proxy_lab.spawn_logged(lab.lab, lab.uac, [*argv, "-lost", "5"], lab.workdir / "uac")
    assert uac.wait(90) == 0, (lab.workdir / "uac").read_text()[-2000:]
    uas.terminate()
    stats = proxy_lab.SippStats.read(stat)
    assert (stats.last("SuccessfulCall(C)"), stats.last("FailedCall(C)")) == (300, 0)
    assert stats.last("Retransmissions(C)") > 0  # the loss did cause retransmissions
    per_worker = counters(lab, proxy)
    for mine in per_worker:  # both own calls, and the kernel placed every message
        assert mine.get("request.INVITE", 0) >= 60, per_worker
        assert mine.get("affinity.handed_off", 0) == 0, per_worker
        assert mine.get("affinity.taken_over", 0) == 0, per_worker


@pytest.mark.peers
def test_a_restarted_stateful_worker_gets_its_calls_from_the_kernel_again(lab: ProxyLab) -> None:
    """The supervisor keeps the steering groups: the worker started again joins its
    slot, so every message still reaches its owner without a hand-off."""
    proxy = start(lab, "stateful")
    os.kill(workers_of(proxy)[0], signal.SIGKILL)
    wait_until(lambda: "worker 0 is back" in proxy.log.read_text(), timeout=30, what="restart")
    uas = proxy_lab.spawn_logged(
        lab.lab, lab.uas, proxy_lab.sipp_uas_argv(lab.workdir / "uas.csv"), lab.workdir / "uas"
    )
    stat = lab.workdir / "uac.csv"
    argv = proxy_lab.sipp_uac_argv(50, 100, stat, lab.workdir / "uac.err", pause_ms=100)
    uac = proxy_lab.spawn_logged(lab.lab, lab.uac, argv, lab.workdir / "uac")
    assert uac.wait(60) == 0, (lab.workdir / "uac").read_text()[-2000:]
    uas.terminate()
    stats = proxy_lab.SippStats.read(stat)
    assert (stats.last("SuccessfulCall(C)"), stats.last("FailedCall(C)")) == (100, 0)
    per_worker = counters(lab, proxy)
    # the restarted worker's sockets, both sides, joined their slots again
    assert [c.get("affinity.steered_sides") for c in per_worker] == [2, 2], per_worker
    assert all(c.get("request.INVITE", 0) >= 20 for c in per_worker), per_worker
    assert sum(c.get("affinity.handed_off", 0) for c in per_worker) == 0, per_worker


def test_what_the_kernel_cannot_place_is_handed_to_its_owner(lab: ProxyLab) -> None:
    """Call-IDs past the bytes the steering program reads: the kernel falls back to its
    4-tuple hash, which gives one source's requests to one worker; that worker hands the
    other's calls over, and every request is forwarded once."""
    proxy = start(lab, "stateful")
    assert forward(lab, 0, 400, padding=SCAN_BYTES) == 400
    per_worker = counters(lab, proxy)
    options = [c.get("request.OPTIONS", 0) for c in per_worker]
    assert sum(options) == 400 and min(options) >= 100, options  # owned by Call-ID
    handed = [c.get("affinity.handed_off", 0) for c in per_worker]
    taken = [c.get("affinity.taken_over", 0) for c in per_worker]
    assert sum(handed) == sum(taken) >= 100, (handed, taken)
    assert sum(c.get("affinity.dropped", 0) for c in per_worker) == 0


def test_workers_needing_shared_state_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "alg.toml"
    tcp = 'transports = ["udp", "tcp"]'
    path.write_text(
        proxy_lab.sipwall_config("stateful", workers=2).replace('transports = ["udp"]', tcp, 1)
    )
    done = subprocess.run(
        [sys.executable, "-m", "sipwall", "alg", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "workers = 2 needs" in done.stderr
    assert "a TCP connection belongs to one worker" in done.stderr
