"""The GC policy of the agent process (filter_agent/heap.py)."""

from __future__ import annotations

import gc

from filter_agent.heap import NO_AUTOMATIC_FULL, HeapPolicy


def test_tick_freezes_survivors_and_runs_a_full_collection_only_when_due() -> None:
    threshold = gc.get_threshold()
    try:
        idle = HeapPolicy()
        idle.tick(0.0)  # not installed: the test process's GC is left alone
        assert gc.get_freeze_count() == 0
        policy = HeapPolicy(full_every=10.0)
        policy.install()
        assert gc.get_threshold()[2] == NO_AUTOMATIC_FULL
        survivors = [[i] for i in range(1000)]  # new container objects
        policy.tick(1.0)
        assert gc.get_freeze_count() >= len(survivors)
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle  # a reference cycle: only a full collection frees it
        frozen = gc.get_freeze_count()
        policy.tick(20.0)  # full collection due: unfreeze, collect, freeze again
        assert gc.get_freeze_count() < frozen + 1000
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
