"""The real driver: libnftables through its Python binding, in this process's netns.

One `Nftables` context per driver; every `apply` is one `nft_run_cmd_from_buffer` call, i.e.
one kernel transaction (all or nothing). Never an `nft` subprocess. Element changes, the
per-call hot path, skip libnftables' JSON parser and cache and go to the kernel as the same
nfnetlink batch (drivers/nfnetlink.py); everything else goes through libnftables.

libnftables acts on the network namespace of the calling thread at the time it opens its
netlink socket, so the agent simply runs inside the gateway's namespace; tests use
`drivers.netns.NetnsDriver`, which runs this driver in a worker process started inside the
lab namespace.
"""

from __future__ import annotations

from typing import Any

from filter_agent.driver import parse_element, sort_elements
from filter_agent.drivers.nfnetlink import ElementWriter, NotElements
from filter_agent.errors import DriverError
from filter_agent.plan import Element, Script, TableSpec, Transaction


class LibNftablesDriver:
    def __init__(self, spec: TableSpec | None = None, *, element_writer: str = "netlink") -> None:
        import nftables  # imported here: unit tests with the fake need no libnftables

        self.spec = spec or TableSpec()
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        self._elements = ElementWriter() if element_writer == "netlink" else None

    def close(self) -> None:
        if self._elements is not None:
            self._elements.close()

    def _run(self, text: str) -> str:
        rc, out, err = self._nft.cmd(text)
        if rc != 0:
            raise DriverError("nftables transaction failed", detail=str(err).strip())
        return str(out)

    def apply(self, tx: Transaction) -> None:
        if isinstance(tx, Script):
            self._run(tx.text)
            return
        commands = tx.get("nftables")
        if self._elements is not None and isinstance(commands, list):
            try:
                self._elements.apply(commands)
                return
            except NotElements:
                pass
        import json

        self._run(json.dumps(tx))

    def _list_table(self) -> list[dict[str, Any]] | None:
        import json

        rc, out, _err = self._nft.cmd(f"list table {self.spec.family} {self.spec.name}")
        if rc != 0:
            return None
        doc = json.loads(out)
        items: list[dict[str, Any]] = doc.get("nftables", [])
        return items

    def table_exists(self) -> bool:
        return self._list_table() is not None

    def elements(self) -> tuple[Element, ...]:
        items = self._list_table() or []
        out: list[Element] = []
        for item in items:
            body = item.get("set") or item.get("map")
            if body is None:
                continue
            out.extend(parse_element(body["name"], raw) for raw in body.get("elem", []))
        return sort_elements(out)
