"""Smoke run of bench/call_steering.py: a short run measures both messages, checks every
datagram reached its owner (the bench exits non-zero otherwise), prints its headline
last, and leaves no namespace behind."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest


@pytest.mark.netns
def test_a_short_run_reports_the_kernel_time_per_datagram(run_bench: Any) -> None:
    run = run_bench("call_steering.py", "--datagrams", "1000")
    assert re.fullmatch(r"call_steering_ns_per_datagram: \d+ ns", run.last_line()), run.out
    assert int(run.value("call_steering_deep_ns_per_datagram")) > 0
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "swb-" not in namespaces
