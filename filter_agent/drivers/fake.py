"""An in-memory nftables that validates and applies the agent's transactions.

It understands exactly the dialect the planner emits: the native-syntax skeleton (`Script`)
and JSON element commands. It enforces what the kernel enforces and what matters to the
engine: transactions are all or nothing; sets/maps/chains must exist; element keys and
values must match the set's types; deleting a missing element fails (ENOENT, hence the
planner's add-then-delete guard); re-adding an element with other map data fails (EEXIST);
re-adding it with a timeout refreshes the timeout and keeps the counters (Linux >= 6.x);
elements disappear at `now >= added + timeout` (the test moves `now`).

Its `dump()` is a canonical text rendering, compared to golden files by the unit tests.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from filter_agent.driver import sort_elements
from filter_agent.errors import DriverError
from filter_agent.plan import Element, Json, KeyPart, Script, TableSpec, Transaction

_PROTOS = {"udp": 17, "tcp": 6}


@dataclass
class _Elem:
    value: tuple[KeyPart, ...] | None
    timeout: int | None
    expires_at: float | None
    packets: int = 0
    bytes: int = 0


@dataclass
class _Set:
    types: tuple[str, ...]
    data: tuple[str, ...] | None
    counter: bool
    elements: dict[tuple[KeyPart, ...], _Elem] = field(default_factory=dict)


@dataclass
class _Chain:
    type: str
    hook: str
    prio: int
    policy: str
    rules: list[str] = field(default_factory=list)


@dataclass
class _Table:
    sets: dict[str, _Set] = field(default_factory=dict)
    chains: dict[str, _Chain] = field(default_factory=dict)


_SET_RE = re.compile(
    r"add (set|map) (\w+) (\w+) (\w+) \{ type ([\w .]+?)(?: : ([\w .]+))?; flags timeout;"
    r"( counter;)? \}$"
)
_CHAIN_RE = re.compile(  # a base chain, or a regular one (no braces: `latch_queue`)
    r"add chain (\w+) (\w+) (\w+)"
    r"(?: \{ type (\w+) hook (\w+) priority (-?\d+); policy (\w+); \})?$"
)


def _fail(message: str) -> DriverError:
    return DriverError(message, detail=message)


def _check_part(datatype: str, part: Any) -> KeyPart:
    if datatype == "inet_proto":
        if part in _PROTOS:
            return str(part)
        raise _fail(f"bad inet_proto {part!r}")
    if datatype == "ipv4_addr":
        try:
            return str(ipaddress.IPv4Address(part))
        except (ValueError, TypeError):
            raise _fail(f"bad ipv4_addr {part!r}") from None
    if datatype == "inet_service":
        if isinstance(part, int) and not isinstance(part, bool) and 0 <= part <= 65535:
            return part
        raise _fail(f"bad inet_service {part!r}")
    raise _fail(f"unknown datatype {datatype}")


def _check_tuple(types: tuple[str, ...], raw: Any) -> tuple[KeyPart, ...]:
    parts = raw["concat"] if isinstance(raw, dict) and "concat" in raw else [raw]
    if len(parts) != len(types):
        raise _fail(f"expected {len(types)} fields, got {parts!r}")
    return tuple(_check_part(t, p) for t, p in zip(types, parts, strict=True))


class FakeNftDriver:
    def __init__(self, spec: TableSpec | None = None, now: float = 0.0) -> None:
        self.spec = spec or TableSpec()
        self.now = now
        self.log: list[Transaction] = []
        self.fail_next: str | None = None  # fault injection: the next apply fails
        self._tables: dict[tuple[str, str], _Table] = {}

    # -- NftDriver ------------------------------------------------------------------------

    def apply(self, tx: Transaction) -> None:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise _fail(message)
        self._expire()
        work = copy.deepcopy(self._tables)
        if isinstance(tx, Script):
            for line in tx.commands:
                self._script_command(work, line.strip())
        else:
            commands = tx.get("nftables") if isinstance(tx, dict) else None
            if not isinstance(commands, list):
                raise _fail("not a libnftables JSON document")
            for cmd in commands:
                self._json_command(work, cmd)
        self._tables = work
        self.log.append(copy.deepcopy(tx))

    def table_exists(self) -> bool:
        return (self.spec.family, self.spec.name) in self._tables

    def elements(self) -> tuple[Element, ...]:
        self._expire()
        table = self._tables.get((self.spec.family, self.spec.name))
        if table is None:
            return ()
        out = []
        for name, s in table.sets.items():
            for key, e in s.elements.items():
                expires = None
                if e.expires_at is not None:
                    expires = max(0, int(e.expires_at - self.now))
                packets = e.packets if s.counter else None
                nbytes = e.bytes if s.counter else None
                out.append(Element(name, key, e.value, e.timeout, expires, packets, nbytes))
        return sort_elements(out)

    # -- test helpers ---------------------------------------------------------------------

    def count(self, set_name: str, key: tuple[KeyPart, ...], packets: int, nbytes: int) -> None:
        """Pretend packets matched an element (what the kernel's per-element counter does)."""
        table = self._tables[(self.spec.family, self.spec.name)]
        elem = table.sets[set_name].elements[key]
        elem.packets += packets
        elem.bytes += nbytes

    def delete_table_behind_our_back(self) -> None:
        """What `nft flush ruleset` by an operator does."""
        self._tables.pop((self.spec.family, self.spec.name), None)

    def dump(self) -> str:
        """Canonical rendering of every table, for golden files."""
        self._expire()
        lines: list[str] = []
        for (family, name), table in sorted(self._tables.items()):
            lines.append(f"table {family} {name}")
            for sname, s in sorted(table.sets.items()):
                kind = "map" if s.data else "set"
                data = f" : {' . '.join(s.data)}" if s.data else ""
                counter = " counter" if s.counter else ""
                lines.append(f"  {kind} {sname} {' . '.join(s.types)}{data}{counter}")
                for key, e in sorted(s.elements.items(), key=lambda kv: [str(k) for k in kv[0]]):
                    text = " . ".join(str(k) for k in key)
                    if e.value is not None:
                        text += " : " + " . ".join(str(v) for v in e.value)
                    if e.timeout is not None:
                        text += f" timeout {e.timeout}s"
                    if s.counter:
                        text += f" packets {e.packets} bytes {e.bytes}"
                    lines.append(f"    {text}")
            for cname, c in sorted(table.chains.items(), key=lambda kv: kv[1].prio):
                lines.append(f"  chain {cname} {c.type} {c.hook} {c.prio} policy {c.policy}")
                lines.extend(f"    {rule}" for rule in c.rules)
        return "\n".join(lines) + "\n"

    # -- internals ------------------------------------------------------------------------

    def _expire(self) -> None:
        for table in self._tables.values():
            for s in table.sets.values():
                dead = [
                    k
                    for k, e in s.elements.items()
                    if e.expires_at is not None and e.expires_at <= self.now
                ]
                for k in dead:
                    del s.elements[k]

    @staticmethod
    def _table(work: dict[tuple[str, str], _Table], family: str, name: str) -> _Table:
        table = work.get((family, name))
        if table is None:
            raise _fail(f"No such file or directory: table {family} {name}")
        return table

    def _script_command(self, work: dict[tuple[str, str], _Table], line: str) -> None:
        words = line.split()
        if words[:2] == ["add", "table"] and len(words) == 4:
            work.setdefault((words[2], words[3]), _Table())
            return
        if words[:2] == ["delete", "table"] and len(words) == 4:
            self._table(work, words[2], words[3])
            del work[(words[2], words[3])]
            return
        if words[:2] == ["flush", "chain"] and len(words) == 5:
            chain = self._table(work, words[2], words[3]).chains.get(words[4])
            if chain is None:
                raise _fail(f"No such file or directory: chain {words[4]}")
            chain.rules.clear()
            return
        if words[:2] == ["add", "rule"] and len(words) > 5:
            table = self._table(work, words[2], words[3])
            chain = table.chains.get(words[4])
            if chain is None:
                raise _fail(f"No such file or directory: chain {words[4]}")
            rule = " ".join(words[5:])
            for ref in re.findall(r"@(\w+)", rule):
                if ref not in table.sets:
                    raise _fail(f"rule refers to missing set @{ref}")
            for target in re.findall(r"\b(?:goto|jump) (\w+)", rule):
                if target not in table.chains:
                    raise _fail(f"No such file or directory: chain {target}")
            chain.rules.append(rule)
            return
        m = _SET_RE.match(line)
        if m:
            kind, family, tname, sname, types, data, counter = m.groups()
            if (kind == "map") != (data is not None):
                raise _fail(f"{kind} declaration mismatch: {line}")
            table = self._table(work, family, tname)
            new = _Set(
                tuple(types.split(" . ")),
                tuple(data.split(" . ")) if data else None,
                counter is not None,
            )
            old = table.sets.get(sname)
            if old is None:
                table.sets[sname] = new
            elif (old.types, old.data, old.counter) != (new.types, new.data, new.counter):
                raise _fail(f"File exists: set {sname} has another definition")
            return
        m = _CHAIN_RE.match(line)
        if m:
            family, tname, cname, ctype, hook, prio, policy = m.groups()
            table = self._table(work, family, tname)
            chain = _Chain(ctype or "", hook or "", int(prio or 0), policy or "")
            table.chains.setdefault(cname, chain)
            return
        raise _fail(f"syntax error (fake understands the planner's dialect only): {line}")

    def _json_command(self, work: dict[tuple[str, str], _Table], cmd: Json) -> None:
        if not isinstance(cmd, dict) or len(cmd) != 1:
            raise _fail(f"bad command {cmd!r}")
        ((verb, body),) = cmd.items()
        if not isinstance(body, dict) or len(body) != 1:
            raise _fail(f"bad command body {body!r}")
        ((obj, args),) = body.items()
        if obj == "table" and verb in ("add", "delete"):
            self._script_command(work, f"{verb} table {args['family']} {args['name']}")
            return
        if obj != "element" or verb not in ("add", "delete"):
            raise _fail(f"fake does not support {verb} {obj}")
        table = self._table(work, args["family"], args["table"])
        s = table.sets.get(args["name"])
        if s is None:
            raise _fail(f"No such file or directory: set {args['name']}")
        for raw in args["elem"]:
            self._element(s, verb, raw)

    def _element(self, s: _Set, verb: str, raw: Any) -> None:
        value = None
        if s.data is not None and verb == "add":
            if not isinstance(raw, list) or len(raw) != 2:
                raise _fail("map element needs key and data")
            raw, data = raw
            value = _check_tuple(s.data, data)
        timeout = None
        if isinstance(raw, dict) and "elem" in raw:
            timeout = raw["elem"].get("timeout")
            raw = raw["elem"]["val"]
            if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
                raise _fail(f"bad timeout {timeout!r}")
        key = _check_tuple(s.types, raw)
        current = s.elements.get(key)
        if verb == "delete":
            if current is None:
                raise _fail(f"No such file or directory: element {key}")
            del s.elements[key]
            return
        expires_at = None if timeout is None else self.now + timeout
        if current is None:
            s.elements[key] = _Elem(value, timeout, expires_at)
        elif current.value != value:
            raise _fail(f"File exists: element {key} maps to {current.value}")
        elif timeout is not None:
            current.timeout, current.expires_at = timeout, expires_at
