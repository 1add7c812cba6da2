"""The smoke runs of the calls-per-second benches: run a bench script in quick mode (it
builds and removes its own namespace lab) and read its printed report."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# The programs a bench starts: a pid still running one of them after the run is a leftover.
PROGRAMS = (b"sipp", b"kamailio", b"sipwall", b"dumpcap")


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
    return any(name in cmdline for name in PROGRAMS)


@dataclass(frozen=True)
class BenchRun:
    """A finished bench run (exit code 0) and its stdout."""

    out: str

    def table(self, proxy: str) -> list[dict[str, str]]:
        """The rows of one proxy's table, as {column: value}."""
        section = self.out.split(f"== {proxy} ", 1)[1].split("\n\n", 1)[0].splitlines()
        header = section[1].split()
        rows = [line.split() for line in section[2:]]
        return [
            dict(zip(header, row, strict=True))
            for row in rows
            if len(row) == len(header) and row[0].isdigit() and row[-1] in ("pass", "FAIL")
        ]

    def value(self, key: str) -> str:
        found = re.search(rf"^{key}: (\S+)", self.out, re.M)
        assert found, f"no {key} line:\n{self.out}"
        return found.group(1)

    def last_line(self) -> str:
        return self.out.rstrip().splitlines()[-1]

    def assert_nothing_left(self, prefix: str, min_pids: int) -> None:
        """The run reports its lab removed, and none of its 3 namespaces and none of the
        (at least `min_pids`) processes it started is still there."""
        removed = re.search(r"^lab removed: namespaces (.+); pids (.+)$", self.out, re.M)
        assert removed, self.out
        namespaces = removed.group(1).split()
        pids = [int(p) for p in removed.group(2).split()]
        assert len(namespaces) == 3
        assert all(ns.startswith(f"{prefix}-") for ns in namespaces)
        assert not set(namespaces) & _netns()
        assert len(pids) >= min_pids
        assert [pid for pid in pids if _ours(pid)] == []


@pytest.fixture
def run_bench() -> Callable[..., BenchRun]:
    """`run_bench("alg_cps.py", "--quick")`: bench/alg_cps.py run to its end (60 s at the
    most), which must exit 0."""

    def run(script: str, *args: str) -> BenchRun:
        done = subprocess.run(
            [sys.executable, str(REPO / "bench" / script), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return BenchRun(done.stdout)

    return run
