"""How the service assembles its engine: settings, and the dry-run driver used to locate
a failing batch operation."""

from __future__ import annotations

import random
from dataclasses import dataclass

from fcp.idempotency import DEFAULT_TTL_SECONDS
from filter_agent.allocator import Allocator, PoolConfig
from filter_agent.driver import NftDriver
from filter_agent.engine import ConntrackFlusher, Engine, Limits
from filter_agent.errors import DriverError
from filter_agent.plan import Element, TableSpec, Transaction


@dataclass(frozen=True)
class ServiceSettings:
    pool_name: str
    addresses: tuple[str, ...]
    port_min: int = 20000
    port_max: int = 59999
    quarantine: float = 120.0
    ports_per_owner: int | None = None
    ports_per_group: int | None = None
    rules_per_binding: int = 32
    max_block: int = 64
    max_lifetime: float = 3600.0
    observe_interval: float = 1.0
    table_poll_interval: float = 0.25
    idempotency_ttl: float = DEFAULT_TTL_SECONDS


class DryRun(DriverError):
    """Raised by the dry-run driver: the engine rolls back, nothing reaches the kernel."""


class DryRunDriver:
    def apply(self, tx: Transaction) -> None:
        raise DryRun("dry run")

    def elements(self) -> tuple[Element, ...]:
        return ()

    def table_exists(self) -> bool:
        return True


def build_engine(
    settings: ServiceSettings,
    driver: NftDriver,
    *,
    spec: TableSpec | None = None,
    flusher: ConntrackFlusher | None = None,
    rng: random.Random | None = None,
) -> Engine:
    pool = PoolConfig(
        settings.addresses,
        settings.port_min,
        settings.port_max,
        settings.quarantine,
        settings.ports_per_owner,
        settings.ports_per_group,
    )
    limits = Limits(settings.max_lifetime, settings.max_block, settings.rules_per_binding)
    allocator = Allocator(pool, rng or random.SystemRandom())
    return Engine(allocator, driver, spec=spec, limits=limits, flusher=flusher)
