"""The `basic` scenario through the pytest fixture: LAN segments bridge, the gateway routes,
and its default policy drops forwarded traffic unless the agent's ct mark is on it."""

from __future__ import annotations

import socket

import pytest

from labs.nsock import socket_in
from labs.pytest_plugin import lab_fixture

pytestmark = pytest.mark.netns

lab = lab_fixture("basic")


def _udp_reaches(lab, src_host: str, dst_host: str, dst_addr: str, port: int) -> bool:
    rx = socket_in(lab.ns(dst_host))
    tx = socket_in(lab.ns(src_host))
    with rx, tx:
        rx.bind((dst_addr, port))
        rx.settimeout(0.3)
        for _ in range(3):  # the first may wait for ARP; a drop stays a drop
            tx.sendto(b"probe", (dst_addr, port))
            try:
                return rx.recvfrom(64)[0] == b"probe"
            except TimeoutError:
                continue
        return False


def test_namespaces_and_state(lab) -> None:
    state = lab.state()
    assert state.phase == "up"
    assert sorted(state.namespaces) == sorted(lab.ns(h.name) for h in lab.topology.hosts)
    out = lab.run("alice", ["ip", "route"]).stdout
    assert "default via 10.77.0.1" in out


def test_lan_and_wan_segments_are_bridged(lab) -> None:
    assert _udp_reaches(lab, "alice", "bob", "10.77.0.11", 4000)
    assert _udp_reaches(lab, "alice", "gw", "10.77.0.1", 4001)
    assert _udp_reaches(lab, "carol", "dave", "203.0.113.21", 4002)
    assert _udp_reaches(lab, "carol", "gw", "203.0.113.1", 4003)


def test_forward_drop_unless_the_agent_marked_the_flow(lab) -> None:
    assert not _udp_reaches(lab, "alice", "carol", "203.0.113.20", 5000)
    # stand-in for the agent's table: mark this one flow at priority 0, as the agent does
    mark = (
        "table inet sipwall_test { chain agent { type filter hook forward priority 0; "
        "udp dport 5001 ct mark set ct mark | 0x00200000; }; }"
    )
    lab.run("gw", ["nft", mark])
    try:
        assert _udp_reaches(lab, "alice", "carol", "203.0.113.20", 5001)
        assert not _udp_reaches(lab, "alice", "carol", "203.0.113.20", 5002)
    finally:
        lab.run("gw", ["nft", "delete", "table", "inet", "sipwall_test"])


def test_no_lab_address_leaks_to_the_root_namespace(lab) -> None:
    root = socket.if_nameindex()
    assert not any(name in {"lan0", "wan0"} for _, name in root)
