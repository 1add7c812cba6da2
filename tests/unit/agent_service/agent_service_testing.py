"""Helpers for the agent service tests: a fake monotonic clock that also moves the fake
kernel, and a factory that (re)opens an AgentService on a given state database."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from filter_agent.drivers.fake import FakeNftDriver
from filter_agent.service import AgentService
from filter_agent.store import open_store
from filter_agent.wiring import ServiceSettings

START = 5_000.0  # the fake CLOCK_MONOTONIC
WALL_OFFSET = 1_700_000_000.0
PUBLIC = "203.0.113.1"
BOOT = "boot-1"


@dataclass
class Clock:
    driver: FakeNftDriver
    now: float = START

    def __post_init__(self) -> None:
        self.driver.now = self.now

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + WALL_OFFSET

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.driver.now = self.now


def settings(**overrides: object) -> ServiceSettings:
    values: dict[str, object] = {
        "pool_name": "public",
        "addresses": (PUBLIC,),
        "port_min": 20000,
        "port_max": 20999,
        "max_lifetime": 600.0,
    }
    values.update(overrides)
    return ServiceSettings(**values)  # type: ignore[arg-type]


@dataclass
class Kernel:
    """The fake kernel outlives agent "processes", like the real one."""

    driver: FakeNftDriver = field(default_factory=FakeNftDriver)
    clock: Clock = field(init=False)
    opened: int = 0  # agent "processes" so far; each gets its own RNG seed

    def __post_init__(self) -> None:
        self.clock = Clock(self.driver)

    def open(self, db: Path, boot_id: str = BOOT, **overrides: object) -> AgentService:
        self.opened += 1
        store, loaded, lost = open_store(db)
        return AgentService.open(
            settings(**overrides),
            self.driver,
            store,
            loaded,
            lost,
            boot_id=boot_id,
            clock=self.clock,
            wall=self.clock.wall,
            rng=random.Random(self.opened),
        )
