"""PortWatch: one warning when an address's free ports fall under the low mark, one
notice when they are back over the ok mark, nothing in between."""

from __future__ import annotations

import pytest

from filter_agent.allocator import PortUsage
from filter_agent.model import Protocol
from filter_agent.port_watch import PortWatch

A, B = "203.0.113.1", "203.0.113.2"
UDP, TCP = Protocol.UDP, Protocol.TCP


def free(n: int, total: int = 100) -> PortUsage:
    return PortUsage(total, total - n, 0)


def edges(watch: PortWatch, *usages: tuple[str, Protocol, PortUsage]) -> list[tuple[str, bool]]:
    return [(f"{a.address} {a.protocol.value}", a.low) for a in watch.check(usages)]


def test_low_is_reported_once_and_ok_only_past_the_ok_mark() -> None:
    watch = PortWatch(low=0.10, ok=0.20)
    assert edges(watch, (A, UDP, free(10))) == []  # 10 %: not under the low mark
    assert edges(watch, (A, UDP, free(9))) == [(f"{A} udp", True)]
    assert edges(watch, (A, UDP, free(0))) == []  # still low: no repeat
    assert edges(watch, (A, UDP, free(19))) == []  # between the marks: still low
    assert edges(watch, (A, UDP, free(20))) == [(f"{A} udp", False)]
    assert edges(watch, (A, UDP, free(15))) == []  # between the marks, coming from ok
    assert edges(watch, (A, UDP, free(5))) == [(f"{A} udp", True)]


def test_quarantined_ports_are_not_free() -> None:
    watch = PortWatch()
    assert edges(watch, (A, UDP, PortUsage(100, 10, 85))) == [(f"{A} udp", True)]


def test_each_address_and_protocol_is_watched_on_its_own() -> None:
    watch = PortWatch()
    got = edges(watch, (A, UDP, free(1)), (A, TCP, free(50)), (B, UDP, free(2)))
    assert got == [(f"{A} udp", True), (f"{B} udp", True)]
    got = edges(watch, (A, UDP, free(1)), (A, TCP, free(1)), (B, UDP, free(60)))
    assert got == [(f"{A} tcp", True), (f"{B} udp", False)]


def test_marks_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        PortWatch(low=0.3, ok=0.2)
