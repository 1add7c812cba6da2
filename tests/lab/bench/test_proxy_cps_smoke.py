"""Smoke run of bench/proxy_cps.py: the sipwall ALG (stateful) between two sipp in the
namespace lab, 50 calls/s for 3 s. Every call must succeed, and the run must leave
nothing behind: none of its namespaces, none of the processes it started."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "bench" / "proxy_cps.py"


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
    return any(name in cmdline for name in (b"sipp", b"kamailio", b"sipwall"))


def _table(out: str, proxy: str) -> list[dict[str, str]]:
    """The rows of one proxy's table, as {column: value}."""
    section = out.split(f"== {proxy} ", 1)[1].split("\n\n", 1)[0].splitlines()
    header = section[1].split()
    rows = [line.split() for line in section[2:]]
    return [dict(zip(header, row, strict=True)) for row in rows if row and row[0].isdigit()]


@pytest.mark.netns
@pytest.mark.peers
def test_sipwall_stateful_quick_run_all_calls_succeed_and_nothing_is_left() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--proxies", "sipwall-stateful"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr

    (row,) = _table(out, "sipwall-stateful")
    assert (row["rate"], row["calls"], row["failed"], row["result"]) == ("50", "150", "0", "pass")
    assert float(row["achieved"]) >= 0.97 * 50
    assert (row["gwdrop"], row["peerdrop"], row["logerr"]) == ("0", "0", "0"), out
    assert "sipwall_stateful_max_cps: 50" in out.splitlines()
    assert out.rstrip().splitlines()[-1].startswith("proxy_cps_stateful_vs_kamailio: n/a")

    removed = re.search(r"^lab removed: namespaces (.+); pids (.+)$", out, re.M)
    assert removed, out
    namespaces = removed.group(1).split()
    pids = [int(p) for p in removed.group(2).split()]
    assert len(namespaces) == 3
    assert all(ns.startswith("swc-") for ns in namespaces)
    assert not set(namespaces) & _netns()
    assert len(pids) >= 3  # sipp UAS, the ALG, sipp UAC
    assert [pid for pid in pids if _ours(pid)] == []
