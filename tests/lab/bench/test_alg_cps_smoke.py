"""Smoke run of bench/alg_cps.py: the sipwall ALG with media anchored through the real
filter agent, between two sipp in the namespace lab, 20 calls/s for 3 s, plus a short
setup-delay run (plain and anchored, with packet captures). Every call must succeed and
the run must leave nothing behind: no binding or pinhole in the agent (asked before the
lab goes), none of its namespaces, none of the processes it started."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "bench" / "alg_cps.py"


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _ours(pid: int) -> bool:
    """Is `pid` still one of the run's programs (not a recycled pid)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return any(name in cmdline for name in (b"sipp", b"kamailio", b"sipwall", b"dumpcap"))


def _table(out: str, proxy: str) -> list[dict[str, str]]:
    section = out.split(f"== {proxy} ", 1)[1].split("\n\n", 1)[0].splitlines()
    header = section[1].split()
    rows = [line.split() for line in section[2:]]
    return [
        dict(zip(header, row, strict=True))
        for row in rows
        if len(row) == len(header) and row[0].isdigit() and row[-1] in ("pass", "FAIL")
    ]


def _value(out: str, key: str) -> str:
    found = re.search(rf"^{key}: (\S+)", out, re.M)
    assert found, f"no {key} line:\n{out}"
    return found.group(1)


@pytest.mark.netns
@pytest.mark.peers
def test_anchored_quick_run_all_calls_succeed_and_nothing_is_left() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr

    (row,) = _table(out, "sipwall-anchored")
    assert (row["rate"], row["calls"], row["failed"], row["result"]) == ("20", "60", "0", "pass")
    assert float(row["achieved"]) >= 0.97 * 20
    assert (row["gwdrop"], row["peerdrop"], row["held"]) == ("0", "0", "0"), out
    assert float(row["agent"]) > 0  # the agent did work: calls really were anchored
    assert _value(out, "sipwall_anchored_max_cps") == "20"
    assert int(_value(out, "sipwall_anchored_cpu_us_per_call")) > 0

    # the delay runs: every call of both modes matched in all three captures, none failed
    for mode in ("plain", "anchored"):
        assert re.search(rf"^{mode}: 40 calls, 0 failed;", out, re.M), out
        for label in ("INVITE->180 at UAC \\(PDD\\)", "INVITE inside gw", "200 inside gw"):
            assert re.search(rf"^{label}\s+{mode}\s+40 ", out, re.M), out
    float(_value(out, "anchoring_pdd_p50_ms"))
    float(_value(out, "anchoring_pdd_p99_ms"))
    assert out.rstrip().splitlines()[-1].startswith("alg_cps_anchored_vs_kamailio: n/a")

    # no binding, pinhole or nftables element left in the agent once the calls hung up
    assert "anchored_leftover: bindings 0 rules 0 nft_elements 0" in out.splitlines(), out

    removed = re.search(r"^lab removed: namespaces (.+); pids (.+)$", out, re.M)
    assert removed, out
    namespaces = removed.group(1).split()
    pids = [int(p) for p in removed.group(2).split()]
    assert len(namespaces) == 3
    assert all(ns.startswith("swa-") for ns in namespaces)
    assert not set(namespaces) & _netns()
    assert len(pids) >= 6  # UAS, ALG, agent, UAC, captures, ...
    assert [pid for pid in pids if _ours(pid)] == []
