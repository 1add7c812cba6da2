"""Smoke run of bench/alg_cps.py: the sipwall ALG with media anchored through the real
filter agent, between two sipp in the namespace lab, 20 calls/s for 3 s, plus a short
setup-delay run (plain and anchored, with packet captures, the FCP connection's too).
Every call must succeed, every anchored INVITE's time must split at its Reserve, and
the run must leave nothing behind: no binding or pinhole in the agent (asked before the
lab goes), none of its namespaces, none of the processes it started."""

from __future__ import annotations

import re
from typing import Any

import pytest


@pytest.mark.netns
@pytest.mark.peers
def test_anchored_quick_run_all_calls_succeed_and_nothing_is_left(run_bench: Any) -> None:
    run = run_bench("alg_cps.py", "--quick", "--fcp-breakdown")
    out = run.out

    (row,) = run.table("sipwall-anchored")
    assert (row["rate"], row["calls"], row["failed"], row["result"]) == ("20", "60", "0", "pass")
    assert float(row["achieved"]) >= 0.97 * 20
    assert (row["gwdrop"], row["peerdrop"], row["held"]) == ("0", "0", "0"), out
    assert float(row["agent"]) > 0  # the agent did work: calls really were anchored
    assert run.value("sipwall_anchored_max_cps") == "20"
    assert int(run.value("sipwall_anchored_cpu_us_per_call")) > 0

    # the delay runs: every call of both modes matched in all three captures, none failed
    for mode in ("plain", "anchored"):
        assert re.search(rf"^{mode}: 40 calls, 0 failed;", out, re.M), out
        for label in ("INVITE->180 at UAC \\(PDD\\)", "INVITE inside gw", "200 inside gw"):
            assert re.search(rf"^{label}\s+{mode}\s+40 ", out, re.M), out
    # every anchored INVITE split at its Reserve (the FCP capture): none unmatched
    for label in ("INVITE in->Reserve out", "Reserve->answer \\(agent\\)", "answer->INVITE out"):
        assert re.search(rf"^{label}\s+anchored\s+40 ", out, re.M), out
        assert not re.search(rf"^{label}\s+plain", out, re.M), out
    float(run.value("anchoring_pdd_p50_ms"))
    float(run.value("anchoring_pdd_p99_ms"))
    assert run.last_line().startswith("alg_cps_anchored_vs_kamailio: n/a")

    # no binding, pinhole or nftables element left in the agent once the calls hung up
    assert "anchored_leftover: bindings 0 rules 0 nft_elements 0" in out.splitlines(), out

    run.assert_nothing_left("swa", min_pids=6)  # UAS, ALG, agent, UAC, captures, ...
