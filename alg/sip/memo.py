"""Bounded memoization of pure parse functions over header text.

Many values recur from message to message: the URIs of the same phones, a UA's Contact,
`application/sdp`. Their parsed forms are immutable, so a dict lookup can replace a parse.
The table is bounded and simply cleared when full, so hostile input that never repeats
costs one failed lookup per value and cannot grow memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

T = TypeVar("T")

DEFAULT_CAPACITY: Final = 4096


class Memo(Generic[T]):
    __slots__ = ("_capacity", "_function", "_table")

    def __init__(self, function: Callable[[str], T], capacity: int = DEFAULT_CAPACITY) -> None:
        self._function = function
        self._capacity = capacity
        self._table: dict[str, T] = {}

    def __call__(self, text: str) -> T:
        table = self._table
        found = table.get(text)
        if found is not None:
            return found
        value = self._function(text)  # errors propagate and are not cached
        if len(table) >= self._capacity:
            table.clear()
        table[text] = value
        return value

    def __len__(self) -> int:
        return len(self._table)
