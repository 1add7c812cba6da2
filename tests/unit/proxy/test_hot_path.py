"""The proxy's per-call shortcuts (issue #4) keep its behaviour.

* a forwarded request is parsed again only when a CANCEL or the ACK of a non-2xx needs
  its fields, and those are still right;
* tags and branches come from a pool of os.urandom bytes that a forked child replaces;
* the UDP shell reads what is queued after a wake-up, in bounded batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from proxy_harness import ALICE, BOB, StaticRouter, config, invite, sent_to

import alg.proxy_state
from alg.aio import UDP_READ_BATCH, _bound_udp_socket, _Datagrams
from alg.builders import build_response, new_tag, random_hex
from alg.forwarding import new_branch
from alg.proxy import ProxyCore
from alg.proxy_model import Endpoint
from alg.proxy_state import TimerHeap
from alg.sip import SipMessage, parse_message
from alg.transactions import Kind, Transaction


@pytest.fixture
def branch_parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every parse of a forwarded request kept by a client branch."""
    seen: list[bytes] = []
    real = parse_message

    def counting(data: bytes) -> SipMessage:
        seen.append(data)
        return real(data)

    monkeypatch.setattr(alg.proxy_state, "parse_message", counting)
    yield seen


def _core() -> ProxyCore:
    return ProxyCore(config(), StaticRouter({"bob": [BOB]}))


@pytest.mark.interpreted_only  # counts calls inside compiled code / duck-typed owners
def test_an_answered_call_never_parses_its_forwarded_invite(branch_parses: list[bytes]) -> None:
    core = _core()
    (forwarded,) = sent_to(core.receive(invite(), ALICE, 0.0), BOB)
    for status in (180, 200):
        response = build_response(forwarded, status, to_tag="b1")
        assert [m.status for m in sent_to(core.receive(response, BOB, 0.1), ALICE)] == [status]
    assert branch_parses == []


@pytest.mark.interpreted_only  # counts calls inside compiled code / duck-typed owners
def test_the_ack_of_a_failure_parses_the_forwarded_invite_once(branch_parses: list[bytes]) -> None:
    core = _core()
    (forwarded,) = sent_to(core.receive(invite(), ALICE, 0.0), BOB)
    busy = build_response(forwarded, 486, to_tag="b1")
    (ack,) = sent_to(core.receive(busy, BOB, 0.1), BOB)
    (again,) = sent_to(core.receive(busy, BOB, 0.2), BOB)  # retransmitted 486: ACK again
    assert branch_parses == [forwarded.raw]
    for sent in (ack, again):
        assert sent.method == "ACK" and sent.top_via.branch == forwarded.top_via.branch
        assert str(sent.request_uri) == str(forwarded.request_uri) and sent.to.tag == "b1"


@pytest.mark.interpreted_only  # counts calls inside compiled code / duck-typed owners
def test_cancel_copies_the_forwarded_invite(branch_parses: list[bytes]) -> None:
    core = _core()
    (forwarded,) = sent_to(core.receive(invite(), ALICE, 0.0), BOB)
    core.receive(build_response(forwarded, 180, to_tag="b1"), BOB, 0.1)
    cancel = (
        invite()
        .split(b"\r\n\r\n")[0]
        .replace(b"INVITE sip:", b"CANCEL sip:")
        .replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
        .replace(b"Content-Type: application/sdp\r\n", b"")
        .split(b"Content-Length")[0]
        + b"Content-Length: 0\r\n\r\n"
    )
    (downstream,) = sent_to(core.receive(cancel, ALICE, 0.2), BOB)
    assert downstream.method == "CANCEL"
    assert downstream.top_via.branch == forwarded.top_via.branch
    assert downstream.cseq.number == forwarded.cseq.number
    assert len(branch_parses) == 1


def test_tags_and_branches_are_random_hex_and_distinct() -> None:
    tags = {new_tag() for _ in range(3000)}  # crosses several 4 KiB refills
    assert len(tags) == 3000 and all(len(t) == 12 and int(t, 16) >= 0 for t in tags)
    msg = parse_message(invite())
    branches = {new_branch(msg) for _ in range(1000)}
    assert len(branches) == 1000 and all(b.startswith("z9hG4bK") for b in branches)
    assert len(random_hex(5000)) == 10000  # larger than the pool


def test_a_forked_child_does_not_repeat_the_parents_random_bytes() -> None:
    random_hex(1)  # the pool now holds bytes the parent will hand out next
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next draw and leave at once
        try:
            os.write(writer, random_hex(16).encode())
        finally:
            os._exit(0)
    os.close(writer)
    child = os.read(reader, 64).decode()
    os.close(reader)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != random_hex(16)


class _QueuedSocket:
    """A non-blocking datagram socket with datagrams already queued (unit-test fake)."""

    def __init__(self, count: int, error_after: int | None = None) -> None:
        self.queue = [(f"m{i}".encode(), ("10.77.0.10", 5060 + i)) for i in range(count)]
        self.error_after = error_after
        self.reads = 0

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        self.reads += 1
        if self.error_after is not None and self.reads > self.error_after:
            raise ConnectionRefusedError("ICMP port unreachable")
        if not self.queue:
            raise BlockingIOError
        return self.queue.pop(0)


