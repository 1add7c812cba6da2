"""Cheap kernel reads for the running agent, each on its own libnftables context.

* `TableProbe` answers "does our table still exist?" with `list tables`, which returns
  table names only: polling it every 250 ms costs microseconds even with 100,000 pinholes,
  whereas `LibNftablesDriver.table_exists` lists the whole table.
* `element_reader` dumps every element with its counters for `observe`; the service calls
  it from a worker thread, which is why it gets a context of its own (a libnftables
  context is not shared between threads).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from filter_agent.conntrack import PyrouteConntrackFlusher
from filter_agent.drivers.libnftables import LibNftablesDriver
from filter_agent.engine import FlowMatch
from filter_agent.plan import Element, TableSpec


class TableProbe:
    def __init__(self, spec: TableSpec | None = None) -> None:
        import nftables

        self.spec = spec or TableSpec()
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)

    def __call__(self) -> bool:
        rc, out, _err = self._nft.cmd(f"list tables {self.spec.family}")
        if rc != 0:
            return False
        for item in json.loads(out).get("nftables", []):
            table = item.get("table")
            if table is not None and table.get("name") == self.spec.name:
                return True
        return False


def element_reader(spec: TableSpec | None = None) -> Callable[[], tuple[Element, ...]]:
    return LibNftablesDriver(spec).elements


class ConntrackFlush:
    """The engine's `ConntrackFlusher` for this process's namespace (the count the pyroute2
    flusher returns is only logged)."""

    def __init__(self) -> None:
        self._inner = PyrouteConntrackFlusher()

    def flush(self, flows: Sequence[FlowMatch]) -> None:
        self._inner.flush(flows)
