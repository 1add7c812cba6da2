"""Test-suite wide configuration: capability gates for namespace/kernel/peer tests.

The hot-path modules run compiled (sipwall.compiled) once `make compiled` built them; with
SIPWALL_INTERPRETED=1 they are imported from source instead (`make test` runs the unit
tests both ways). A stale build stops the session: it would test old code. A test marked
`interpreted_only` looks inside those modules (monkeypatching one of their functions,
subclassing one of their classes, handing them duck-typed stand-ins), which compiled
code does not allow: it runs in the interpreted pass and is skipped in the compiled one.

A test marked `netns`/`kernel` runs when the capability probe says the machine can create
namespaces and nftables tables; `peers` when the real SIP peers are installed. Where a
capability is required (CI, or SIPWALL_REQUIRE_CAPABILITIES=1) a missing one is an error,
never a skip: a skipped test proves nothing.
"""

from __future__ import annotations

import os

from fcp import grpc_runtime
from sipwall import compiled

if os.environ.get("SIPWALL_INTERPRETED", "") not in {"", "0"}:
    compiled.use_interpreted()  # before any test module imports the hot-path modules

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
    # In-process servers and clients run gRPC as the `sipwall` command does; the test
    # modules, which import grpc, are collected after this hook.
    grpc_runtime.configure()
    old = compiled.stale() if compiled.active() else []  # the interpreted pass loads none
    if old:
        raise pytest.UsageError(
            f"compiled modules older than their source: {', '.join(old)}; run `make compiled`"
            " (or `python -m sipwall.compiled clean` to test interpreted)"
        )


def pytest_report_header(config: pytest.Config) -> str:
    return "hot-path modules: " + ("compiled (mypyc)" if compiled.active() else "interpreted")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("interpreted_only") and compiled.active():
        pytest.skip("looks inside the compiled hot-path modules; runs in the interpreted pass")
    if item.get_closest_marker("netns") or item.get_closest_marker("kernel"):
        _gate(item, "netns", netns_capability())
    if item.get_closest_marker("peers"):
        _gate(item, "peers", tools_capability(*PEER_TOOLS))
