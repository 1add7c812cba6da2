"""Latching in the running agent: the queue path, the queue rule, and the NFQUEUE reader
on the asyncio loop.

Theory of operation
-------------------
The decisions are sans-I/O (`latch.decide`, `Engine.latch`, see latch.py); the kernel
objects are planned in latch_plan.py and sent by latch_kernel.py. This module wires them
into the agent process:

    start-up      `choose(...)` probes the kernel (transactions validated and aborted) and
                  picks the path: nft `queue`, xt NFQUEUE via nft_compat, or NONE. The
                  table is then set up with `TableSpec(latch=path is not NONE)`, recovery
                  runs, and `AgentLatching.install()` (re)writes `latch_queue`'s verdict.
    serving       the netfilterqueue socket is registered with `loop.add_reader`; its
                  callback drains the socket without blocking (MSG_DONTWAIT until EAGAIN)
                  and handles every packet synchronously on the loop, like an RPC: decide,
                  `Engine.latch` (one libnftables transaction), persist the learnt port
                  (one SQLite transaction), then the verdict (accept re-injects the very
                  packet, so the first packet of the stream is never lost).
    table rebuilt `AgentService.check_table` calls `install()` again: a rebuilt table has an
                  empty `latch_queue`, which falls through to accept (address-only) until
                  then, never wider.
    stopping      the reader is unbound; packets still undecided are accepted, and with
                  `bypass` and nobody bound the kernel accepts the next ones: the pinhole
                  degrades to address-only, the semantics it had before latching.

Because handlers never await, a latch and an RPC never interleave: the engine, the kernel
and the store agree at every await point, exactly as for RPCs.

FCP has no event kind for "a rule's remote port was learnt" (fcp.types.EventKind); adding
one is a proto change, so clients see the port through GetRule/ListRules instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from filter_agent import latch_kernel
from filter_agent.driver import NftDriver
from filter_agent.engine import Engine
from filter_agent.errors import DriverError
from filter_agent.latch import Latcher, LatchEvent, NfqueueReader, QueuedPacket
from filter_agent.latch_plan import LatchSpec, QueuePath, QueueProbe, choose_path
from filter_agent.model import Rule
from filter_agent.plan import TableSpec
from filter_agent.store import Store

log = logging.getLogger("sipwall.agent.latching")


@dataclass(frozen=True)
class LatchSettings:
    enabled: bool = True
    queue_num: int = 5189


class LoopSource(Protocol):
    """What the agent needs from a queue: a pollable fd, a non-blocking read, verdicts
    (`NfqueueReader`; a scripted source in unit tests)."""

    def fileno(self) -> int: ...

    def read_ready(self) -> Sequence[QueuedPacket]: ...

    def poll(self, timeout: float) -> Sequence[QueuedPacket]: ...

    def verdict(self, packet_id: int, accept: bool) -> None: ...

    def close(self) -> None: ...


def choose(
    settings: LatchSettings,
    spec: TableSpec,
    probe: Callable[[TableSpec, LatchSpec], QueueProbe] = latch_kernel.probe,
) -> tuple[QueuePath, TableSpec]:
    """The queue path and the table spec to run with (latch chain only if there is a path)."""
    if not settings.enabled:
        log.info("latching disabled by configuration: port-unknown rules stay address-only")
        return QueuePath.NONE, TableSpec(spec.family, spec.name, spec.mark, latch=False)
    result = probe(spec, LatchSpec(settings.queue_num))
    path = choose_path(result)
    if path is QueuePath.NONE:
        log.warning("no NFQUEUE path in this kernel (%s): latching off", result.detail)
    else:
        log.info("latching via %s on queue %d (%s)", path.value, settings.queue_num, result.detail)
    return path, TableSpec(spec.family, spec.name, spec.mark, latch=path is not QueuePath.NONE)


class AgentLatching:
    """The agent's latch loop; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        latch: LatchSpec,
        path: QueuePath,
        clock: Callable[[], float],
        *,
        driver: NftDriver | None = None,
        open_source: Callable[[int], LoopSource] = NfqueueReader,
        install: Callable[[NftDriver, TableSpec, LatchSpec, QueuePath], QueuePath] = (
            latch_kernel.install
        ),
    ) -> None:
        if path is QueuePath.NONE or not engine.spec.latch:
            raise ValueError("latching needs a queue path and TableSpec(latch=True)")
        self.engine = engine
        self.store = store
        self.latch = latch
        self.path = path
        self._driver = driver or engine.driver
        self._open_source = open_source
        self._install = install
        self._clock = clock
        self._source: LoopSource | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.latcher: Latcher | None = None
        self.installs = 0

    def install(self) -> None:
        """(Re)write the queue verdict into `latch_queue` (idempotent, atomic)."""
        self._install(self._driver, self.engine.spec, self.latch, self.path)
        self.installs += 1

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        source = self._open_source(self.latch.queue_num)
        self._source = source
        self.latcher = Latcher(self.engine, source, self._clock, on_latch=self._persist)
        self._loop = loop
        loop.add_reader(source.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        source, latcher = self._source, self.latcher
        if source is None or latcher is None:
            return
        try:
            packets = source.read_ready()
        except OSError:
            log.exception("reading the NFQUEUE socket failed")
            return
        for packet in packets:
            event = latcher.handle(packet, self._clock())
            self._log(event)

    def _log(self, event: LatchEvent) -> None:
        flow = event.packet.flow
        if event.latched and flow is not None:
            log.info(
                "latched %s to %s:%d (%s)",
                ",".join(event.latched),
                flow.src,
                flow.sport,
                event.decision.reason,
            )
        elif not event.accepted:
            log.debug("queued packet %s dropped: %s", flow, event.decision.reason)

    def _persist(self, rules: Sequence[Rule]) -> None:
        with self.store.transaction() as txn:
            txn.put_rules(list(rules))

    def reinstall(self) -> None:
        """After the table was rebuilt: errors are logged, the next rebuild retries."""
        try:
            self.install()
        except (DriverError, OSError) as exc:
            log.error("could not reinstall the latch queue rule: %s", exc)  # noqa: TRY400

    def close(self) -> None:
        source, self._source = self._source, None
        if source is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(source.fileno())
        source.close()
