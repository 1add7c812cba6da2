"""Latching: learn a pinhole's remote port from the first packet its remote sends.

Theory of operation
-------------------
MIDCOM (RFC 5189 §2.2) lets a policy rule name the remote address with the port unknown;
SBCs fill the gap by "latching" (RFC 7362 §4.2, symmetric RTP RFC 4961): the port the
remote's media comes *from* is the port to trust, and to send to. Here a port-unknown rule
starts with address-only elements; the kernel queues (NFQUEUE, see latch_plan.py) packets
that match one of them but no exact element, and this module decides each queued packet:

    queued packet (after DNAT: remote R:r -> inside I:i)        -> verdict, learned
    no inbound rule of a binding on I:i for R                   -> drop     (defensive:
                                                                   forward drops these)
    a port-unknown rule on I:i for R, offset k = i - first port -> accept,  port r - k
    a latched/exact rule on I:i for R with port + k == r        -> accept   (queued before
                                                                   the swap committed)
    only rules latched to other ports                           -> drop
    not IPv4 UDP/TCP, or r - k not a valid port range           -> drop

Learning is rule-wide: on an RTP pair the rule's port applies port by port (remote port +
offset, RFC 3550 §11), exactly as if the port had been signalled, so a first packet on
RTCP latches RTP too. Only inbound-capable rules latch (outbound-only rules never see the
remote's source port). After `Engine.latch` the rule is an ordinary exact rule, in both
directions: symmetric RTP sends to the port it receives from.

If the transaction fails (kernel trouble) the packet is still accepted: it matched the
address-only pinhole, the rule stays port-unknown and the next packet tries again. A
refusal by the engine (CONFLICT: another rule already owns that exact pinhole) latches
nothing; the packet then passes only if an exact rule allows it.

The verdict follows the commit, so a packet that arrives after the exact element exists
takes the fast path and may overtake the one or two still queued (reordering, never loss;
RTP receivers reorder by sequence number). Committing first is what keeps the set of
queued packets small.

`decide` and `Latcher.handle` are sans-I/O (explicit `now`); `NfqueueReader` is the thin
shell over netfilterqueue and `Latcher.serve` the loop step that reads a clock.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import select
import struct
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from filter_agent.errors import AgentError, DriverError, Reason
from filter_agent.model import Binding, Rule, check_port
from filter_agent.model import Protocol as Transport

if TYPE_CHECKING:
    from filter_agent.engine import Engine

log = logging.getLogger("sipwall.agent.latch")

_TRANSPORT = {17: Transport.UDP, 6: Transport.TCP}
HEADER_BYTES = 128  # copied to userspace per queued packet: IPv4 header (<= 60) + ports


@dataclass(frozen=True)
class Flow:
    """A queued packet's 5-tuple as the forward hook sees it (destination already DNATed)."""

    protocol: Transport
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(frozen=True)
class QueuedPacket:
    id: int  # the kernel's packet id within its queue, for the verdict
    flow: Flow | None  # None: not something we can latch on (dropped)


@dataclass(frozen=True)
class Decision:
    accept: bool  # the verdict once every latch in `learn` is installed
    learn: tuple[tuple[str, int], ...]  # (rule id, remote port) to latch, sorted
    reason: str
    exact: bool = False  # an exact (or already latched) rule allows it whatever happens


