"""`sipwall lab` as a user runs it (subprocesses): up/status/exec/capture/down leave nothing
behind; Ctrl-C or SIGTERM during `up` leaves nothing; a killed lab is cleaned by the next;
a pytest run stopped with SIGTERM tears its labs down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import netns

from labs import build
from labs import state as st

pytestmark = pytest.mark.netns

LAB = [sys.executable, "-m", "sipwall", "lab"]


def _name(tag: str) -> str:
    return f"c{tag}{os.getpid() % 10**6}"


def _lab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAB, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _namespaces(name: str) -> list[str]:
    return [n for n in netns.listnetns() if n.startswith(f"{st.NS_PREFIX}-{name}-")]


def _assert_gone(name: str, owner: int | None = None) -> None:
    assert _namespaces(name) == []
    assert not st.lab_dir(name).exists()
    if owner is not None:
        assert st.start_time(owner) is None, f"owner {owner} still running"


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_up_status_exec_capture_down_leave_nothing(tmp_path: Path) -> None:
    name = _name("u")
    up = _lab("up", "basic", "--name", name)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"lab {name} is up" in up.stdout
    state = st.read_state(name)
    assert state is not None and state.phase == "up" and state.owner.alive()
    assert len(_namespaces(name)) == 7
    try:
        status = json.loads(_lab("status", "--json").stdout)
        (mine,) = [lab for lab in status["labs"] if lab["name"] == name]
        assert mine["owner_alive"] and mine["scenario"] == "basic"
        assert len(mine["namespaces"]) == 7

        addr = _lab("exec", name, "gw", "--", "ip", "-br", "-4", "addr")
        assert addr.returncode == 0
        assert "10.77.0.1/24" in addr.stdout and "203.0.113.1/24" in addr.stdout
        rules = _lab("exec", name, "gw", "--", "nft", "list", "table", "inet", "sipwall_lab")
        assert "policy drop" in rules.stdout
        assert _lab("exec", name, "nohost", "--", "true").returncode == 1

        pcap = tmp_path / "gw.pcap"
        cap = _lab("capture", name, "gw", "lan0", "--out", str(pcap), "--seconds", "0.5")
        assert cap.returncode == 0, cap.stderr
        assert pcap.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")

        again = _lab("up", "basic", "--name", name)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = _lab("down", name)
    assert down.returncode == 0, down.stderr
    _assert_gone(name, state.owner.pid)
    assert _lab("down", name).returncode == 1  # nothing left to take down


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_up_leaves_nothing(signum: int) -> None:
    name = _name("s")
    up = subprocess.Popen(
        [*LAB, "up", "provider", "--name", name], stdout=subprocess.PIPE, text=True
    )
    assert up.stdout is not None
    line = up.stdout.readline()  # first progress line: the build has begun
    assert line.startswith("namespace"), line
    state = st.read_state(name)
    assert state is not None
    up.send_signal(signum)
    rest = up.stdout.read()
    rc = up.wait(60)
    up.stdout.close()
    assert rc == 128 + signum, rest
    assert "ready" not in rest
    _assert_gone(name, state.owner.pid)


def test_leftover_of_a_killed_lab_is_cleaned_by_the_next_up() -> None:
    dead, orphan, fresh = _name("d"), _name("o"), _name("f")
    assert _lab("up", "basic", "--name", dead).returncode == 0
    state = st.read_state(dead)
    assert state is not None
    os.kill(state.owner.pid, signal.SIGKILL)  # the owner we started dies without cleanup
    _wait(lambda: not state.owner.alive())
    netns.create(f"{st.NS_PREFIX}-{orphan}-stray")  # namespaces nobody owns
    try:
        status = json.loads(_lab("status", "--json").stdout)
        stale = {left["lab"] for left in status["leftovers"]}
        assert {dead, orphan} <= stale
        assert len(_namespaces(dead)) == 7

        up = _lab("up", "basic", "--name", fresh)
        assert up.returncode == 0, up.stderr
        assert f"cleaning leftover lab {dead}" in up.stdout
        _assert_gone(dead)
        _assert_gone(orphan)
    finally:
        _lab("down", fresh)
        build.teardown(dead)
        build.teardown(orphan)
    _assert_gone(fresh)


def test_up_refuses_over_leftovers_it_cannot_clean(monkeypatch, tmp_path: Path) -> None:
    root = tmp_path / "state"
    stuck = _name("k")
    netns.create(f"{st.NS_PREFIX}-{stuck}-stray")
    try:

        def cannot(name: str, grace: float = 0) -> None:
            raise st.LabError(f"cannot stop pids [1] inside {name}")

        monkeypatch.setattr(build, "remove_namespace", cannot)
        from labs.topology import load

        with pytest.raises(st.LabError, match="leftovers that cannot be cleaned"):
            build.up(load("basic"), _name("r"), root=root)
        assert _namespaces(_name("r")) == []
        assert not (root / _name("r")).exists()
    finally:
        monkeypatch.undo()
        build.teardown(stuck)
    assert _namespaces(stuck) == []


HELD_LAB = """
from pathlib import Path
import time

from labs.pytest_plugin import lab_factory

__all__ = ["lab_factory"]


def test_holds_a_lab(lab_factory):
    lab = lab_factory("basic")
    Path({marker!r}).write_text(lab.name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # waits for the SIGTERM the outer test sends
        time.sleep(0.05)
"""


def test_sigterm_to_pytest_tears_its_labs_down(tmp_path: Path) -> None:
    """A test run stopped with `kill` (SIGTERM) finalises its fixtures as on Ctrl-C."""
    marker = tmp_path / "lab-name"
    (tmp_path / "test_held.py").write_text(HELD_LAB.format(marker=str(marker)))
    # tests/conftest.py installs the handler; the inner run uses the same one.
    (tmp_path / "conftest.py").write_text(
        "from labs.signals import terminate_like_ctrl_c\n\n\n"
        "def pytest_configure(config):\n    terminate_like_ctrl_c()\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    name = None
    try:
        _wait(lambda: marker.exists() or run.poll() is not None, timeout=60)
        assert marker.exists(), run.communicate()[0]
        name = marker.read_text()
        assert len(_namespaces(name)) == 7
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=60)[0]
        assert run.returncode == 2, output  # pytest's "interrupted"
        _assert_gone(name)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if name is not None:
            build.teardown(name)  # only does something if the test failed
