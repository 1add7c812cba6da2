"""Keeping Python's cyclic garbage collector off the request path (ALG and agent).

Both daemons keep many long-lived objects: the agent a handful per binding and rule, the
ALG every transaction's request for up to 32 s (RFC 3261 §17.1.1.2 Timer B, §17.2.1
Timer J, 64*T1). CPython 3.11's full (gen 2) collection walks every tracked object, and it
runs whenever the objects promoted to gen 2 since the last one reach a quarter of it. With
a steady churn of 32-s objects that is every second or two, however constant the live set:
the agent measured stalls of 20 ms growing to 170 ms during a bulk install of 100,000
rules; the stateful ALG at 4,000 calls/s stalled long enough for its 4 MiB socket buffer
to overflow (issue #4).

So a running daemon (`install()`) turns automatic full collections off, and calls `tick`
a few times a second: a young collection (gen 0 and 1: only what was allocated since the
last tick), then the survivors are frozen (`gc.freeze`: moved to the permanent generation,
which no collection walks). Every object is thus walked about once in its life.
Acyclic garbage, frozen or not, is still freed at once by reference counting. Only a
reference cycle that was alive at a freeze and dies later escapes, until the full
collection every `full_every` seconds (unfreeze, collect, freeze): one stall of that
size every ten minutes instead of many. What that pass frees is counted
(`leaked_cycles`): those are the objects the freeze kept alive. Without `install()`
(unit tests) `tick` does nothing.

A full pass walks every object, and at high load that stall is long: the stateful ALG at
4,000 calls/s holds some 6 million (412,000 transactions), and one full pass took 4.3 s
(bench/proxy_core_cpu.py, 200,000 calls) -- every socket buffer overflows; the agent
with 100,000 pinholes took 0.5 s, every FCP answer of that moment late. So both cap it
(`full_max_objects`): a due full pass waits until the frozen set is that small again
(a quieter hour), and says so once if it has waited an hour. Neither daemon's request
path leaves cycles (tests assert it of the ALG's calls; the agent's 100,000 pinholes
left none for the full pass to find), so what waits is rare.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("sipwall.heap")

NO_AUTOMATIC_FULL = 1 << 30  # gen-2 threshold: full collections only from `tick`

# The cap both daemons give their full pass. Measured: the ALG at 4,000 calls/s, 5.8 M
# objects, 4.3 s; the agent with 100,000 pinholes (reserve + enable each, real kernel),
# 0.8 M objects, 0.51-0.55 s. About 0.7 us an object cold: 250,000 stall some 150 ms.
FULL_PASS_MAX_OBJECTS = 250_000
DEFERRAL_WARNING_SECONDS = 3600.0


class HeapPolicy:
    """`young` sets the gen-0 threshold (allocations between automatic young passes;
    None keeps CPython's 700); `full_max_objects` caps the frozen objects a full pass may
    walk (None: no cap)."""

    def __init__(
        self,
        full_every: float = 600.0,
        young: int | None = None,
        full_max_objects: int | None = FULL_PASS_MAX_OBJECTS,
    ) -> None:
        self.full_every = full_every
        self.young = young
        self.full_max_objects = full_max_objects
        self.deferred_since: float | None = None  # a due full pass waits since then
        self._warned = False
        self.installed = False
        self.full_passes = 0
        self.leaked_cycles = 0  # objects the full passes found unreachable
        self.last_full_seconds = 0.0
        self._last_full: float | None = None
        self._thresholds_before = gc.get_threshold()  # set again by install()

    def install(self) -> None:
        gc.collect()  # start-up garbage, before it is frozen for good
        self._thresholds_before = young, middle, _ = gc.get_threshold()
        gc.set_threshold(young if self.young is None else self.young, middle, NO_AUTOMATIC_FULL)
        gc.freeze()  # what start-up (and the agent's recovery) built lives on
        self.installed = True

    def uninstall(self) -> None:
        """Back to the collector as it was (a daemon run inside a test process)."""
        if not self.installed:
            return
        gc.unfreeze()
        gc.set_threshold(*self._thresholds_before)
        self.installed = False

    def tick(self, now: float) -> None:
        if not self.installed:
            return
        if self._last_full is None:
            self._last_full = now
        if now - self._last_full >= self.full_every and self._affordable(now):
            self._last_full = now
            self.deferred_since = None
            self._full_pass()
        else:
            gc.collect(1)
        gc.freeze()

    def _affordable(self, now: float) -> bool:
        cap = self.full_max_objects
        frozen = gc.get_freeze_count()
        if cap is None or frozen <= cap:
            return True
        if self.deferred_since is None:
            self.deferred_since = now
        elif now - self.deferred_since >= DEFERRAL_WARNING_SECONDS and not self._warned:
            self._warned = True
            log.warning(
                "full garbage collection deferred for %.0f s: %d frozen objects, more than "
                "the %d it may walk at once (reference cycles that died after a freeze "
                "wait for it)",
                now - self.deferred_since,
                frozen,
                cap,
            )
        return False

    def _full_pass(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        self.last_full_seconds = time.perf_counter() - started
        self.full_passes += 1
        self.leaked_cycles += found
        log.info(
            "full garbage collection: %d unreachable objects freed in %.1f ms",
            found,
            self.last_full_seconds * 1e3,
        )

    def stats(self, now: float) -> dict[str, float]:
        deferred = self.deferred_since
        return {
            "full_passes": self.full_passes,
            "full_deferred_seconds": 0.0 if deferred is None else round(now - deferred, 1),
            "leaked_cycles": self.leaked_cycles,
            "last_full_ms": round(self.last_full_seconds * 1e3, 1),
            "frozen_objects": gc.get_freeze_count(),
        }
