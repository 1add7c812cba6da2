"""Per-rule counters from kernel element counters (what `Engine.observe` does), and the
next timer deadline, as plain functions over the engine's dicts.

A rule's counters are the sums over its elements (in4/out4, or in4a/out4a while its port
is unknown; both ports of an RTP pair). A rule whose packet count grew was last seen at
`now` (the idle timer reads that); a rule seen for the first time starts at zero, and at
`now` as last-seen if it has an idle timeout, so that it idles out if nothing ever comes.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterable, Mapping, MutableMapping

from filter_agent.model import Binding, Counters, Rule
from filter_agent.plan import Element, KeyPart

FRESH_PER_CALL = 10_000  # ~10 ms of loop time
ElementOwners = Mapping[tuple[str, tuple[KeyPart, ...]], str]  # element identity -> rule id


def rule_totals(owners: ElementOwners, elements: Iterable[Element]) -> dict[str, tuple[int, int]]:
    """Packets and bytes per rule id; elements of no rule and uncounted ones are skipped.
    Reads `owners` only (one dict lookup per element)."""
    totals: dict[str, tuple[int, int]] = {}
    owner_of = owners.get
    for e in elements:
        rid = owner_of(e.identity())
        if rid is None or e.packets is None:
            continue
        packets, nbytes = totals.get(rid, (0, 0))
        totals[rid] = (packets + e.packets, nbytes + (e.bytes or 0))
    return totals


def apply_totals(
    rules: Mapping[str, Rule],
    counters: MutableMapping[str, Counters],
    totals: Mapping[str, tuple[int, int]],
    now: float,
    *,
    nonzero: set[str],
    fresh: set[str],
) -> list[str]:
    """Update `counters` from `totals` (absent: zero); returns the ids worth persisting:
    counters that changed, and first sightings of rules with an idle timeout (their
    last-seen starts now). The caller keeps `nonzero` (ids whose counters are not zero)
    and `fresh` (ids not seen yet; up to FRESH_PER_CALL are taken out of it per call, so
    that a bulk install is absorbed over a few calls), which limit the work to
    the rules that can change: those in `totals`, those that had traffic, and new ones --
    not every rule, which with 100,000 idle pinholes stalled the loop for 0.2 s each
    time. A rule without counters counts as zero; only rules with an idle timeout get an
    entry at their first sighting (their last-seen)."""
    changed = []
    first = set(itertools.islice(fresh, FRESH_PER_CALL))
    fresh -= first
    candidates = totals.keys() | nonzero | first
    for rid in candidates:
        rule = rules.get(rid)
        if rule is None:
            nonzero.discard(rid)
            continue
        packets, nbytes = totals.get(rid, (0, 0))
        old = counters.get(rid)
        if old is None:
            old = Counters(0, 0, now if rule.max_idle is not None else None)
            if not packets and not nbytes:
                if rule.max_idle is not None:
                    counters[rid] = old
                    changed.append(rid)
                continue
        elif (old.packets, old.bytes) == (packets, nbytes):
            continue
        seen = now if packets > old.packets else old.last_seen
        counters[rid] = Counters(packets, nbytes, seen)
        changed.append(rid)
        if packets or nbytes:
            nonzero.add(rid)
        else:
            nonzero.discard(rid)
    return changed


def next_deadline(
    bindings: Mapping[str, Binding],
    rules: Mapping[str, Rule],
    counters: Mapping[str, Counters],
    idle: set[str],
) -> float | None:
    """The earliest expiry or idle deadline (`Engine.next_timer`). `idle` holds the ids of
    rules with an idle timeout, possibly stale ones, which are dropped here. The expiry
    scans run at C speed (100,000 rules in ~3 ms, the loop pays for it once a round)."""
    expiry = operator.attrgetter("expires_at")
    times = [
        min(map(expiry, bindings.values()), default=math.inf),
        min(map(expiry, rules.values()), default=math.inf),
    ]
    for rid in list(idle):
        r = rules.get(rid)
        if r is None or r.max_idle is None:
            idle.discard(rid)
            continue
        seen = counters.get(rid, Counters()).last_seen
        times.append((seen if seen is not None else r.expires_at) + r.max_idle)
    best = min(times)
    return None if best == math.inf else best
