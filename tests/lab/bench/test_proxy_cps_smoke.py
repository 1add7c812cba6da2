"""Smoke runs of bench/proxy_cps.py: the sipwall ALG (stateful; stateless with two workers)
between two sipp in the namespace lab, 50 calls/s for 3 s. Every call must succeed, and
the run must leave nothing behind: none of its namespaces, none of the processes it
started."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.netns
@pytest.mark.peers
def test_sipwall_stateful_quick_run_all_calls_succeed_and_nothing_is_left(
    run_bench: Any,
) -> None:
    run = run_bench("proxy_cps.py", "--quick", "--proxies", "sipwall-stateful")
    out = run.out

    (row,) = run.table("sipwall-stateful")
    assert (row["rate"], row["calls"], row["failed"], row["result"]) == ("50", "150", "0", "pass")
    assert float(row["achieved"]) >= 0.97 * 50
    assert (row["gwdrop"], row["peerdrop"], row["logerr"]) == ("0", "0", "0"), out
    assert "sipwall_stateful_max_cps: 50" in out.splitlines()
    assert run.last_line().startswith("proxy_cps_stateful_vs_kamailio: n/a")

    run.assert_nothing_left("swc", min_pids=3)  # sipp UAS, the ALG, sipp UAC


@pytest.mark.netns
@pytest.mark.peers
def test_sipwall_stateless_with_two_workers_quick_run_all_calls_succeed(run_bench: Any) -> None:
    run = run_bench("proxy_cps.py", "--quick", "--proxies", "sipwall-stateless-2w")
    (row,) = run.table("sipwall-stateless-2w")
    assert (row["rate"], row["calls"], row["failed"], row["result"]) == ("50", "150", "0", "pass")
    assert (row["gwdrop"], row["peerdrop"], row["logerr"]) == ("0", "0", "0"), run.out
    assert "sipwall_stateless_2w_max_cps: 50" in run.out.splitlines()
    run.assert_nothing_left("swc", min_pids=5)  # sipp UAS, supervisor, 2 workers, sipp UAC
