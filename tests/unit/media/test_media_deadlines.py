"""alg.media.deadlines: keyed deadlines in a lazy heap, against a plain dict scanned
(what the media core did before), and the rule that keeps the core's heap right."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from alg.media.deadlines import Deadlines

MEDIA = Path(__file__).resolve().parents[3] / "alg" / "media"

operations = st.lists(
    st.tuples(
        st.sampled_from(["set", "discard", "due"]),
        st.integers(0, 7),  # a few keys: many replacements
        st.integers(0, 50).map(float),
    ),
    max_size=300,
)


@given(operations)
def test_deadlines_behave_like_a_scanned_dict(ops: list[tuple[str, int, float]]) -> None:
    heap: Deadlines[int] = Deadlines()
    plain: dict[int, float] = {}
    for op, key, when in ops:
        if op == "set":
            heap.set(key, when)
            plain[key] = when
        elif op == "discard":
            heap.discard(key)
            plain.pop(key, None)
        else:
            due = sorted((at, k) for k, at in plain.items() if at <= when)
            got = heap.due(when)
            assert sorted(got) == sorted(k for _, k in due)
            assert [plain[k] for k in got] == sorted(plain[k] for k in got)  # earliest first
            for k in got:
                del plain[k]
        assert heap.next() == min(plain.values(), default=None)
        assert len(heap) == len(plain)
        assert all((k in heap) == (k in plain) for k in range(8))


def test_replacing_a_deadline_many_times_keeps_the_heap_small() -> None:
    heap: Deadlines[str] = Deadlines()
    for i in range(10_000):
        heap.set("call", float(i))  # a session refreshed over and over
    assert heap.next() == 9999.0
    assert len(heap._heap) <= 2 * len(heap) + 65


def test_only_expire_at_changes_a_calls_expiry() -> None:
    """The media core finds due calls through `_expiries`, not by scanning them: an
    assignment to `expires_at` anywhere but `_expire_at` would go unseen (a call
    expiring late, or never)."""
    offenders = []
    for path in sorted(MEDIA.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef) or func.name == "_expire_at":
                continue
            for node in ast.walk(func):
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                    if isinstance(node, ast.AugAssign | ast.AnnAssign)
                    else []
                )
                offenders += [
                    f"{path.name}:{node.lineno}"
                    for target in targets
                    if isinstance(target, ast.Attribute) and target.attr == "expires_at"
                ]
    assert offenders == []
