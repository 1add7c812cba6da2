"""Pytest glue for namespace labs (the munet/pyroute2 fixture style, ARCHITECTURE §7).

In a test module, next to its topology file or naming a scenario of labs/topologies/:

    lab = lab_fixture("basic")                        # module-scoped fixture `lab`
    pair = lab_fixture(Path(__file__).with_name("pair.toml"), name="pair")

    @pytest.mark.netns
    def test_x(lab): lab.run("alice", ["ip", "-br", "addr"])

The lab is built once for the module, owned by the pytest process, and torn down after the
last test of the module — also on failure and Ctrl-C (pytest finalises fixtures on
KeyboardInterrupt); if pytest itself is killed, the next lab's `up` removes the leftover.
`lab_factory` (register it by importing it into a conftest) builds extra labs within one
test. Gating on capability stays with the `netns` marker (tests/conftest.py).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labs import build
from labs.topology import load

_counter = itertools.count()


def unique_lab_name() -> str:
    """Per pytest process and fixture: t<pid><n>, within the 12-character limit."""
    return f"t{os.getpid() % 10**7}{next(_counter) % 1000}"


def lab_fixture(scenario: str | Path, *, name: str = "lab", scope: Any = "module") -> Any:
    """A fixture named `name` that builds `scenario` and yields a build.RunningLab."""

    @pytest.fixture(scope=scope, name=name)
    def _lab() -> Iterator[build.RunningLab]:
        topo = load(scenario)
        lab = build.up(topo, unique_lab_name(), source=str(scenario))
        try:
            yield lab
        finally:
            lab.close()

    return _lab


@pytest.fixture
def lab_factory() -> Iterator[Callable[[str | Path], build.RunningLab]]:
    """Build labs inside one test; all are torn down at the end of the test."""
    labs: list[build.RunningLab] = []

    def make(scenario: str | Path) -> build.RunningLab:
        lab = build.up(load(scenario), unique_lab_name(), source=str(scenario))
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(labs):
            try:
                lab.close()
            except Exception as exc:  # noqa: BLE001 - close every lab, then report
                errors.append(exc)
        if errors:
            raise errors[0]
