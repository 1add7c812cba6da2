"""Install rate of pinholes through the real libnftables driver.

Runs itself again inside a throw-away network namespace (`unshare --net`), so the root
namespace is never touched and everything vanishes with the child. Pinholes are in4
elements (one per rule, inbound, exact remote port), installed BATCH per transaction as
the engine does for a batch request. Last line: `agent_rule_install_rate: <value> rules/s`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

TOTAL = int(os.environ.get("SIPWALL_BENCH_RULES", "100000"))
BATCH = int(os.environ.get("SIPWALL_BENCH_BATCH", "5000"))


def _child() -> None:
    from filter_agent.drivers.libnftables import LibNftablesDriver
    from filter_agent.model import Binding, BindingKind, Direction, Protocol, Rule
    from filter_agent.plan import Change, TableSpec, plan_change, plan_setup

    spec = TableSpec()
    driver = LibNftablesDriver(spec)
    driver.apply(plan_setup(spec))
    started = time.perf_counter()  # planning (Python) + kernel transactions
    for start in range(0, TOTAL, BATCH):
        rules = []
        for i in range(start, min(start + BATCH, TOTAL)):
            inside = f"10.77.{(i >> 8) & 0xFF}.{i & 0xFF or 1}"
            b = Binding(
                f"b{i}",
                "bench",
                f"g{i}",
                Protocol.UDP,
                inside,
                4000,
                "203.0.113.1",
                (10000 + i % 50000,),
                BindingKind.SINGLE,
                3600.0,
            )
            r = Rule(
                f"r{i}",
                "bench",
                b.id,
                b.group,
                Direction.INBOUND,
                "198.51.100.7",
                1024 + i % 60000,
                None,
                3600.0,
            )
            rules.append((r, b))
        driver.apply(plan_change(spec, Change(put_rules=tuple(rules)), now=0.0))
    elapsed = time.perf_counter() - started
    installed = sum(1 for e in driver.elements() if e.set == "in4")
    if installed != TOTAL:
        raise SystemExit(f"expected {TOTAL} elements, kernel has {installed}")
    print(f"installed {TOTAL} pinholes in {elapsed:.3f}s, {BATCH} per transaction")
    print(f"agent_rule_install_rate: {TOTAL / elapsed:.0f} rules/s")


def main() -> int:
    if os.environ.get("SIPWALL_BENCH_CHILD") == "1":
        _child()
        return 0
    env = {**os.environ, "SIPWALL_BENCH_CHILD": "1"}
    return subprocess.run(
        ["unshare", "--net", sys.executable, __file__], env=env, check=False
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
