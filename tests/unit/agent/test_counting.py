"""Counter bookkeeping without a kernel: which rules `apply_totals` touches, and the next
deadline with stale idle ids (filter_agent/counting.py)."""

from __future__ import annotations

from filter_agent import counting
from filter_agent.model import Counters, Direction, Rule


def rule(rid: str, max_idle: float | None = None, expires_at: float = 100.0) -> Rule:
    return Rule(rid, "o", "b1", "g", Direction.INBOUND, "203.0.113.20", 5000, max_idle, expires_at)


def test_only_rules_with_traffic_new_or_formerly_busy_are_touched() -> None:
    rules = {r.id: r for r in (rule("r1"), rule("r2", max_idle=30.0), rule("r3"))}
    counters: dict[str, Counters] = {}
    nonzero: set[str] = set()
    fresh = set(rules)
    changed = counting.apply_totals(
        rules, counters, {"r1": (5, 500)}, 10.0, nonzero=nonzero, fresh=fresh
    )
    # r1 counted; r2 starts its idle clock (persisted); idle r3 needs no entry at all.
    assert sorted(changed) == ["r1", "r2"]
    assert counters == {"r1": Counters(5, 500, 10.0), "r2": Counters(0, 0, 10.0)}
    assert nonzero == {"r1"} and fresh == set()
    # Nothing new: nothing changes. The kernel's counters reset (table rebuilt): r1 drops.
    assert (
        counting.apply_totals(rules, counters, {"r1": (5, 500)}, 11.0, nonzero=nonzero, fresh=fresh)
        == []
    )
    assert counting.apply_totals(rules, counters, {}, 12.0, nonzero=nonzero, fresh=fresh) == ["r1"]
    assert counters["r1"] == Counters(0, 0, 10.0) and nonzero == set()


def test_a_bulk_of_new_rules_is_absorbed_over_several_calls() -> None:
    rules = {f"r{i}": rule(f"r{i}") for i in range(counting.FRESH_PER_CALL + 5)}
    fresh = set(rules)
    counting.apply_totals(rules, {}, {}, 1.0, nonzero=set(), fresh=fresh)
    assert len(fresh) == 5


def test_next_deadline_drops_stale_idle_ids() -> None:
    rules = {"r1": rule("r1", max_idle=5.0, expires_at=100.0), "r2": rule("r2", expires_at=50.0)}
    idle = {"r1", "gone"}
    counters = {"r1": Counters(1, 1, 20.0)}
    assert counting.next_deadline({}, rules, counters, idle) == 25.0
    assert idle == {"r1"}
    assert counting.next_deadline({}, {}, {}, set()) is None
