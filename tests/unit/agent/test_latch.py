"""Latching without a kernel: packet parsing, decisions, Engine.latch on the fake driver,
the Latcher loop with a scripted packet source, and the queue-path choice."""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filter_agent import ops
from filter_agent.allocator import Allocator, PoolConfig
from filter_agent.drivers.fake import FakeNftDriver
from filter_agent.engine import Engine, FlowMatch
from filter_agent.errors import AgentError, Reason
from filter_agent.latch import (
    Decision,
    Flow,
    Latcher,
    QueuedPacket,
    decide,
    latched_rule,
    parse_ipv4,
)
from filter_agent.model import Binding, BindingKind, Direction, Rule
from filter_agent.model import Protocol as Transport

INSIDE, PUBLIC = "10.77.0.10", "203.0.113.1"
REMOTE, OTHER = "203.0.113.20", "203.0.113.30"
UDP = Transport.UDP


class RecordingFlusher:
    def __init__(self) -> None:
        self.flows: list[FlowMatch] = []

    def flush(self, flows: Any) -> None:
        self.flows.extend(flows)


class ScriptedSource:
    """A PacketSource that hands out prepared packets and records verdicts."""

    def __init__(self, packets: Sequence[QueuedPacket] = ()) -> None:
        self.packets = list(packets)
        self.verdicts: dict[int, bool] = {}

    def poll(self, timeout: float) -> list[QueuedPacket]:
        out, self.packets = self.packets, []
        return out

    def verdict(self, packet_id: int, accept: bool) -> None:
        assert packet_id not in self.verdicts, "one verdict per packet"
        self.verdicts[packet_id] = accept


def make() -> tuple[Engine, FakeNftDriver, RecordingFlusher]:
    fake = FakeNftDriver()
    flusher = RecordingFlusher()
    alloc = Allocator(PoolConfig((PUBLIC,), 20000, 20099), random.Random(5))
    engine = Engine(alloc, fake, flusher=flusher)
    engine.setup()
    return engine, fake, flusher


def call(
    engine: Engine,
    remote_port: int | None = None,
    direction: Direction = Direction.BOTH,
    kind: BindingKind = BindingKind.RTP_PAIR,
) -> tuple[Binding, Rule]:
    b = engine.reserve_binding("alg", ops.ReserveBinding("c1", INSIDE, 4000, kind=kind), 0)
    r = engine.enable_rule(
        "alg", ops.EnableRule(b.id, REMOTE, remote_port, direction, lifetime=100), 0
    )
    return b, r


def flow(src: str = REMOTE, sport: int = 41000, dport: int = 4000) -> Flow:
    return Flow(UDP, src, sport, INSIDE, dport)


def pinholes(fake: FakeNftDriver) -> set[tuple[str, tuple[Any, ...], int | None]]:
    return {(e.set, e.key, e.timeout) for e in fake.elements() if e.set not in ("dnat4", "snat4")}


# -- parsing ----------------------------------------------------------------------------------


def ipv4(src: str, dst: str, proto: int, sport: int, dport: int, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + 8,
        1,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + options + struct.pack("!HHHH", sport, dport, 8, 0)


@given(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=4).map(str),
    st.sampled_from([(17, Transport.UDP), (6, Transport.TCP)]),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.integers(0, 10),
)
def test_parse_ipv4_reads_the_five_tuple(
    src: str, dst: str, proto: tuple[int, Transport], sport: int, dport: int, words: int
) -> None:
    data = ipv4(src, dst, proto[0], sport, dport, b"\x01" * 4 * words)
    assert parse_ipv4(data) == Flow(proto[1], src, sport, dst, dport)
    assert parse_ipv4(data[: 20 + 4 * words + 3]) is None  # ports cut off


def test_parse_ipv4_refuses_what_it_cannot_latch_on() -> None:
    good = ipv4(REMOTE, INSIDE, 17, 1, 2)
    assert parse_ipv4(good) is not None
    assert parse_ipv4(ipv4(REMOTE, INSIDE, 1, 1, 2)) is None  # ICMP
    assert parse_ipv4(b"\x60" + good[1:]) is None  # IPv6 version nibble
    assert parse_ipv4(good[:19]) is None
    later_fragment = good[:6] + struct.pack("!H", 0x0010) + good[8:]
    assert parse_ipv4(later_fragment) is None


