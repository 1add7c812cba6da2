"""The garbage-collection policy of the ALG and agent processes (sipwall/heap.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from sipwall.heap import NO_AUTOMATIC_FULL, HeapPolicy

NEVER = 1 << 30  # no automatic young pass either: only the policy's ticks collect


class Node:
    def __init__(self) -> None:
        self.other: object = self  # a reference cycle: refcounting alone never frees it


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def _dead_cycle() -> weakref.ref[Node]:
    node = Node()
    return weakref.ref(node)


def test_not_installed_it_leaves_the_process_collector_alone(restored: None) -> None:
    threshold = gc.get_threshold()
    HeapPolicy().tick(0.0)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold


def test_a_tick_frees_young_cycles_and_freezes_the_survivors(restored: None) -> None:
    policy = HeapPolicy(full_every=10.0, young=NEVER)
    policy.install()
    assert gc.get_threshold()[0] == NEVER
    assert gc.get_threshold()[2] == NO_AUTOMATIC_FULL
    dead = _dead_cycle()
    survivors = [[i] for i in range(1000)]
    assert dead() is not None  # nothing has collected yet
    frozen = gc.get_freeze_count()
    policy.tick(1.0)
    assert dead() is None
    assert gc.get_freeze_count() >= frozen + len(survivors)
    assert policy.full_passes == 0


def test_a_cycle_that_dies_after_a_freeze_waits_for_the_full_pass(restored: None) -> None:
    policy = HeapPolicy(full_every=10.0, young=NEVER, full_max_objects=None)
    policy.install()
    policy.tick(0.0)
    node = Node()
    policy.tick(1.0)  # frozen while alive
    dead = weakref.ref(node)
    del node
    policy.tick(2.0)  # a young pass does not walk frozen objects
    assert dead() is not None
    policy.tick(10.0)  # full pass due (10 s after the first tick)
    assert dead() is None
    assert policy.full_passes == 1
    assert policy.leaked_cycles >= 1
    assert policy.stats(10.0)["full_passes"] == 1
    policy.tick(11.0)  # the next one is 10 s later
    assert policy.full_passes == 1


def test_uninstall_restores_the_collector(restored: None) -> None:
    threshold = gc.get_threshold()
    policy = HeapPolicy(young=NEVER)
    policy.install()
    policy.tick(0.0)
    assert gc.get_freeze_count() > 0
    policy.uninstall()
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0
    policy.tick(1.0)  # no longer installed: does nothing
    assert gc.get_freeze_count() == 0


def test_a_capped_full_pass_waits_until_the_frozen_set_is_small_enough(
    restored: None, caplog: pytest.LogCaptureFixture
) -> None:
    policy = HeapPolicy(full_every=10.0, young=NEVER, full_max_objects=1)
    policy.install()
    policy.tick(0.0)
    node = Node()
    policy.tick(1.0)
    dead = weakref.ref(node)
    del node
    policy.tick(10.0)  # due, but the frozen set is larger than the cap: deferred
    assert dead() is not None
    assert policy.full_passes == 0
    assert policy.deferred_since == 10.0
    assert policy.stats(70.0)["full_deferred_seconds"] == 60.0
    with caplog.at_level("WARNING", logger="sipwall.heap"):
        policy.tick(10.0 + 3600.0)
    assert "deferred for 3600 s" in caplog.text
    policy.full_max_objects = gc.get_freeze_count()  # the set is small enough now
    policy.tick(3700.0)
    assert dead() is None
    assert policy.full_passes == 1
    assert policy.deferred_since is None
