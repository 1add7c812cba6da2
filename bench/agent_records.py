"""What the filter agent keeps per remembered FCP operation: its idempotency records.

Every keyed operation (the ALG keys each: about three per call — Reserve, the answer's
Batch, the release) is remembered for `idempotency_ttl` seconds so that a retry gets the
first answer, in memory and in the state database. This runs `AgentService` as the agent
does — the real libnftables driver, the SQLite store — inside a throw-away network
namespace (`unshare --net`: the root namespace is never touched), places `--calls` calls
(reserve, enable + group lifetime as one Batch, release) on a clock stepped at `--rate`
calls/s, and measures the Python heap (tracemalloc) and the database growth per keyed
operation. It runs twice, each in a fresh process: once remembering everything for the
run, once with a 1 s window. What the second grows too (bounded caches still filling,
tables that do not shrink) is not the records' cost: the records' cost is the difference.
It reports that, and what an agent at `--rate` holds once its window is full.

    .venv/bin/python bench/agent_records.py [--calls 10000] [--rate 400]
    LAST line: agent_idempotency_bytes_per_operation: <heap + db> B
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

OWNER = "alg-1"
UA = ipaddress.IPv4Address("10.77.0.10")
PEER = ipaddress.IPv4Address("198.51.100.20")
KEYED_PER_CALL = 3


def _child(calls: int, rate: float, window: float) -> None:
    from fcp import types as f
    from filter_agent.drivers.libnftables import LibNftablesDriver
    from filter_agent.service import AgentService
    from filter_agent.store import open_store
    from filter_agent.wiring import ServiceSettings

    now = [1000.0]
    settings = ServiceSettings(
        pool_name="public",
        addresses=("203.0.113.1",),
        port_min=20000,
        port_max=59999,
        quarantine=1.0,  # ports come back within the run; quarantine is not measured here
        idempotency_ttl=window,
    )
    with tempfile.TemporaryDirectory(prefix="sipwall-bench-records-") as tmp:
        db = Path(tmp) / "state.db"
        store, loaded, lost = open_store(db)
        driver = LibNftablesDriver()
        service = AgentService.open(
            settings,
            driver,
            store,
            loaded,
            lost,
            boot_id="bench",
            clock=lambda: now[0],
            wall=lambda: now[0] + 1.7e9,
            rng=random.Random(1),
        )

        async def place(first: int, count: int) -> None:
            for i in range(first, first + count):
                group = f"g-{i}"
                binding = await service.reserve_binding(
                    OWNER,
                    f.BindingRequest(
                        group,
                        f.Endpoint(UA, 10000 + 2 * (i % 20000)),
                        f.TransportProtocol.UDP,
                        f.BindingKind.RTP_PAIR,
                        60,
                        idempotency_key=f"{i}-reserve",
                    ),
                )
                operations = (
                    f.RuleRequest(binding.binding_id, f.Direction.BIDIRECTIONAL, PEER, 60, None),
                    f.GroupLifetimeChange(group, 60),
                )
                await service.batch(
                    OWNER, f.BatchRequest(operations, idempotency_key=f"{i}-answer")
                )
                await service.change_group_lifetime(
                    OWNER, f.GroupLifetimeChange(group, 0, idempotency_key=f"{i}-release")
                )
                now[0] += 1 / rate
                if i % 100 == 0:  # what the agent's timer does meanwhile
                    service.sweep_records(now[0])
                    service.observe_now()

        def db_bytes() -> int:
            return sum(p.stat().st_size for p in Path(tmp).iterdir())

        asyncio.run(place(0, 2000))  # warm: caches, the allocator's tables, the db's pages
        tracemalloc.start()
        heap0, db0 = tracemalloc.get_traced_memory()[0], db_bytes()
        asyncio.run(place(2000, calls))
        heap = (tracemalloc.get_traced_memory()[0] - heap0) / (calls * KEYED_PER_CALL)
        disk = (db_bytes() - db0) / (calls * KEYED_PER_CALL)
        tracemalloc.stop()
        asyncio.run(service.close())
        driver.close()
    print(f"{heap:.1f} {disk:.1f}")  # per keyed operation, read by main()


def _measure(calls: int, rate: float, window: float) -> tuple[float, float]:
    command = [sys.executable, __file__, "--child", "--calls", str(calls), "--rate", str(rate)]
    command += ["--window", str(window)]
    done = subprocess.run(
        ["unshare", "--net", *command], check=True, capture_output=True, text=True
    )
    heap, disk = done.stdout.split()[-2:]
    return float(heap), float(disk)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--window", type=float, default=1e9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.calls, args.rate, args.window)
        return 0
    if os.geteuid() != 0:
        print("needs root (a network namespace for the agent's nftables table)")
        return 2
    kept_heap, kept_disk = _measure(args.calls, args.rate, 1e9)  # nothing forgotten
    base_heap, base_disk = _measure(args.calls, args.rate, 1.0)  # records gone within 1 s
    heap, disk = kept_heap - base_heap, kept_disk - base_disk
    operations = args.calls * KEYED_PER_CALL
    print(f"{args.calls} calls, {operations} keyed operations, at {args.rate:g} calls/s")
    print(f"per operation, all remembered: heap {kept_heap:.0f} B, database {kept_disk:.0f} B")
    print(f"per operation, 1 s window:     heap {base_heap:.0f} B, database {base_disk:.0f} B")
    print(f"per remembered operation:      heap {heap:.0f} B, database {disk:.0f} B")
    for ttl in (120.0, 600.0):
        held = args.rate * KEYED_PER_CALL * ttl
        print(
            f"at {args.rate:g} cps with idempotency_ttl {ttl:g} s: {held:,.0f} records, "
            f"heap {held * heap / 1e6:.0f} MB, database {held * disk / 1e6:.0f} MB"
        )
    print(f"agent_idempotency_bytes_per_operation: {heap + disk:.0f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
