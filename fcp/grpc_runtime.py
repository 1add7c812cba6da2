"""How this process's gRPC core does its I/O: set once, before `grpc` is first imported.

gRPC core reads `GRPC_EXPERIMENTS` when the `grpc` package is imported (not when a
channel or server is made), so `configure()` must run first: `sipwall.cli.main` calls it
before it imports a subcommand, the test suite in `pytest_configure` (before the test
modules are collected) and the client benchmarks before their FCP imports.

Why: grpcio 1.85 does a connection's socket I/O, TLS and HTTP/2 framing on threads of
its EventEngine, which then wake the asyncio thread, and for each answer the other way
round: about eight context switches per FCP operation on the agent and as many in the
ALG. Its legacy I/O manager (iomgr, epoll1) does that work on the thread that polls the
completion queue (grpc.aio's poller), half as many hand-offs. Measured with the real
agent and kernel, ReserveBinding + release back to back, runs alternating with and
without (`bench/fcp_latency.py` reports the switches): context switches per operation
8.2 -> 3.9, agent CPU 638 -> 545 µs per operation, client CPU 600 -> 442 µs per pair.

Only the event engine's client and listener endpoints are switched off; the
experiments that also move other endpoints and the callback completion queue gained
nothing more. An operator's own `GRPC_EXPERIMENTS` is left as it is. A later grpcio
that has removed these experiments names them once at start-up ("Unknown experiment")
and runs as it would without them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Final

EXPERIMENTS_VARIABLE: Final = "GRPC_EXPERIMENTS"
LEGACY_ENDPOINTS: Final = "-event_engine_client,-event_engine_listener"


def configure(environ: MutableMapping[str, str] | None = None) -> bool:
    """Choose the legacy endpoints unless `GRPC_EXPERIMENTS` is already set. True when
    this call set it and `grpc` had not been imported yet (so it takes effect here; child
    processes inherit the variable either way)."""
    env = os.environ if environ is None else environ
    if EXPERIMENTS_VARIABLE in env:
        return False
    env[EXPERIMENTS_VARIABLE] = LEGACY_ENDPOINTS
    return "grpc" not in sys.modules
