"""Test-suite wide configuration: capability gates for namespace/kernel/peer tests.

A test marked `netns`/`kernel` runs when the capability probe says the machine can create
namespaces and nftables tables; `peers` when the real SIP peers are installed. Where a
capability is required (CI, or SIPWALL_REQUIRE_CAPABILITIES=1) a missing one is an error,
never a skip: a skipped test proves nothing.
"""

from __future__ import annotations

import os

import pytest

from labs.capability import Capability, netns_capability, tools_capability
from labs.signals import terminate_like_ctrl_c

PEER_TOOLS = ("sipp", "baresip", "kamailio")


def _capabilities_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "SIPWALL_REQUIRE_CAPABILITIES", ""
    ) not in {"", "0"}


def _gate(item: pytest.Item, name: str, capability: Capability) -> None:
    if capability.available:
        return
    message = f"{name} capability missing: {capability.reason}"
    if _capabilities_required():
        pytest.fail(message + " (capabilities are required here)", pytrace=False)
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    # `kill <pytest>` tears the labs down as Ctrl-C does (labs.signals).
    terminate_like_ctrl_c()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") or item.get_closest_marker("kernel"):
        _gate(item, "netns", netns_capability())
    if item.get_closest_marker("peers"):
        _gate(item, "peers", tools_capability(*PEER_TOOLS))
