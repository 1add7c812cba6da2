"""Worker behind `NetnsDriver`: JSON lines in, JSON lines out, inside one namespace."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

from filter_agent.conntrack import CtnetlinkFlusher
from filter_agent.drivers.libnftables import LibNftablesDriver
from filter_agent.engine import FlowMatch
from filter_agent.errors import DriverError
from filter_agent.latch_kernel import LatchSession
from filter_agent.plan import Script, TableSpec


def _handle(
    driver: LibNftablesDriver,
    request: dict[str, Any],
    latch: LatchSession,
    flusher: CtnetlinkFlusher,
) -> Any:
    op = request["op"]
    if op.startswith("latch_"):  # NFQUEUE latching: the queue lives in this namespace
        return latch.handle(request)
    if op == "script":
        driver.apply(Script(request["text"]))
        return None
    if op == "json":
        driver.apply(request["doc"])
        return None
    if op == "elements":
        return [asdict(e) for e in driver.elements()]
    if op == "exists":
        return driver.table_exists()
    if op == "flush":
        flows = [FlowMatch(**f) for f in request["flows"]]
        return flusher.flush(flows)
    raise ValueError(f"unknown op {op!r}")


def main(argv: list[str]) -> int:
    family, name, mark, element_writer = argv
    spec = TableSpec(family, name, int(mark, 16))
    driver = LibNftablesDriver(spec, element_writer=element_writer)
    latch = LatchSession(driver, spec)
    flusher = CtnetlinkFlusher()  # one socket for the worker's life
    for line in sys.stdin:
        try:
            reply = {"ok": True, "result": _handle(driver, json.loads(line), latch, flusher)}
        except DriverError as exc:
            reply = {"ok": False, "error": exc.message, "detail": exc.detail}
        except (ValueError, KeyError, OSError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    latch.close()
    flusher.close()
    driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