def parse_ipv4(data: bytes) -> Flow | None:
    """The 5-tuple of an IPv4 UDP/TCP packet (headers only are enough), else None."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    protocol = _TRANSPORT.get(data[9])
    (frag,) = struct.unpack_from("!H", data, 6)
    if ihl < 20 or len(data) < ihl + 4 or protocol is None or frag & 0x1FFF:
        return None
    sport, dport = struct.unpack_from("!HH", data, ihl)
    src = str(ipaddress.IPv4Address(data[12:16]))
    dst = str(ipaddress.IPv4Address(data[16:20]))
    return Flow(protocol, src, sport, dst, dport)


def decide(flow: Flow | None, rules: Iterable[tuple[Rule, Binding]]) -> Decision:
    """The verdict for one queued packet, and what it teaches (table in the docstring)."""
    if flow is None:
        return Decision(False, (), "not an IPv4 UDP/TCP first fragment")
    learn: list[tuple[str, int]] = []
    exact = False
    latched_elsewhere = False
    for rule, binding in rules:
        offset = flow.dport - binding.internal_port
        if not (
            rule.direction.inbound
            and binding.protocol is flow.protocol
            and binding.internal_addr == flow.dst
            and rule.remote_addr == flow.src
            and 0 <= offset < len(binding.external_ports)
        ):
            continue
        if rule.remote_port is None:
            port = flow.sport - offset
            if port >= 1 and port + len(binding.external_ports) - 1 <= 0xFFFF:
                learn.append((rule.id, port))
        elif rule.remote_port + offset == flow.sport:
            exact = True
        else:
            latched_elsewhere = True
    if learn:
        return Decision(True, tuple(sorted(learn)), "latch", exact)
    if exact:
        return Decision(True, (), "already latched to this port", exact)
    if latched_elsewhere:
        return Decision(False, (), "latched to another port")
    return Decision(False, (), "no port-unknown rule for this remote")


def latched_rule(rule: Rule, binding: Binding, siblings: Iterable[Rule], remote_port: int) -> Rule:
    """`rule` narrowed to `remote_port` (what `Engine.latch` installs), or the rule itself
    if it already has that port. CONFLICT if it was latched to another port or another
    rule of the binding already opens the same exact pinhole (their elements would
    collide, and closing one would close the other)."""
    if rule.remote_port is not None:
        if rule.remote_port == remote_port:
            return rule
        raise AgentError(Reason.CONFLICT, f"rule {rule.id} is latched to {rule.remote_port}")
    check_port(remote_port, "remote port")
    check_port(remote_port + len(binding.external_ports) - 1, "remote port")
    for other in siblings:
        if other.binding_id == rule.binding_id and (
            other.remote_addr,
            other.remote_port,
            other.direction,
        ) == (rule.remote_addr, remote_port, rule.direction):
            raise AgentError(Reason.CONFLICT, f"rule {other.id} already opens this pinhole")
    return replace(rule, remote_port=remote_port)


# -- the loop --------------------------------------------------------------------------------


class PacketSource(Protocol):
    """Where queued packets come from and verdicts go: `NfqueueReader` in the agent's
    process, `NetnsDriver` (its worker holds the reader) in lab tests."""

    def poll(self, timeout: float) -> Sequence[QueuedPacket]:
        """Packets queued so far, waiting up to `timeout` seconds for the first one."""

    def verdict(self, packet_id: int, accept: bool) -> None: ...


@dataclass(frozen=True)
class LatchEvent:
    at: float
    packet: QueuedPacket
    decision: Decision
    accepted: bool
    latched: tuple[str, ...]  # rule ids the engine narrowed for this packet


class Latcher:
    """Decides queued packets against the engine and latches; keeps a short history."""

    def __init__(
        self,
        engine: Engine,
        source: PacketSource,
        clock: Callable[[], float],
        history: int = 1024,
        on_latch: Callable[[Sequence[Rule]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.source = source
        self.clock = clock
        self.on_latch = on_latch  # e.g. persist the learnt ports; runs before the verdict
        self.history: collections.deque[LatchEvent] = collections.deque(maxlen=history)

    def handle(self, packet: QueuedPacket, now: float) -> LatchEvent:
        decision = decide(packet.flow, self.engine.live_rules())
        accept = decision.accept if not decision.learn else decision.exact
        latched: list[Rule] = []
        for rule_id, port in decision.learn:
            try:
                latched.append(self.engine.latch(rule_id, port, now))
                accept = True
            except DriverError as exc:
                # Still within the address-only pinhole; the next packet retries.
                log.warning("latch of %s to %d not installed: %s", rule_id, port, exc.detail)
                accept = True
            except AgentError as exc:  # e.g. another rule already owns that exact pinhole
                log.info("latch of %s to %d refused: %s", rule_id, port, exc)
        if latched and self.on_latch is not None:
            try:
                self.on_latch(latched)
            except Exception:  # the packet must get its verdict whatever happens
                log.exception("after-latch hook failed for %s", [r.id for r in latched])
        self.source.verdict(packet.id, accept)
        event = LatchEvent(now, packet, decision, accept, tuple(r.id for r in latched))
        self.history.append(event)
        return event

    def serve(self, timeout: float) -> list[LatchEvent]:
        """One loop step: wait up to `timeout` for queued packets and decide them all."""
        return [self.handle(p, self.clock()) for p in self.source.poll(timeout)]

    def serve_until(self, predicate: Callable[[], bool], timeout: float, what: str = "") -> None:
        """Serve until `predicate` holds; TimeoutError at the deadline (tests, bench)."""
        deadline = self.clock() + timeout
        while not predicate():
            left = deadline - self.clock()
            if left <= 0:
                raise TimeoutError(f"condition not met within {timeout}s: {what}")
            self.serve(min(left, 0.02))


class NfqueueReader:
    """The thin netfilterqueue shell: one bound queue, headers only, verdicts deferred
    (netfilterqueue lets a packet outlive its callback; the verdict goes by packet id)."""

    def __init__(self, queue_num: int, max_len: int = 1024) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        self._queue = NetfilterQueue()
        self._pending: dict[int, Any] = {}
        self._ready: list[QueuedPacket] = []
        with warnings.catch_warnings():  # "rcvbuf limit is now ...": harmless here
            warnings.simplefilter("ignore", RuntimeWarning)
            self._queue.bind(
                queue_num, self._on_packet, max_len=max_len, mode=COPY_PACKET, range=HEADER_BYTES
            )

    def _on_packet(self, packet: Any) -> None:
        self._pending[packet.id] = packet
        self._ready.append(QueuedPacket(packet.id, parse_ipv4(packet.get_payload())))

    def fileno(self) -> int:
        return self._queue.get_fd()

    def poll(self, timeout: float) -> list[QueuedPacket]:
        if not self._ready:
            readable, _, _ = select.select([self.fileno()], [], [], max(timeout, 0.0))
            if readable:
                self._queue.run(block=False)
        ready, self._ready = self._ready, []
        return ready

    def read_ready(self) -> list[QueuedPacket]:
        """Never blocks: whatever the socket holds now (for an event loop's reader
        callback; `run(block=False)` reads with MSG_DONTWAIT until EAGAIN)."""
        self._queue.run(block=False)
        ready, self._ready = self._ready, []
        return ready

    def verdict(self, packet_id: int, accept: bool) -> None:
        packet = self._pending.pop(packet_id, None)
        if packet is None:
            return
        if accept:
            packet.accept()
        else:
            packet.drop()

    def close(self) -> None:
        """Unbind. Undecided packets are accepted: they matched an address-only pinhole,
        and that is what the kernel does with bypass once nobody listens."""
        for packet_id in list(self._pending):
            self.verdict(packet_id, True)
        self._ready.clear()
        self._queue.unbind()
