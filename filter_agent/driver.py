"""The narrow kernel interface (knftables style): transactions in, elements out.

Everything the engine needs from nftables is three calls. Two implementations:
`drivers.libnftables.LibNftablesDriver` (the kernel, through libnftables in the calling
process's network namespace) and `drivers.fake.FakeNftDriver` (in memory, validating the
same transactions, golden-testable dump). `drivers.netns.NetnsDriver` runs the real one
inside another network namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from filter_agent.plan import Element, Transaction


class NftDriver(Protocol):
    def apply(self, tx: Transaction) -> None:
        """Apply one transaction atomically, or raise `DriverError` having changed nothing."""

    def elements(self) -> tuple[Element, ...]:
        """Every live element of the agent's sets/maps, with timeout, expiry and counters
        where the set has them, sorted by (set, key). Empty if the table does not exist."""

    def table_exists(self) -> bool: ...


def sort_elements(elements: Iterable[Element]) -> tuple[Element, ...]:
    return tuple(sorted(elements, key=lambda e: (e.set, tuple(str(k) for k in e.key))))


def without_state(elements: Iterable[Element]) -> tuple[Element, ...]:
    """Elements modulo counters and remaining time: what two drivers must agree on."""
    return sort_elements(Element(e.set, e.key, e.value, e.timeout) for e in elements)


def parse_element(set_name: str, raw: Any) -> Element:
    """One element of libnftables' JSON dump (`nft -j list table`) -> Element."""
    value: tuple[str | int, ...] | None = None
    if isinstance(raw, list):  # map element: [key, data]
        raw, data = raw
        value = tuple(data["concat"]) if isinstance(data, dict) else (data,)
    timeout = expires = packets = nbytes = None
    if isinstance(raw, dict) and "elem" in raw:
        body = raw["elem"]
        timeout = body.get("timeout")
        expires = body.get("expires")
        counter = body.get("counter")
        if counter is not None:
            packets, nbytes = counter["packets"], counter["bytes"]
        raw = body["val"]
    key = tuple(raw["concat"]) if isinstance(raw, dict) else (raw,)
    return Element(set_name, key, value, timeout, expires, packets, nbytes)
