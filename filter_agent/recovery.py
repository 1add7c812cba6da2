"""Start-up: bring the engine back from the state database and the kernel, and decide the
epoch. Runs once, synchronously, before FCP is served.

Theory of operation
-------------------
The kernel is the truth for what still exists: it kept forwarding while the agent was
down and it expired elements on its own. The store is the truth for what the elements
mean (owner, group, ids, lifetimes). So:

    store           kernel table     -> result                                    epoch
    usable          present          keep objects whose elements are all there;   same
                                     drop the others (expired meanwhile); delete
                                     elements nobody owns (orphans); chains are
                                     repaired in one atomic transaction, elements
                                     untouched: forwarding never stops
    usable          missing          rebuild the table with every live element     same
    missing/corrupt any              state lost: empty the table                   NEW
    other boot      any              times are meaningless, kernel was reset       NEW

A new epoch tells every client that what it believed is gone (PCP RFC 6887 §8.5); the
same epoch tells it that every binding and rule it holds is still valid. Orphan elements
come from a crash between a kernel transaction and the store commit; the client never
got an answer for them and will retry.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path

from filter_agent.engine import Engine
from filter_agent.model import Binding
from filter_agent.plan import Element, KeyPart, binding_elements, element_commands, rule_elements
from filter_agent.plan import transaction as nft_transaction
from filter_agent.snapshot import QuarantinedPort, restore
from filter_agent.store import IdempotencyRecord, Loaded, Store

log = logging.getLogger("sipwall.agent.recovery")

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str:
    """Changes at every boot; CLOCK_MONOTONIC times are only comparable within one."""
    return BOOT_ID_PATH.read_text().strip()


def new_epoch(rng: random.Random, avoid: int | None = None) -> int:
    while True:
        epoch = rng.getrandbits(63)
        if epoch and epoch != avoid:
            return epoch


@dataclass(frozen=True)
class Recovery:
    epoch: int
    lost: str | None  # why state was lost (a new epoch), None when it was kept
    bindings: int = 0  # kept
    rules: int = 0
    dropped: tuple[str, ...] = ()  # ids whose elements the kernel no longer had
    orphans: int = 0  # kernel elements nobody owned, deleted
    rebuilt: bool = False  # the table was missing and was rebuilt
    idempotency: tuple[IdempotencyRecord, ...] = ()


def _delete_elements(engine: Engine, elements: list[Element]) -> None:
    if elements:
        engine.driver.apply(nft_transaction(element_commands(engine.spec, (), elements)))


def _fresh(engine: Engine, store: Store, epoch: int, boot_id: str, lost: str) -> Recovery:
    store.reset(epoch, boot_id)
    engine.setup()
    stale = list(engine.driver.elements())
    _delete_elements(engine, stale)
    log.warning("agent state lost (%s): new epoch %d, %d stale elements", lost, epoch, len(stale))
    return Recovery(epoch, lost, orphans=len(stale))


def recover(
    engine: Engine,
    store: Store,
    loaded: Loaded | None,
    lost: str | None,
    *,
    boot_id: str,
    now: float,
    rng: random.Random,
) -> Recovery:
    """Restore `engine` (fresh) from `loaded` and the kernel; see the module docstring."""
    if loaded is not None and loaded.boot_id != boot_id:
        lost = "the machine rebooted since the state was saved"
        return _fresh(engine, store, new_epoch(rng, loaded.epoch), boot_id, lost)
    if loaded is None:
        return _fresh(engine, store, new_epoch(rng), boot_id, lost or "no state")
    state = loaded.state
    if not engine.driver.table_exists():
        restore(engine, state)
        engine.reconcile(now)
        log.warning("nftables table was missing: rebuilt with %d bindings", len(state.bindings))
        return Recovery(
            loaded.epoch,
            None,
            len(state.bindings),
            len(state.rules),
            rebuilt=True,
            idempotency=loaded.idempotency,
        )
    kernel: dict[tuple[str, tuple[KeyPart, ...]], Element] = {
        e.identity(): e for e in engine.driver.elements()
    }
    expected: set[tuple[str, tuple[KeyPart, ...]]] = set()

    def present(elements: list[Element]) -> bool:
        return all(
            (k := kernel.get(e.identity())) is not None and k.value == e.value for e in elements
        )

    bindings: dict[str, Binding] = {}
    dropped: list[str] = []
    for b in state.bindings:
        wanted = binding_elements(b)
        if present(wanted):
            bindings[b.id] = b
            expected.update(e.identity() for e in wanted)
        else:
            dropped.append(b.id)
    rules = []
    for r in state.rules:
        binding = bindings.get(r.binding_id)
        wanted = rule_elements(r, binding) if binding is not None else []
        if binding is not None and present(wanted):
            rules.append(r)
            expected.update(e.identity() for e in wanted)
        else:
            dropped.append(r.id)
    orphans = [e for key, e in kernel.items() if key not in expected]
    engine.setup()  # repairs chains atomically; elements survive
    _delete_elements(engine, orphans)
    # Ports of bindings that expired while we were down go to quarantine, as on release.
    deadline = now + engine.allocator.config.quarantine
    freed = tuple(
        QuarantinedPort(deadline, b.external_addr, b.protocol, port)
        for b in state.bindings
        if b.id not in bindings
        for port in b.external_ports
    )
    restore(
        engine,
        replace(
            state,
            bindings=tuple(bindings.values()),
            rules=tuple(rules),
            quarantine=state.quarantine + freed,
        ),
    )
    if dropped:
        with store.transaction() as txn:
            txn.delete_rules(i for i in dropped if i.startswith("r"))
            txn.delete_bindings(i for i in dropped if i.startswith("b"))
            txn.quarantine(freed)
    log.info(
        "recovered epoch %d: %d bindings, %d rules kept, %d gone from the kernel, "
        "%d orphan elements deleted",
        loaded.epoch,
        len(bindings),
        len(rules),
        len(dropped),
        len(orphans),
    )
    return Recovery(
        loaded.epoch,
        None,
        len(bindings),
        len(rules),
        tuple(dropped),
        len(orphans),
        idempotency=loaded.idempotency,
    )
