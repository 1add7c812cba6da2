"""Latching against the real kernel (NFQUEUE), in the three-namespace gateway lab.

inside 10.77.0.10 -- gw 10.77.0.1 | 203.0.113.1 (agent + queue reader) -- outside .20, .30

The queue is bound by the NetnsDriver worker inside the gw namespace; the engine and the
Latcher run here and decide each queued packet (`Latcher.serve_until` polls the condition
under a deadline while serving). As in test_agent_kernel.py, absence is proven by
ordering: the stream that must be dropped goes first, the one that must pass after it on
the same path; once the second has arrived, anything of the first would have too.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from filter_agent import ops
from filter_agent.allocator import Allocator, PoolConfig
from filter_agent.drivers.netns import NetnsDriver
from filter_agent.engine import Engine
from filter_agent.errors import DriverError
from filter_agent.latch import Latcher
from filter_agent.latch_plan import LatchSpec, QueuePath, QueueProbe, choose_path
from filter_agent.model import Binding, Direction, Rule
from filter_agent.plan import TableSpec
from labs import traffic
from labs.netns import GatewayLab, gateway_lab, wait_until
from labs.traffic import now

pytestmark = pytest.mark.kernel

INSIDE = "10.77.0.10"
REMOTE, OTHER = "203.0.113.20", "203.0.113.30"
LATCH = LatchSpec(queue_num=5189)


@dataclass
class Latching:
    g: GatewayLab
    driver: NetnsDriver
    engine: Engine
    latcher: Latcher
    probe: QueueProbe
    path: QueuePath

    def call(self, direction: Direction = Direction.BOTH) -> tuple[Binding, Rule]:
        e = self.engine
        b = e.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, lifetime=60), now())
        r = e.enable_rule("alg", ops.EnableRule(b.id, REMOTE, None, direction), now())
        return b, r

    def send(self, src: str, sport: int, b: Binding, tag: str, count: int = 30) -> traffic.Proc:
        return traffic.send(
            self.g.lab, self.g.outside, src, sport, b.external_addr, b.external_port, tag=tag,
            count=count, interval=0.005,
        )  # fmt: skip

    def sets(self) -> dict[str, set[tuple[object, ...]]]:
        out: dict[str, set[tuple[object, ...]]] = {}
        for e in self.driver.elements():
            out.setdefault(e.set, set()).add(e.key)
        return out

    def queued_from(self, src: str) -> list[int]:
        return [
            ev.packet.flow.sport
            for ev in self.latcher.history
            if ev.packet.flow is not None and ev.packet.flow.src == src
        ]


@pytest.fixture
def latching() -> Iterator[Latching]:
    with gateway_lab() as g:
        driver = NetnsDriver(g.gw)
        try:
            probe = driver.latch_probe(LATCH)  # before setup: the probe needs no table
            path = choose_path(probe)
            if path is QueuePath.NONE:
                pytest.fail(f"no NFQUEUE path on this kernel: {probe.detail}")
            alloc = Allocator(PoolConfig((g.public_addr,), 20000, 29999), random.Random(11))
            engine = Engine(alloc, driver, spec=TableSpec(latch=True), flusher=driver)
            engine.setup()
            assert driver.latch_install(LATCH, path) is path
            driver.latch_open(LATCH)
            yield Latching(g, driver, engine, Latcher(engine, driver, now), probe, path)
        finally:
            driver.close()


def test_probe_matches_what_the_kernel_accepts(latching: Latching) -> None:
    d, probe = latching.driver, latching.probe
    # These kernels: no nft `queue` expression, xt NFQUEUE through nft_compat.
    assert probe.xt_nfqueue, probe.detail
    # Both answers are real: the path the probe rejects is refused for real too, and the
    # chosen one is installed (and re-installing it is idempotent).
    if not probe.nft_queue:
        with pytest.raises(DriverError):
            d.latch_install(LATCH, QueuePath.NFT_QUEUE)
    assert d.latch_install(LATCH, latching.path) is latching.path
    listing = latching.g.lab.run(
        latching.g.gw, ["nft", "-j", "list", "chain", "inet", "sipwall", "latch_queue"]
    )
    assert listing.count('"rule"') == 1
    # The probe committed nothing.
    chains = latching.g.lab.run(latching.g.gw, ["nft", "-j", "list", "chains"])
    assert "latch_probe" not in chains


def test_first_packet_latches_and_nothing_is_lost(latching: Latching) -> None:
    lt, g = latching, latching.g
    b, r = lt.call()
    rx = traffic.recv(g.lab, g.inside, INSIDE, 4000)
    lt.send(REMOTE, 41000, b, "a", count=30)
    lt.latcher.serve_until(lambda: len(rx.packets()) >= 30, 10, what="whole stream arrives")
    got = rx.packets()
    # No loss, the very first packet included. Not necessarily in order: a packet that
    # arrives after the exact element committed takes the fast path and may overtake the
    # queued ones whose verdict is still on its way (RTP receivers reorder by sequence).
    assert sorted(p.seq for p in got) == list(range(30))
    assert {(p.src, p.sport) for p in got} == {(REMOTE, 41000)}
    assert lt.engine.get_rule("alg", r.id).remote_port == 41000
    sets = lt.sets()
    assert ("udp", INSIDE, 4000, REMOTE, 41000) in sets["in4"]
    assert ("udp", INSIDE, 4001, REMOTE, 41001) in sets["in4"]  # RTCP of the pair
    assert ("udp", INSIDE, 4000, REMOTE, 41000) in sets["out4"]
    assert "in4a" not in sets and "out4a" not in sets
    queued = lt.queued_from(REMOTE)
    assert queued and lt.latcher.history[0].latched == (r.id,)
    # Fast path: a second stream is never seen by Python, and arrives whole.
    before = len(lt.latcher.history)
    lt.send(REMOTE, 41000, b, "b", count=30)
    lt.latcher.serve_until(
        lambda: sum(p.tag == "b" for p in rx.packets()) >= 30, 10, what="second stream"
    )
    assert len(lt.latcher.history) == before
    lt.engine.observe(now())
    assert lt.engine.counters("alg", r.id).packets >= 30


def test_unsignalled_remote_is_dropped_and_never_queued(latching: Latching) -> None:
    lt, g = latching, latching.g
    b, r = lt.call()
    rx = traffic.recv(g.lab, g.inside, INSIDE, 4000)
    lt.send(OTHER, 41000, b, "other", count=20).wait()
    lt.send(REMOTE, 42000, b, "good", count=20)
    lt.latcher.serve_until(
        lambda: sum(p.tag == "good" for p in rx.packets()) >= 20, 10, what="signalled stream"
    )
    assert {p.tag for p in rx.packets()} == {"good"}
    assert lt.queued_from(OTHER) == []
    assert lt.engine.get_rule("alg", r.id).remote_port == 42000  # latched to the right one


def test_after_latching_another_port_is_dropped(latching: Latching) -> None:
    lt, g = latching, latching.g
    b, r = lt.call(Direction.INBOUND)
    rx = traffic.recv(g.lab, g.inside, INSIDE, 4000)
    lt.send(REMOTE, 41000, b, "first", count=10)
    lt.latcher.serve_until(lambda: len(rx.packets()) >= 10, 10, what="latching stream")
    lt.send(REMOTE, 41002, b, "wrongport", count=20).wait()
    lt.send(REMOTE, 41000, b, "again", count=10)
    lt.latcher.serve_until(
        lambda: any(p.tag == "again" for p in rx.packets()), 10, what="latched stream again"
    )
    assert not any(p.tag == "wrongport" for p in rx.packets())
    assert 41002 not in lt.queued_from(REMOTE)  # dropped in the kernel, not by us
    assert lt.engine.get_rule("alg", r.id).remote_port == 41000


def test_dead_reader_with_bypass_degrades_to_address_only(latching: Latching) -> None:
    lt, g = latching, latching.g
    b, r = lt.call(Direction.INBOUND)
    lt.driver.latch_close()  # nobody listens on the queue any more
    rx = traffic.recv(g.lab, g.inside, INSIDE, 4000)
    lt.send(OTHER, 41000, b, "other", count=20).wait()
    lt.send(REMOTE, 41000, b, "a", count=10).wait()
    lt.send(REMOTE, 43000, b, "b", count=10)
    wait_until(  # nobody serves the queue now: plain polling under a deadline
        lambda: sum(p.tag == "b" for p in rx.packets()) >= 10, 10, what="fallback stream"
    )
    # Any port of the signalled address passes (bypass), other addresses still do not,
    # and nothing was learnt.
    assert {p.tag for p in rx.packets()} == {"a", "b"}
    assert lt.engine.get_rule("alg", r.id).remote_port is None
    assert ("udp", INSIDE, 4000, REMOTE) in lt.sets()["in4a"]
