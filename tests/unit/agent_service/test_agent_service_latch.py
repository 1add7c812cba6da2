"""Latching in the agent service, without a kernel: the queue is a socketpair-backed
scripted source registered on the real asyncio loop, the kernel the fake driver."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from agent_service_testing import BOOT, Kernel, settings

from fcp.types import (
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    RuleRequest,
    TransportProtocol,
)
from filter_agent.driver import NftDriver
from filter_agent.latch import Flow, QueuedPacket
from filter_agent.latch_plan import LatchSpec, QueuePath, QueueProbe
from filter_agent.latching import AgentLatching, LatchSettings, choose
from filter_agent.model import Protocol as Transport
from filter_agent.plan import LATCH_QUEUE, TableSpec
from filter_agent.service import AgentService
from filter_agent.store import open_store

INSIDE, REMOTE, OTHER = "10.77.0.10", "203.0.113.20", "203.0.113.30"
SPEC = TableSpec(latch=True)


class SocketSource:
    """Packets are pushed by the test; a byte on a socketpair makes the fd readable."""

    def __init__(self, queue_num: int) -> None:
        self.queue_num = queue_num
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.pending: list[QueuedPacket] = []
        self.verdicts: dict[int, bool] = {}
        self.closed = False

    def push(self, *packets: QueuedPacket) -> None:
        self.pending.extend(packets)
        self._w.send(b"x")

    def fileno(self) -> int:
        return self._r.fileno()

    def read_ready(self) -> Sequence[QueuedPacket]:
        try:
            self._r.recv(4096)
        except BlockingIOError:
            pass
        out, self.pending = self.pending, []
        return out

    def poll(self, timeout: float) -> Sequence[QueuedPacket]:
        return self.read_ready()

    def verdict(self, packet_id: int, accept: bool) -> None:
        assert packet_id not in self.verdicts
        self.verdicts[packet_id] = accept

    def close(self) -> None:
        self.closed = True
        self._r.close()
        self._w.close()


class Installs:
    def __init__(self) -> None:
        self.calls: list[QueuePath] = []

    def __call__(
        self, driver: NftDriver, spec: TableSpec, latch: LatchSpec, path: QueuePath
    ) -> QueuePath:
        assert spec.latch
        self.calls.append(path)
        return path


def open_service(kernel: Kernel, db: Path) -> AgentService:
    kernel.opened += 1
    store, loaded, lost = open_store(db)
    return AgentService.open(
        settings(),
        kernel.driver,
        store,
        loaded,
        lost,
        boot_id=BOOT,
        spec=SPEC,
        clock=kernel.clock,
        wall=kernel.clock.wall,
        rng=random.Random(kernel.opened),
    )


def attach(service: AgentService) -> tuple[list[SocketSource], Installs]:
    sources: list[SocketSource] = []
    installs = Installs()

    def opener(num: int) -> SocketSource:
        sources.append(SocketSource(num))
        return sources[-1]

    latching = AgentLatching(
        service.engine,
        service.store,
        LatchSpec(77),
        QueuePath.XT_NFQUEUE,
        service.clock,
        open_source=opener,
        install=installs,
    )
    latching.install()
    service.latching = latching
    return sources, installs


async def call(service: AgentService) -> tuple[str, str, int]:
    b = await service.reserve_binding(
        "alg-1",
        BindingRequest(
            "c1",
            Endpoint(ipaddress.IPv4Address(INSIDE), 4000),
            TransportProtocol.UDP,
            BindingKind.RTP_PAIR,
            60,
        ),
    )
    r = await service.enable_rule(
        "alg-1",
        RuleRequest(b.binding_id, Direction.BIDIRECTIONAL, ipaddress.IPv4Address(REMOTE), 60),
    )
    assert r.remote_port is None
    return b.binding_id, r.rule_id, 4000


async def until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0)


def packet(pid: int, src: str, sport: int) -> QueuedPacket:
    return QueuedPacket(pid, Flow(Transport.UDP, src, sport, INSIDE, 4000))


@pytest.mark.asyncio
async def test_queued_packet_latches_persists_and_is_accepted(kernel: Kernel, db: Path) -> None:
    service = open_service(kernel, db)
    sources, installs = attach(service)
    await service.start()
    try:
        _, rule_id, _ = await call(service)
        source = sources[0]
        assert installs.calls == [QueuePath.XT_NFQUEUE]
        assert source.queue_num == 77
        source.push(packet(1, OTHER, 41000), packet(2, REMOTE, 41000), packet(3, REMOTE, 41000))
        await until(lambda: len(source.verdicts) == 3, "verdicts for every queued packet")
        assert source.verdicts == {1: False, 2: True, 3: True}
        assert (await service.get_rule("alg-1", rule_id)).remote_port == 41000
        keys = {e.key for e in kernel.driver.elements() if e.set == "in4"}
        assert ("udp", INSIDE, 4001, REMOTE, 41001) in keys
    finally:
        await service.close()
    assert source.closed
    # The learnt port was persisted: a restarted agent has the exact rule.
    again = open_service(kernel, db)
    try:
        assert (await again.get_rule("alg-1", rule_id)).remote_port == 41000
        assert again.recovery.rules == 1
    finally:
        await again.close()


@pytest.mark.asyncio
async def test_rebuilt_table_gets_the_queue_rule_again(kernel: Kernel, db: Path) -> None:
    service = open_service(kernel, db)
    _, installs = attach(service)
    try:
        assert installs.calls == [QueuePath.XT_NFQUEUE]
        assert not service.check_table()
        kernel.driver.delete_table_behind_our_back()
        assert service.check_table()
        assert installs.calls == [QueuePath.XT_NFQUEUE] * 2
        assert LATCH_QUEUE in kernel.driver.dump()  # the fake accepts the latch chain
    finally:
        await service.close()


def test_choose_follows_the_probe_and_the_setting() -> None:
    def probe(nft: bool, xt: bool) -> Callable[[TableSpec, LatchSpec], QueueProbe]:
        return lambda spec, latch: QueueProbe(nft, xt, "probed")

    off = choose(LatchSettings(enabled=False), TableSpec(), probe(True, True))
    assert off == (QueuePath.NONE, TableSpec(latch=False))
    xt = choose(LatchSettings(), TableSpec(), probe(False, True))
    assert xt == (QueuePath.XT_NFQUEUE, TableSpec(latch=True))
    none = choose(LatchSettings(), TableSpec(), probe(False, False))
    assert none == (QueuePath.NONE, TableSpec(latch=False))


def test_latching_needs_a_path_and_the_latch_table(kernel: Kernel, db: Path) -> None:
    store, loaded, lost = open_store(db)
    plain = AgentService.open(settings(), kernel.driver, store, loaded, lost, boot_id=BOOT)
    with pytest.raises(ValueError, match="latch"):
        AgentLatching(plain.engine, store, LatchSpec(), QueuePath.XT_NFQUEUE, plain.clock)
    store.close()