def _protocol(sock: _QueuedSocket) -> tuple[_Datagrams, list[tuple[bytes, Endpoint]]]:
    delivered: list[tuple[bytes, Endpoint]] = []
    protocol = _Datagrams(
        "inside",
        lambda data, source: delivered.append((data, source)),
        sock,  # type: ignore[arg-type]
    )
    return protocol, delivered


def test_a_wake_up_reads_what_is_queued_in_bounded_batches() -> None:
    sock = _QueuedSocket(UDP_READ_BATCH + 5)
    protocol, delivered = _protocol(sock)
    protocol.datagram_received(b"first", ("10.77.0.10", 5060))
    assert len(delivered) == 1 + UDP_READ_BATCH  # the rest waits for the next wake-up
    assert delivered[1] == (b"m0", Endpoint("inside", "UDP", "10.77.0.10", 5060))
    protocol.datagram_received(b"second", ("10.77.0.10", 5060))
    assert len(delivered) == 2 + UDP_READ_BATCH + 5 and not sock.queue


def test_a_socket_error_while_draining_is_reported_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock = _QueuedSocket(3, error_after=1)
    protocol, delivered = _protocol(sock)
    with caplog.at_level("DEBUG", logger="sipwall.alg.transport"):
        protocol.datagram_received(b"first", ("10.77.0.10", 5060))
    assert [data for data, _ in delivered] == [b"first", b"m0"]
    assert "port unreachable" in caplog.text


def test_a_host_name_is_left_for_asyncio_to_resolve_and_bind() -> None:
    # AI_NUMERICHOST: no DNS query is made; the literal case is the lab's
    # (tests/lab/proxy: the ALG in its namespace binds 10.77.0.1 and 203.0.113.1)
    assert _bound_udp_socket("sip.example.net", 5060) is None


@pytest.mark.parametrize(
    ("name", "udp", "tcp"),
    [
        # RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2; RFC 6026 §8.4 (L, M)
        ("B", 32.0, 32.0),
        ("F", 32.0, 32.0),
        ("H", 32.0, 32.0),
        ("L", 32.0, 32.0),
        ("M", 32.0, 32.0),
        ("D", 32.0, 0.0),
        ("I", 5.0, 0.0),
        ("J", 32.0, 0.0),
        ("K", 5.0, 0.0),
    ],
)
def test_wait_timer_intervals(name: str, udp: float, tcp: float) -> None:
    for reliable, expected in ((False, udp), (True, tcp)):
        txn = Transaction(Kind.INVITE_SERVER, reliable)
        assert txn._next_interval(name) == expected


class _Owner:
    """What the timer heap asks of a transaction: its deadline and the `scheduled` slot."""

    def __init__(self, deadline: float | None) -> None:
        self.at = deadline
        self.scheduled: float | None = None

    def deadline(self) -> float | None:
        return self.at


@pytest.mark.interpreted_only  # counts calls inside compiled code / duck-typed owners
def test_a_deadline_moved_later_wakes_nobody_at_the_old_one() -> None:
    heap = TimerHeap()
    owner = _Owner(0.5)  # e.g. Timer A
    heap.schedule(owner)  # type: ignore[arg-type]
    owner.at = 32.0  # a provisional stopped A; M is next
    heap.schedule(owner)  # type: ignore[arg-type]
    assert heap.next_deadline() == 32.0
    assert list(heap.due(1.0)) == []
    assert list(heap.due(32.0)) == [owner]
    assert list(heap.due(100.0)) == []  # each entry wakes its owner once


@pytest.mark.interpreted_only  # counts calls inside compiled code / duck-typed owners
def test_a_deadline_moved_earlier_or_cleared_is_followed() -> None:
    heap = TimerHeap()
    early, cleared = _Owner(10.0), _Owner(5.0)
    for owner in (early, cleared):
        heap.schedule(owner)  # type: ignore[arg-type]
    early.at, cleared.at = 2.0, None
    for owner in (early, cleared):
        heap.schedule(owner)  # type: ignore[arg-type]
    assert heap.next_deadline() == 2.0
    assert list(heap.due(20.0)) == [early]
    assert heap.next_deadline() is None


def test_an_answered_call_wakes_the_core_only_for_timers_that_fire() -> None:
    """Per transaction one wake-up, when its last timer (L, M, J, K) ends it."""
    core = _core()
    (forwarded,) = sent_to(core.receive(invite(), ALICE, 0.0), BOB)
    core.receive(build_response(forwarded, 180, to_tag="b1"), BOB, 0.1)
    core.receive(build_response(forwarded, 200, to_tag="b1"), BOB, 0.2)
    wakes = []
    while (deadline := core.get_timer()) is not None:
        wakes.append(deadline)
        core.handle_timer(deadline)
    # Timer A (0.5 s) was stopped by the 180: no wake-up at 0.5. Timers L (server, 2xx
    # sent) and M (client, 2xx received) both end 64*T1 after the 200: one wake-up.
    assert wakes == [pytest.approx(32.2)]
    assert core.transaction_count == 0
