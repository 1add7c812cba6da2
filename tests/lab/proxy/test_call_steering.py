"""Call-ID steering (alg.call_steering) on the real kernel: in a lab namespace, worker
sockets of one SO_REUSEPORT group, bound in a random order, each receive exactly the
datagrams whose call `alg.affinity.owner` gives them, in every form a Call-ID may take;
what the program cannot place (no Call-ID, or one past the scanned bytes) is still
delivered; a worker that leaves and comes back gets its calls again."""

from __future__ import annotations

import contextlib
import random
import select
import socket
from collections.abc import Iterator

import pytest

from alg.affinity import owner
from alg.call_steering import SCAN_BYTES, GroupSteering
from labs.netns import Lab
from labs.nsock import socket_in

pytestmark = pytest.mark.netns

PORT = 5060
SO_RCVBUFFORCE = 33  # asm-generic/socket.h


def message(call_id: str, form: int, padding: int = 0) -> bytes:
    """A request or response with `call_id` written in one of several legal forms."""
    header = [
        f"Call-ID: {call_id}",
        f"i:{call_id}",
        f"cAlL-iD \t:  {call_id}  ",
        f"call-id:{call_id}",
    ][form % 4]
    start = "SIP/2.0 180 Ringing" if form % 2 else "INVITE sip:bob@203.0.113.20 SIP/2.0"
    lines = [
        start,
        "Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-" + call_id,
        *(["X-Padding: " + "p" * padding] if padding else []),
        "Contact: <sip:alice@10.77.0.10>",  # a header that starts like "Call-ID"
        "CSeq: 1 INVITE",  # and one that starts with "C" too
        "In-Reply-To: 1@example.com",  # and one that starts like "i"
        header,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def host() -> Iterator[str]:
    with Lab("sst") as lab:
        yield lab.add_host("h")


def group_sockets(host: str, group: GroupSteering, indexes: list[int]) -> dict[int, socket.socket]:
    sockets = {}
    for index in indexes:
        sock = socket_in(host)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # the burst must fit
        sock.bind(("127.0.0.1", PORT))
        sock.setblocking(False)
        group.join(sock, index)
        sockets[index] = sock
    return sockets


@contextlib.contextmanager
def steered(
    host: str, workers: int, indexes: list[int]
) -> Iterator[tuple[GroupSteering, dict[int, socket.socket]]]:
    """A steering group for `workers` and sockets joined in the order `indexes`; all
    closed afterwards."""
    group = GroupSteering.create(workers)
    sockets: dict[int, socket.socket] = {}
    try:
        sockets.update(group_sockets(host, group, indexes))
        yield group, sockets
    finally:
        for sock in sockets.values():
            sock.close()
        group.close()


def exchange(
    host: str, sockets: dict[int, socket.socket], datagrams: list[bytes]
) -> dict[int, list[bytes]]:
    """Send `datagrams` from one source; what each socket received, once all arrived."""
    sender = socket_in(host)
    try:
        for data in datagrams:
            sender.sendto(data, ("127.0.0.1", PORT))
    finally:
        sender.close()
    received: dict[int, list[bytes]] = {index: [] for index in sockets}
    by_fd = {sock.fileno(): index for index, sock in sockets.items()}
    poller = select.poll()
    for sock in sockets.values():
        poller.register(sock, select.POLLIN)
    while sum(map(len, received.values())) < len(datagrams):
        ready = poller.poll(5000)
        assert ready, f"only {sum(map(len, received.values()))} of {len(datagrams)} arrived"
        for fd, _ in ready:
            received[by_fd[fd]].append(sockets[by_fd[fd]].recv(65535))
    return received


@pytest.mark.parametrize("workers", [2, 3])
def test_each_datagram_reaches_the_worker_owning_its_call(host: str, workers: int) -> None:
    indexes = list(range(workers))
    random.Random(workers).shuffle(indexes)  # the group's own order is not the workers'
    with steered(host, workers, indexes) as (_, sockets):
        datagrams = [
            message(f"{n}-{4242 + n % 3}@10.77.0.10", form=n, padding=(n * 37) % 600)
            for n in range(400)
        ]
        received = exchange(host, sockets, datagrams)
        for index, got in received.items():
            assert all(owner(data, workers) == index for data in got), index
            assert len(got) > 0.6 * 400 / workers  # and the calls are spread over all


def test_what_cannot_be_placed_is_still_delivered(host: str) -> None:
    with steered(host, 2, [0, 1]) as (_, sockets):
        far = message("far@10.77.0.10", form=0, padding=SCAN_BYTES)
        assert far.index(b"Call-ID") > SCAN_BYTES and owner(far, 2) is not None
        unplaced = [
            far,
            b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-1\r\n\r\n",
            b"OPTIONS sip:x SIP/2.0\r\nCall-ID:   \r\n\r\n",  # an empty value
            b"junk",
            b"",
        ]
        received = exchange(host, sockets, unplaced * 20)
        assert sorted(d for got in received.values() for d in got) == sorted(unplaced * 20)


def test_a_worker_that_comes_back_gets_its_calls_again(host: str) -> None:
    with steered(host, 2, [0, 1]) as (group, sockets):
        datagrams = [message(f"back-{n}@10.77.0.10", form=n) for n in range(200)]
        sockets.pop(0).close()  # worker 0 exits: its slot empties, nothing is lost
        assert not group.slot_taken(0) and group.slot_taken(1)
        received = exchange(host, sockets, datagrams)
        assert len(received[1]) == 200
        sockets.update(group_sockets(host, group, [0]))  # it is started again
        received = exchange(host, sockets, datagrams)
        for index, got in received.items():
            assert got and all(owner(data, 2) == index for data in got)
