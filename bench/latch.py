"""Latch-learn latency: first packet of a port-unknown pinhole -> exact element committed.

Builds the three-namespace gateway lab (labs.netns, its own prefix; the root namespace is
never touched and everything is removed on exit), installs latching on the path the probe
chooses, then ROUNDS times: reserve a binding, enable a rule with the remote port unknown,
send ONE datagram from the signalled remote, and serve the queue until the Latcher has
committed the exact element. Latency = commit done (this process) - just before sendto in
the sender (a child of this script inside the outside namespace; CLOCK_MONOTONIC is system
wide). It includes the kernel queue, the worker's
JSON hop (the lab runs the queue reader in a worker inside the gw namespace; the production
agent binds the queue itself, one hop less) and the libnftables transaction.
Last line: `agent_latch_learn_p50: <value> ms`.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time

ROUNDS = int(os.environ.get("SIPWALL_BENCH_LATCH_ROUNDS", "40"))


def sender() -> None:
    """`--sender`: per stdin line "SRC SPORT DST DPORT", stamp, send one datagram, print."""
    import socket

    for line in sys.stdin:
        src, sport, dst, dport = line.split()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, int(sport)))
            stamp = time.monotonic()
            s.sendto(b"latch", (dst, int(dport)))
        print(f"{stamp:.6f}", flush=True)


def main() -> int:
    from filter_agent import ops
    from filter_agent.allocator import Allocator, PoolConfig
    from filter_agent.drivers.netns import NetnsDriver
    from filter_agent.engine import Engine
    from filter_agent.latch import Latcher
    from filter_agent.latch_plan import LatchSpec, QueuePath, choose_path
    from filter_agent.plan import TableSpec
    from labs.netns import gateway_lab

    latch = LatchSpec()
    samples: list[float] = []
    with gateway_lab(prefix="swb") as g:
        driver = NetnsDriver(g.gw)
        try:
            path = choose_path(driver.latch_probe(latch))
            if path is QueuePath.NONE:
                print("no NFQUEUE path on this kernel", file=sys.stderr)
                return 1
            alloc = Allocator(PoolConfig((g.public_addr,), 20000, 29999), random.Random(3))
            engine = Engine(alloc, driver, spec=TableSpec(latch=True), flusher=driver)
            engine.setup()
            driver.latch_install(latch, path)
            driver.latch_open(latch)
            latcher = Latcher(engine, driver, time.monotonic)
            child = subprocess.Popen(
                ["ip", "netns", "exec", g.outside, sys.executable, __file__, "--sender"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            g.lab.processes.append(child)  # killed and reaped when the lab closes
            assert child.stdin is not None and child.stdout is not None
            for i in range(ROUNDS):
                inside_port = 4000 + 2 * i
                b = engine.reserve_binding(
                    "bench",
                    ops.ReserveBinding(f"c{i}", g.inside_addr, inside_port, lifetime=120),
                    time.monotonic(),
                )
                r = engine.enable_rule(
                    "bench", ops.EnableRule(b.id, g.remote_addr, None), time.monotonic()
                )
                child.stdin.write(
                    f"{g.remote_addr} {41000 + 2 * i} {b.external_addr} {b.external_port}\n"
                )
                child.stdin.flush()
                latcher.serve_until(
                    lambda rid=r.id: engine.get_rule("bench", rid).remote_port is not None,
                    10,
                    what="latched",
                )
                done = time.monotonic()
                samples.append((done - float(child.stdout.readline())) * 1000)
            child.stdin.close()
        finally:
            driver.close()
    samples.sort()
    p90 = samples[int(0.9 * (len(samples) - 1))]
    print(f"path: {path.value}; rounds: {len(samples)}")
    print(f"min {samples[0]:.2f} ms, max {samples[-1]:.2f} ms")
    print(f"agent_latch_learn_p90: {p90:.2f} ms")
    print(f"agent_latch_learn_p50: {statistics.median(samples):.2f} ms")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--sender"]:
        sender()
        sys.exit(0)
    sys.exit(main())
