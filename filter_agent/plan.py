"""Pure planning: a desired change -> ONE libnftables JSON transaction.

The table (theory of operation)
-------------------------------
The agent owns exactly one table, `inet sipwall` by default. `inet` rather than `ip` + `ip6`
because one table then holds both families' sets and the same three chains; NAT in `inet`
chains works since Linux 5.2. Today every set is IPv4 (`...4`); IPv6 pinholes become
`...6` sets next to them without a second table.

Base chains, all `policy accept`: we only ever drop traffic that is ours.

  chain          type    hook         priority        job
  prerouting     nat     prerouting   -100 (dstnat)   public P:p  -> inside I:i   via @dnat4
  forward        filter  forward       0   (filter)   mark ours, check pinholes, drop ours
  postrouting    nat     postrouting  100  (srcnat)   inside I:i  -> public P:p   via @snat4
  latch_queue    regular chain, only with TableSpec.latch: the NFQUEUE verdict of latching

  set / map   key                                          value       per element
  dnat4       l4proto . public addr . public port          I . i       timeout
  snat4       l4proto . inside addr . inside port          P . p       timeout
  in4         l4proto . I . i . remote addr . remote port  -           timeout, counter
  in4a        l4proto . I . i . remote addr  (port unknown) -          timeout, counter
  out4/out4a  same keys, for inside -> remote packets      -           timeout, counter

NAT bindings and pinholes are elements with kernel timeouts, never rules, so the lookup
cost does not grow with the number of calls and everything closes by itself if the agent
dies. Because snat4 is keyed by the inside endpoint only, the mapping is endpoint
independent (RFC 4787 §4.1 REQ-1): every remote sees the same P:p.

Why a ct mark and no `ct state established accept`: an established flow must stop within
a second of its pinhole going away, even though conntrack still holds its NAT. So the
forward chain marks every connection that touches a bound inside endpoint (the mark is a
single bit, `TableSpec.mark`, OR-ed in so other users of ct mark keep their bits) and then,
for every packet of a marked connection, looks the 5-tuple up in the pinhole sets; no live
element means drop. Unmarked traffic returns untouched. Packet direction decides the set:
remote -> inside packets need an in4/in4a element, inside -> remote ones out4/out4a.

Operators: our accept ends only our chain; a drop in another table at the same hook still
drops (netfilter evaluates every base chain). Keep host filter chains from dropping media
or put them after priority 0 with an explicit accept for the public pools.

Transactions are idempotent by construction: setup `add`s table/sets/chains (no-ops when
present), flushes only our chains and re-adds their rules, so elements survive an agent
restart; teardown adds then deletes the table; an element delete is preceded by an add of
the same element in the same transaction, so deleting an element the kernel already timed
out is not an error (the knftables trick).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from filter_agent.model import Binding, Rule

Json = dict[str, Any]
KeyPart = str | int

DNAT4, SNAT4 = "dnat4", "snat4"
IN4, IN4_ANY, OUT4, OUT4_ANY = "in4", "in4a", "out4", "out4a"
LATCH_QUEUE = "latch_queue"  # regular chain holding the NFQUEUE verdict (latch_plan.py)

_ENDPOINT = ["inet_proto", "ipv4_addr", "inet_service"]
SET_TYPES: dict[str, list[str]] = {
    DNAT4: _ENDPOINT,
    SNAT4: _ENDPOINT,
    IN4: [*_ENDPOINT, "ipv4_addr", "inet_service"],
    IN4_ANY: [*_ENDPOINT, "ipv4_addr"],
    OUT4: [*_ENDPOINT, "ipv4_addr", "inet_service"],
    OUT4_ANY: [*_ENDPOINT, "ipv4_addr"],
}
MAP_DATA: dict[str, list[str]] = {
    DNAT4: ["ipv4_addr", "inet_service"],
    SNAT4: ["ipv4_addr", "inet_service"],
}
COUNTED_SETS = (IN4, IN4_ANY, OUT4, OUT4_ANY)

# Chain name -> (type, hook, priority).
CHAINS: dict[str, tuple[str, str, int]] = {
    "prerouting": ("nat", "prerouting", -100),
    "forward": ("filter", "forward", 0),
    "postrouting": ("nat", "postrouting", 100),
}


@dataclass(frozen=True)
class TableSpec:
    family: str = "inet"
    name: str = "sipwall"
    mark: int = 0x00200000  # the ct mark bit meaning "a sipwall connection"
    latch: bool = False  # port-unknown inbound packets go to @latch_queue (latch_plan.py)

    def __post_init__(self) -> None:
        if self.family != "inet":
            raise ValueError("the sipwall table is an inet table")
        if self.mark <= 0 or self.mark & (self.mark - 1) or self.mark >= 1 << 32:
            raise ValueError("mark must be a single bit of the 32-bit ct mark")


@dataclass(frozen=True)
class Element:
    """One set/map element as the planner writes it and the drivers dump it."""

    set: str
    key: tuple[KeyPart, ...]
    value: tuple[KeyPart, ...] | None = None
    timeout: int | None = None  # seconds
    expires: int | None = None  # seconds left (dump only)
    packets: int | None = None  # counted sets only (dump only)
    bytes: int | None = None

    def identity(self) -> tuple[str, tuple[KeyPart, ...]]:
        return (self.set, self.key)


@dataclass(frozen=True)
class Change:
    """What one request does to the kernel. `put_*` adds or refreshes (new timeout),
    `delete_*` removes. Rules travel with their binding (the keys need both)."""

    put_bindings: tuple[Binding, ...] = ()
    delete_bindings: tuple[Binding, ...] = ()
    put_rules: tuple[tuple[Rule, Binding], ...] = ()
    delete_rules: tuple[tuple[Rule, Binding], ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.put_bindings or self.delete_bindings or self.put_rules or self.delete_rules
        )

    def __add__(self, other: Change) -> Change:
        return Change(
            self.put_bindings + other.put_bindings,
            self.delete_bindings + other.delete_bindings,
            self.put_rules + other.put_rules,
            self.delete_rules + other.delete_rules,
        )


# -- elements ------------------------------------------------------------------------------


def timeout_seconds(expires_at: float, now: float) -> int:
    """Kernel element timeouts are whole seconds; never 0 (0 would mean "no timeout")."""
    return max(1, math.ceil(expires_at - now - 1e-9))


def binding_elements(binding: Binding, timeout: int | None = None) -> list[Element]:
    out: list[Element] = []
    proto = binding.protocol.value
    for inside, public in binding.port_pairs():
        out.append(
            Element(
                DNAT4,
                (proto, binding.external_addr, public),
                (binding.internal_addr, inside),
                timeout,
            )
        )
        out.append(
            Element(
                SNAT4,
                (proto, binding.internal_addr, inside),
                (binding.external_addr, public),
                timeout,
            )
        )
    return out


def rule_elements(rule: Rule, binding: Binding, timeout: int | None = None) -> list[Element]:
    out: list[Element] = []
    proto = binding.protocol.value
    sets = []
    if rule.direction.inbound:
        sets.append(IN4 if rule.remote_port is not None else IN4_ANY)
    if rule.direction.outbound:
        sets.append(OUT4 if rule.remote_port is not None else OUT4_ANY)
    for offset, inside in enumerate(binding.internal_ports):
        key: tuple[KeyPart, ...] = (proto, binding.internal_addr, inside, rule.remote_addr)
        if rule.remote_port is not None:
            key = (*key, rule.remote_port + offset)
        out.extend(Element(name, key, None, timeout) for name in sets)
    return out


# -- JSON ---------------------------------------------------------------------------------


def element_json(element: Element) -> Any:
    key: Json = {"concat": list(element.key)}
    if element.timeout is not None:
        key = {"elem": {"val": key, "timeout": element.timeout}}
    if element.value is None:
        return key
    return [key, {"concat": list(element.value)}]


def _element_cmd(verb: str, spec: TableSpec, name: str, elements: list[Element]) -> Json:
    return {
        verb: {
            "element": {
                "family": spec.family,
                "table": spec.name,
                "name": name,
                "elem": [element_json(e) for e in elements],
            }
        }
    }


def element_commands(
    spec: TableSpec, put: Iterable[Element], delete: Iterable[Element]
) -> list[Json]:
    """Commands for element changes, grouped per set in a fixed order (stable goldens).

    Deletes first (with the add-then-delete guard), then puts, so a request that deletes
    and re-creates the same key ends with the key present.
    """
    by_set_del: dict[str, list[Element]] = {}
    by_set_put: dict[str, list[Element]] = {}
    for e in delete:
        by_set_del.setdefault(e.set, []).append(e)
    for e in put:
        by_set_put.setdefault(e.set, []).append(e)
    cmds: list[Json] = []
    for name in SET_TYPES:
        if name in by_set_del:
            guard = [
                Element(e.set, e.key, e.value, 1 if e.timeout is None else e.timeout)
                for e in by_set_del[name]
            ]
            cmds.append(_element_cmd("add", spec, name, guard))
            bare = [Element(e.set, e.key) for e in by_set_del[name]]  # delete by key
            cmds.append(_element_cmd("delete", spec, name, bare))
    cmds.extend(
        _element_cmd("add", spec, name, by_set_put[name])
        for name in SET_TYPES
        if name in by_set_put
    )
    return cmds


def transaction(commands: list[Json]) -> Json:
    return {"nftables": commands}


def plan_change(spec: TableSpec, change: Change, now: float) -> Json:
    """One transaction for a whole request (or batch)."""
    put: list[Element] = []
    delete: list[Element] = []
    for b in change.delete_bindings:
        delete.extend(binding_elements(b))
    for r, b in change.delete_rules:
        delete.extend(rule_elements(r, b))
    for b in change.put_bindings:
        put.extend(binding_elements(b, timeout_seconds(b.expires_at, now)))
    for r, b in change.put_rules:
        put.extend(rule_elements(r, b, timeout_seconds(r.expires_at, now)))
    put_ids = {e.identity() for e in put}
    delete = [e for e in delete if e.identity() not in put_ids]
    return transaction(element_commands(spec, put, delete))


# -- table setup / teardown ----------------------------------------------------------------
#
# libnftables 1.0.6 (Debian 12) cannot declare a map whose data is a concatenation
# (`: ipv4_addr . inet_service`) in JSON: a list is silently taken as a plain set and a
# string is rejected. So the table's *skeleton* goes through the same libnftables context in
# its native syntax, still one transaction (one `nft_run_cmd_from_buffer`), while every
# per-request change (elements) stays JSON. The skeleton is data too: a `Script`.


@dataclass(frozen=True)
class Script:
    """A native-syntax libnftables transaction (one buffer, applied atomically)."""

    text: str

    @property
    def commands(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


Transaction = Json | Script


def _type(types: list[str]) -> str:
    return " . ".join(types)


def chain_rules(spec: TableSpec) -> dict[str, list[str]]:
    mark = f"0x{spec.mark:08x}"
    unmarked = f"ct mark & {mark} == 0x00000000"
    src = "meta l4proto . ip saddr . th sport"
    dst = "meta l4proto . ip daddr . th dport"
    return {
        "prerouting": [f"dnat ip to {dst} map @{DNAT4}"],
        "forward": [
            # Mark: any connection from or to a bound inside endpoint is ours.
            f"{unmarked} {src} @{SNAT4} ct mark set ct mark | {mark}",
            f"{unmarked} {dst} @{SNAT4} ct mark set ct mark | {mark}",
            f"{unmarked} return",
            # Ours: every packet needs a live pinhole element, whatever conntrack thinks.
            f"{dst} . ip saddr . th sport @{IN4} accept",
            # Latching: no exact element yet -> userspace learns the port (latch.py).
            *([f"{dst} . ip saddr @{IN4_ANY} goto {LATCH_QUEUE}"] if spec.latch else []),
            f"{dst} . ip saddr @{IN4_ANY} accept",
            f"{src} . ip daddr . th dport @{OUT4} accept",
            f"{src} . ip daddr @{OUT4_ANY} accept",
            "counter drop",
        ],
        "postrouting": [f"snat ip to {src} map @{SNAT4}"],
    }


def setup_script(spec: TableSpec) -> Script:
    where = f"{spec.family} {spec.name}"
    lines = [f"add table {where}"]
    for name, types in SET_TYPES.items():
        if name in MAP_DATA:
            lines.append(
                f"add map {where} {name} {{ type {_type(types)} : {_type(MAP_DATA[name])}; "
                "flags timeout; }"
            )
        else:
            lines.append(
                f"add set {where} {name} {{ type {_type(types)}; flags timeout; counter; }}"
            )
    if spec.latch:  # before the rule that jumps to it; never flushed here
        lines.append(f"add chain {where} {LATCH_QUEUE}")
    rules = chain_rules(spec)
    for name, (ctype, hook, prio) in CHAINS.items():
        lines.append(
            f"add chain {where} {name} {{ type {ctype} hook {hook} priority {prio}; "
            "policy accept; }"
        )
        lines.append(f"flush chain {where} {name}")
        lines.extend(f"add rule {where} {name} {rule}" for rule in rules[name])
    return Script("\n".join(lines) + "\n")


def plan_setup(spec: TableSpec) -> Script:
    """Create or repair the table: idempotent, and elements already present survive."""
    return setup_script(spec)


def plan_restore(spec: TableSpec, elements: Iterable[Element]) -> Json:
    """Re-add elements after the table was rebuilt (e.g. someone flushed the ruleset)."""
    return transaction(element_commands(spec, elements, ()))


def plan_teardown(spec: TableSpec) -> Script:
    where = f"{spec.family} {spec.name}"
    return Script(f"add table {where}\ndelete table {where}\n")