# -- decisions -------------------------------------------------------------------------------


def rules(engine: Engine) -> list[tuple[Rule, Binding]]:
    return engine.live_rules()


def test_decide_learns_from_the_signalled_address_only() -> None:
    engine, _, _ = make()
    _, r = call(engine)
    d = decide(flow(), rules(engine))
    assert d.accept and d.learn == ((r.id, 41000),)
    assert decide(flow(src=OTHER), rules(engine)).accept is False
    assert decide(flow(src=OTHER), rules(engine)).learn == ()
    assert decide(flow(dport=4002), rules(engine)).accept is False  # not a bound port
    assert decide(Flow(Transport.TCP, REMOTE, 41000, INSIDE, 4000), rules(engine)).learn == ()
    assert decide(None, rules(engine)).accept is False


def test_decide_rtcp_first_latches_the_pair_by_offset() -> None:
    engine, _, _ = make()
    _, r = call(engine)
    assert decide(flow(sport=41001, dport=4001), rules(engine)).learn == ((r.id, 41000),)
    # Port 1 on the RTCP port would mean remote RTP port 0: not a port, dropped.
    assert decide(flow(sport=1, dport=4001), rules(engine)) == Decision(
        False, (), "no port-unknown rule for this remote"
    )
    # Learning 65535 on RTP would need 65536 for RTCP.
    assert decide(flow(sport=65535), rules(engine)).accept is False


def test_decide_after_latch_accepts_that_port_and_drops_others() -> None:
    engine, _, _ = make()
    _, r = call(engine)
    engine.latch(r.id, 41000, now=1)
    same = decide(flow(), rules(engine))
    assert same.accept and same.learn == () and same.reason == "already latched to this port"
    other = decide(flow(sport=41002), rules(engine))
    assert not other.accept and other.reason == "latched to another port"
    assert decide(flow(sport=41001, dport=4001), rules(engine)).accept  # RTCP of the pair


def test_outbound_only_rules_never_latch() -> None:
    engine, _, _ = make()
    call(engine, direction=Direction.OUTBOUND)
    assert decide(flow(), rules(engine)).accept is False


# -- Engine.latch ------------------------------------------------------------------------------


def test_latch_swaps_address_only_for_exact_same_expiry_no_flush() -> None:
    engine, fake, flusher = make()
    _, r = call(engine)
    assert {s for s, _, _ in pinholes(fake)} == {"in4a", "out4a"}
    fake.now = 40
    latched = engine.latch(r.id, 41000, now=40)
    assert latched.remote_port == 41000 and latched.expires_at == r.expires_at == 100
    assert engine.get_rule("alg", r.id) == latched
    assert pinholes(fake) == {
        ("in4", ("udp", INSIDE, 4000, REMOTE, 41000), 60),
        ("in4", ("udp", INSIDE, 4001, REMOTE, 41001), 60),
        ("out4", ("udp", INSIDE, 4000, REMOTE, 41000), 60),
        ("out4", ("udp", INSIDE, 4001, REMOTE, 41001), 60),
    }
    assert flusher.flows == []  # the flow that latched is the media
    # From now on it is an ordinary exact rule: counters, release, flush by remote port.
    fake.count("in4", ("udp", INSIDE, 4000, REMOTE, 41000), 7, 700)
    engine.observe(41)
    assert engine.counters("alg", r.id).packets == 7
    engine.change_lifetime("alg", r.id, 0, now=42)
    assert pinholes(fake) == set()
    assert {(f.remote_addr, f.remote_port) for f in flusher.flows} == {
        (REMOTE, 41000),
        (REMOTE, 41001),
    }


def test_latch_is_one_transaction_and_idempotent() -> None:
    engine, fake, _ = make()
    _, r = call(engine)
    before = len(fake.log)
    engine.latch(r.id, 41000, now=1)
    assert len(fake.log) == before + 1
    assert engine.latch(r.id, 41000, now=2).remote_port == 41000
    assert len(fake.log) == before + 1  # nothing to do, nothing sent
    with pytest.raises(AgentError) as err:
        engine.latch(r.id, 41002, now=3)
    assert err.value.reason is Reason.CONFLICT
    with pytest.raises(AgentError) as err:
        engine.latch("r999", 41000, now=3)
    assert err.value.reason is Reason.NOT_FOUND


