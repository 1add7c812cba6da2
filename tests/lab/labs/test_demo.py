"""`sipwall lab demo` end to end, as a user runs it: two real calls through the real ALG
and agent, a report, one final `demo:` line, and nothing left behind — also on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labs import build
from labs import state as st
from labs.pytest_plugin import unique_lab_name

pytestmark = [pytest.mark.netns, pytest.mark.peers]

DEMO_TIMEOUT = 90


@dataclass(frozen=True)
class DemoRun:
    name: str
    out: Path
    returncode: int
    lines: list[str]


def _demo_argv(out: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "sipwall", "lab", "demo", "--out", str(out), "--name", name]


def _left_behind(name: str) -> list[str]:
    left = [n for n in build.our_namespaces() if st.ns_lab(n) == name]
    if st.lab_dir(name).exists():
        left.append(str(st.lab_dir(name)))
    return left


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    name = unique_lab_name()
    try:
        done = subprocess.run(
            _demo_argv(out, name),
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT,
            check=False,
        )
        yield DemoRun(name, out, done.returncode, done.stdout.splitlines())
    finally:
        build.teardown(name)  # a no-op when the demo cleaned up, as it must


def test_demo_ends_with_one_verdict_line_and_leaves_nothing_behind(demo_run: DemoRun) -> None:
    assert demo_run.lines, "the demo printed nothing"
    last = demo_run.lines[-1]
    assert last.startswith("demo: "), last
    assert sum(line.startswith("demo: ") for line in demo_run.lines) == 1
    assert demo_run.returncode == (0 if last.startswith("demo: PASS") else 1), last
    assert _left_behind(demo_run.name) == []
    # one capture per side is kept for the engineer
    for side in ("inside", "outside"):
        pcap = demo_run.out / f"{side}.pcap"
        assert pcap.is_file() and pcap.stat().st_size > 24, pcap


def test_demo_passes_both_calls(demo_run: DemoRun) -> None:
    text = "\n".join(demo_run.lines)
    assert demo_run.lines[-1].startswith("demo: PASS"), text[-3000:]
    assert demo_run.returncode == 0
    # the report: ladders from both sides, the agent's objects, the tones, the proofs
    assert text.count("200 OK (BYE)") >= 4, text  # two calls, seen on both sides
    assert text.count("-> ok") == 4, text  # each phone heard the other, in both calls
    assert text.count("agent: 0 bindings, 0 pinholes") == 2, text
    assert text.count("-> dropped: nothing reached the inside") == 2, text
    recordings = sorted(p.name for p in (demo_run.out / "recordings").glob("*.wav"))
    assert len(recordings) == 4, recordings


def test_ctrl_c_during_a_call_leaves_nothing_behind(tmp_path: Path) -> None:
    name = unique_lab_name()
    proc = subprocess.Popen(
        _demo_argv(tmp_path / "out", name),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT
        for raw in proc.stdout:  # ends at EOF if the demo exits before the call
            lines.append(raw.rstrip("\n"))
            if raw.startswith("call 1:") or time.monotonic() > deadline:
                break
        assert any(line.startswith("call 1:") for line in lines), "\n".join(lines)
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal delivers
        rest, _ = proc.communicate(timeout=60)
        lines += rest.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        left = _left_behind(name)
        build.teardown(name)
    assert proc.returncode == 128 + signal.SIGINT, "\n".join(lines)
    assert lines[-1].startswith("demo: FAIL — interrupted by SIGINT"), "\n".join(lines)
    assert left == []
