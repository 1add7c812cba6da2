"""Read-only FCP views of the engine's objects (List*/Get*), for one caller.

A normal owner sees its own objects only; another owner's id is NOT_FOUND, exactly like a
missing one (FCP §4, PCP RFC 6887 §11.3: ids must not be probeable). `ADMIN_OWNER` sees
all of them, with group ids qualified as "<owner>/<group>" (`translate.View`). Counters
are the kernel's per-element counters as of the last observe; a binding's and a group's
are the sums of their rules'.
"""

from __future__ import annotations

from collections.abc import Callable

from fcp import types as f
from fcp.backend import ADMIN_OWNER
from fcp.errors import not_found
from filter_agent import model as m
from filter_agent import snapshot
from filter_agent.engine import Engine
from filter_agent.translate import QUALIFIER, View


class Queries:
    def __init__(self, engine: Engine, pool: str, owner: str, view: View) -> None:
        self.engine = engine
        self.pool = pool
        self.owner = owner
        self.view = view

    def _visible(self, obj: m.Binding | m.Rule | None) -> bool:
        return obj is not None and self.owner in (ADMIN_OWNER, obj.owner)

    def _group_filter(self, group_id: str | None) -> Callable[[str, str], bool]:
        if group_id is None:
            return lambda o, g: True
        if self.owner == ADMIN_OWNER:
            want_owner, _, want_group = group_id.partition(QUALIFIER)
            return lambda o, g: (o, g) == (want_owner, want_group)
        return lambda o, g: g == group_id

    def _counters(self, rules: list[m.Rule]) -> m.Counters:
        total = m.Counters()
        for r in rules:
            total = total + snapshot.rule_counters(self.engine, r.id)
        return total

    def binding(self, b: m.Binding) -> f.Binding:
        rules = snapshot.rules_of(self.engine, b.id)
        return self.view.binding(b, self.pool, self._counters(rules))

    def rule(self, r: m.Rule) -> f.Rule:
        return self.view.rule(r, snapshot.rule_counters(self.engine, r.id))

    def _bindings(self, group_id: str | None) -> list[m.Binding]:
        match = self._group_filter(group_id)
        return sorted(
            (
                b
                for b in snapshot.all_bindings(self.engine)
                if self._visible(b) and match(b.owner, b.group)
            ),
            key=lambda b: snapshot.id_number(b.id),
        )

    def _rules(self, group_id: str | None, binding_id: str | None = None) -> list[m.Rule]:
        match = self._group_filter(group_id)
        return sorted(
            (
                r
                for r in snapshot.all_rules(self.engine)
                if self._visible(r)
                and match(r.owner, r.group)
                and binding_id in (None, r.binding_id)
            ),
            key=lambda r: snapshot.id_number(r.id),
        )

    def list_bindings(self, group_id: str | None) -> list[f.Binding]:
        return [self.binding(b) for b in self._bindings(group_id)]

    def list_rules(self, group_id: str | None, binding_id: str | None) -> list[f.Rule]:
        return [self.rule(r) for r in self._rules(group_id, binding_id)]

    def list_groups(self) -> list[f.Group]:
        bindings: dict[tuple[str, str], list[m.Binding]] = {}
        rules: dict[tuple[str, str], list[m.Rule]] = {}
        for b in self._bindings(None):
            bindings.setdefault((b.owner, b.group), []).append(b)
        for r in self._rules(None):
            rules.setdefault((r.owner, r.group), []).append(r)
        return [self._group(key, bindings[key], rules.get(key, [])) for key in sorted(bindings)]

    def _group(
        self, key: tuple[str, str], bindings: list[m.Binding], rules: list[m.Rule]
    ) -> f.Group:
        return self.view.group(key[0], key[1], bindings, rules, self._counters(rules))

    def get_rule(self, rule_id: str) -> f.Rule:
        r = snapshot.find_rule(self.engine, rule_id)
        if r is None or not self._visible(r):
            raise not_found("rule", rule_id)
        return self.rule(r)

    def get_binding(self, binding_id: str) -> f.Binding:
        b = snapshot.find_binding(self.engine, binding_id)
        if b is None or not self._visible(b):
            raise not_found("binding", binding_id)
        return self.binding(b)

    def get_group(self, group_id: str) -> f.Group:
        bindings = self._bindings(group_id)
        if not bindings:
            raise not_found("group", group_id)
        first = bindings[0]
        return self._group((first.owner, first.group), bindings, self._rules(group_id))
