"""Call-ID affinity between the workers of a stateful proxy (`[proxy] workers`, alg.workers).

A stateful proxy's state — server and client transactions, the dialogs they make — is in
one worker's memory. Every message of a call carries the call's Call-ID (RFC 3261 §8.1.1.4:
the same in every request and response of the dialog, its retransmissions, its CANCEL
and ACK), so the call is owned by worker `alg.call_hash.call_worker(Call-ID, N)`. The
kernel delivers most datagrams to their owner in the first place (alg.call_steering); one
it could not place (no Call-ID near the start, the owner restarting, or a kernel without
the steering program, where datagrams are spread at random) may land on another worker,
which hands it over on a unix socket, with the side and the source it came from; the
owner handles it as if it had read it itself, and answers from the shared port. A message
without a readable Call-ID stays where it landed: the core answers it 400 (or drops it)
without needing any state.

Hand-offs travel on unix stream connections, one from each worker to each other (opened
at the first hand-off, again after a peer restarted), framed by a 4-byte length. Not unix
datagrams: the kernel queues at most `net.unix.max_dgram_qlen` (10 by default) on an
unconnected datagram socket and refuses the rest, so every burst lost calls (measured:
0.4 % failed at 800 calls/s). The listening sockets are in the abstract namespace
(unix(7)), named after the supervisor's pid and the worker's index, so they vanish with
the processes and two proxies on one host never meet. A hand-off that cannot be sent
(the owner is restarting, or `MAX_BACKLOG` bytes already wait for it) is dropped, as the
network may drop any UDP datagram: the sender retransmits (§17.1.1.2). Cost: one header
scan per datagram (Call-ID is in the first lines of every message) and, for each datagram
handed over, one write and one read through the kernel.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections import Counter
from collections.abc import Callable
from typing import Final

from alg.call_hash import call_worker
from alg.proxy_model import SIDES, Endpoint, Side

log = logging.getLogger("sipwall.alg.affinity")

# RFC 3261 §7.3.3 compact form "i"; header names are case-insensitive (§7.3.1)
# The value ends at whitespace: a Call-ID is `word ["@" word]` (RFC 3261 §25.1), and the
# kernel's scanner (alg.call_steering) stops there too.
_CALL_ID: Final = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^ \t\r\n]*)", re.IGNORECASE)
_HEADER: Final = struct.Struct("!BHB")  # side, source port, source host length
_SIDE_CODES: Final = {side: code for code, side in enumerate(SIDES)}


def owner(data: bytes, workers: int) -> int | None:
    """The worker owning the call `data` belongs to; None when its Call-ID is unreadable."""
    end = data.find(b"\r\n\r\n")
    match = _CALL_ID.search(data, 0, end if end >= 0 else len(data))
    if match is None:
        return None
    call_id = match.group(1)
    if not call_id:
        return None
    return call_worker(call_id, workers)


def handoff_address(group: int, index: int) -> str:
    return f"\0sipwall-alg-{group}-{index}"


def encode(data: bytes, source: Endpoint) -> bytes:
    host = source.host.encode("ascii")
    return _HEADER.pack(_SIDE_CODES[source.side], source.port, len(host)) + host + data


def decode(frame: bytes) -> tuple[bytes, Endpoint]:
    code, port, length = _HEADER.unpack_from(frame)
    start = _HEADER.size
    host = frame[start : start + length].decode("ascii")
    side: Side = SIDES[code]
    return frame[start + length :], Endpoint(side, "UDP", host, port)


_LENGTH: Final = struct.Struct("!I")
MAX_BACKLOG: Final = 4 * 1024 * 1024  # bytes waiting for one peer before we drop
MAX_PENDING: Final = 1024  # frames kept while the connection to a peer is being opened


class _Inbound(asyncio.Protocol):
    """One peer's connection to us: length-prefixed frames, each delivered in turn."""

    def __init__(self, affinity: Affinity) -> None:
        self.affinity = affinity
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        at = 0
        while len(buffer) - at >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, at)
            end = at + _LENGTH.size + size
            if len(buffer) < end:
                break
            self.affinity.take(bytes(buffer[at + _LENGTH.size : end]))
            at = end
        del buffer[:at]


class _Link:
    """Our connection to peer `target`: frames queue while it opens."""

    def __init__(self, affinity: Affinity, target: int) -> None:
        self.affinity = affinity
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] | None = []  # None once connected
        self.task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        address = handoff_address(self.affinity.group, self.target)
        try:
            transport, _ = await asyncio.get_running_loop().create_unix_connection(
                asyncio.Protocol, address
            )
        except OSError as exc:
            self.affinity.lost(self, len(self.pending or ()), exc)
            return
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        pending, self.pending = self.pending or [], None
        transport.write(b"".join(pending))

    def send(self, frame: bytes) -> bool:
        if self.pending is not None:
            if len(self.pending) >= MAX_PENDING:
                return False
            self.pending.append(frame)
            return True
        transport = self.transport
        if transport is None or transport.is_closing():
            self.affinity.lost(self, 0, None)
            return False
        if transport.get_write_buffer_size() > MAX_BACKLOG:
            return False
        transport.write(frame)
        return True

    def close(self) -> None:
        self.task.cancel()
        if self.transport is not None:
            self.transport.close()


class Affinity:
    """Worker `index` of `workers` in group `group`: `route` each received datagram to
    its owner; ours, and what other workers hand us once `start` listens, go to
    `deliver`."""

    def __init__(
        self,
        group: int,
        index: int,
        workers: int,
        stats: Counter[str],
        deliver: Callable[[bytes, Endpoint], None],
    ) -> None:
        self.group, self.index, self.workers = group, index, workers
        self.stats = stats  # the core's: the counts land in the stats file
        self.deliver = deliver
        self._links: dict[int, _Link] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _Inbound(self), handoff_address(self.group, self.index)
        )

    def route(self, data: bytes, source: Endpoint) -> None:
        target = owner(data, self.workers)
        if target is None or target == self.index:
            self.deliver(data, source)
            return
        link = self._links.get(target)
        if link is None:
            link = self._links[target] = _Link(self, target)
        frame = encode(data, source)
        if link.send(_LENGTH.pack(len(frame)) + frame):
            self.stats["affinity.handed_off"] += 1
        else:
            self.stats["affinity.dropped"] += 1

    def take(self, frame: bytes) -> None:
        """A frame another worker handed us."""
        try:
            data, source = decode(frame)
        except (struct.error, UnicodeDecodeError, IndexError):
            log.warning("bad hand-off frame of %d bytes ignored", len(frame))
            return
        self.stats["affinity.taken_over"] += 1
        self.deliver(data, source)

    def lost(self, link: _Link, frames: int, exc: OSError | None) -> None:
        """The connection to a peer failed or closed: forget it (the next hand-off opens
        a new one, to the restarted worker)."""
        if self._links.get(link.target) is link:
            del self._links[link.target]
        link.close()
        self.stats["affinity.dropped"] += frames
        log.debug("hand-off link to worker %d lost: %s", link.target, exc)

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        if self._server is not None:
            self._server.close()