def test_latch_refused_by_the_kernel_changes_nothing() -> None:
    engine, fake, _ = make()
    _, r = call(engine)
    kernel = fake.elements()
    fake.fail_next = "ENOMEM"
    with pytest.raises(AgentError) as err:
        engine.latch(r.id, 41000, now=1)
    assert err.value.reason is Reason.NETWORK_FAILURE
    assert engine.get_rule("alg", r.id) == r and fake.elements() == kernel
    # The books are intact: releasing or latching later still works.
    assert engine.latch(r.id, 41000, now=2).remote_port == 41000
    engine.change_group_lifetime("alg", "c1", 0, now=3)
    assert fake.elements() == ()


def test_latch_refuses_what_another_rule_already_opens() -> None:
    engine, _, _ = make()
    b, r = call(engine)
    engine.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 41000, Direction.BOTH), 0)
    with pytest.raises(AgentError) as err:
        engine.latch(r.id, 41000, now=1)
    assert err.value.reason is Reason.CONFLICT
    with pytest.raises(AgentError) as err:
        latched_rule(r, b, [], 65535)  # RTCP would be 65536
    assert err.value.reason is Reason.MALFORMED


# -- the loop ----------------------------------------------------------------------------------


def test_latcher_verdicts_and_latches_once() -> None:
    engine, fake, _ = make()
    _, r = call(engine)
    source = ScriptedSource(
        [
            QueuedPacket(1, flow()),  # first packet: latch, accept
            QueuedPacket(2, flow()),  # queued before the swap committed: accept
            QueuedPacket(3, flow(sport=41002)),  # another port of the same remote: drop
            QueuedPacket(4, flow(src=OTHER)),  # never queued by the kernel; dropped anyway
            QueuedPacket(5, None),  # unparseable
        ]
    )
    latcher = Latcher(engine, source, clock=lambda: 5.0)
    events = latcher.serve(0)
    assert source.verdicts == {1: True, 2: True, 3: False, 4: False, 5: False}
    assert [e.latched for e in events] == [(r.id,), (), (), (), ()]
    assert engine.get_rule("alg", r.id).remote_port == 41000
    assert [e.at for e in latcher.history] == [5.0] * 5
    assert ("in4", ("udp", INSIDE, 4000, REMOTE, 41000), 95) in pinholes(fake)


def test_latcher_accepts_but_does_not_latch_when_the_kernel_fails() -> None:
    engine, fake, _ = make()
    _, r = call(engine)
    source = ScriptedSource([QueuedPacket(1, flow())])
    fake.fail_next = "EBUSY"
    event = Latcher(engine, source, clock=lambda: 1.0).serve(0)[0]
    assert source.verdicts == {1: True} and event.latched == ()
    assert engine.get_rule("alg", r.id).remote_port is None
    source.packets = [QueuedPacket(2, flow())]  # the next packet tries again
    assert Latcher(engine, source, clock=lambda: 2.0).serve(0)[0].latched == (r.id,)


def test_latcher_never_latches_onto_another_rules_pinhole() -> None:
    engine, _, _ = make()
    b, r = call(engine, direction=Direction.INBOUND)
    engine.enable_rule("alg", ops.EnableRule(b.id, REMOTE, 41000, Direction.INBOUND), 0)
    # The kernel accepts 41000 by the exact rule and never queues it; if it did (a race),
    # the engine refuses the duplicate latch and the exact rule still lets it pass.
    source = ScriptedSource([QueuedPacket(1, flow()), QueuedPacket(2, flow(sport=41002))])
    events = Latcher(engine, source, clock=lambda: 1.0).serve(0)
    assert events[0].decision.learn == ((r.id, 41000),) and events[0].latched == ()
    assert source.verdicts == {1: True, 2: True}  # 41002 latches the port-unknown rule
    assert engine.get_rule("alg", r.id).remote_port == 41002


def test_serve_until_has_a_deadline() -> None:
    engine, _, _ = make()
    ticks = iter(range(1000))
    latcher = Latcher(engine, ScriptedSource(), clock=lambda: float(next(ticks)))
    with pytest.raises(TimeoutError):
        latcher.serve_until(lambda: False, timeout=3, what="never")
