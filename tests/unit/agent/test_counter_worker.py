"""The counter worker's wire format (the process itself runs in the lab tests)."""

from __future__ import annotations

from filter_agent.counter_worker import decode, encode
from filter_agent.plan import Element


def test_only_elements_with_traffic_cross_the_pipe() -> None:
    busy = Element("in4", ("udp", "10.77.0.10", 4000, "203.0.113.20", 5000), None, 60, 59, 7, 900)
    idle = Element("in4a", ("udp", "10.77.0.10", 4002, "203.0.113.20"), None, 60, 59, 0, 0)
    frame = encode([busy, idle])
    assert int.from_bytes(frame[:4], "little") == len(frame) - 4
    assert decode(frame[4:]) == [Element("in4", busy.key, packets=7, bytes=900)]
    assert decode(encode([])[4:]) == []
