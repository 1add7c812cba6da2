"""Keeping Python's cyclic garbage collector off the request path.

Every binding and rule is a handful of long-lived Python objects. CPython's full (gen 2)
collection walks every tracked object, and it runs whenever the long-lived objects grew by
a quarter: during a bulk install of 100,000 rules the agent measured stalls of 20 ms
growing to 170 ms (one RPC in a hundred waited that long), and again at random later.

So the running agent (`install()`, from main) turns automatic full collections off, and
its table-watch loop calls `tick` (4 times a second): a cheap young-generation collection,
then the survivors are frozen (`gc.freeze`: moved to the permanent generation, which no
collection walks). Acyclic garbage is still freed at once by reference counting; only a
reference cycle that was alive at a freeze and dies later escapes collection, until the
full collection every `full_every` seconds (unfreeze, collect, freeze: one stall of that
size every ten minutes instead of many). Without `install()` (unit tests) `tick` does
nothing.
"""

from __future__ import annotations

import gc

NO_AUTOMATIC_FULL = 1 << 30  # gen-2 threshold: full collections only from `tick`


class HeapPolicy:
    def __init__(self, full_every: float = 600.0) -> None:
        self.full_every = full_every
        self.installed = False
        self._last_full: float | None = None

    def install(self) -> None:
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, NO_AUTOMATIC_FULL)
        gc.freeze()  # what start-up and recovery built
        self.installed = True

    def tick(self, now: float) -> None:
        if not self.installed:
            return
        if self._last_full is None:
            self._last_full = now
        if now - self._last_full >= self.full_every:
            self._last_full = now
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()
