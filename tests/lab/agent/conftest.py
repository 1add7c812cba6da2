"""Fixtures for the agent's kernel tests: the gateway lab with the agent inside it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from filter_agent.allocator import Allocator, PoolConfig
from filter_agent.drivers.netns import NetnsDriver
from filter_agent.engine import Engine
from labs import traffic
from labs.netns import GatewayLab, gateway_lab


@dataclass
class Agent:
    g: GatewayLab
    driver: NetnsDriver
    engine: Engine

    def recv(self, ns: str, addr: str, port: int, duration: float = 15) -> traffic.Proc:
        return traffic.recv(self.g.lab, ns, addr, port, duration)

    def send(
        self,
        ns: str,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        *,
        tag: str,
        count: int = 50,
        interval: float = 0.01,
    ) -> traffic.Proc:
        return traffic.send(
            self.g.lab, ns, src, sport, dst, dport, tag=tag, count=count, interval=interval
        )


@pytest.fixture(params=["netlink", "libnftables"])
def writer(request: pytest.FixtureRequest) -> str:
    """How element changes reach the kernel (agent.toml `element_writer`)."""
    return str(request.param)


def _agent(writer: str) -> Iterator[Agent]:
    with gateway_lab() as g:
        driver = NetnsDriver(g.gw, element_writer=writer)
        try:
            alloc = Allocator(PoolConfig((g.public_addr,), 20000, 29999), random.Random(11))
            engine = Engine(alloc, driver, flusher=driver)
            engine.setup()
            yield Agent(g, driver, engine)
        finally:
            driver.close()


@pytest.fixture
def agent() -> Iterator[Agent]:
    yield from _agent("netlink")


@pytest.fixture
def agent_with(writer: str) -> Iterator[Agent]:
    """`agent`, once per element writer."""
    yield from _agent(writer)
