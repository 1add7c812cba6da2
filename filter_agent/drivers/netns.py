"""Run the real driver (and the conntrack flusher) inside another network namespace.

libnftables and ctnetlink act on the namespace of the calling thread. Rather than setns()
a thread of the test process (fragile: libraries cache sockets, other threads stay
outside), the kernel work happens in a small worker *process* started with
`ip netns exec <ns> python -m filter_agent.drivers.netns_worker`: the whole process lives
in the gateway namespace, speaks JSON lines over stdin/stdout, and dies with its pipe. The
production agent simply runs in the gateway's namespace and uses LibNftablesDriver
directly. Closing the driver (or killing the worker) leaves the kernel state in place,
which is exactly "the agent died" for the lab tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import IO, Any

from filter_agent.driver import sort_elements
from filter_agent.engine import FlowMatch
from filter_agent.errors import DriverError
from filter_agent.latch import QueuedPacket
from filter_agent.latch_kernel import packets_from_json
from filter_agent.latch_plan import LatchSpec, QueuePath, QueueProbe
from filter_agent.plan import Element, Script, TableSpec, Transaction


class NetnsDriver:
    def __init__(
        self, netns: str, spec: TableSpec | None = None, *, element_writer: str = "netlink"
    ) -> None:
        self.netns = netns
        self.spec = spec or TableSpec()
        self._proc: subprocess.Popen[str] | None = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-m",
                "filter_agent.drivers.netns_worker",
                self.spec.family,
                self.spec.name,
                hex(self.spec.mark),
                element_writer,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _call(self, request: dict[str, Any]) -> Any:
        proc = self._proc
        if proc is None:
            raise DriverError("netns driver is closed")
        stdin: IO[str] | None = proc.stdin
        stdout: IO[str] | None = proc.stdout
        if stdin is None or stdout is None:
            raise DriverError("netns worker has no pipes")
        try:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
            line = stdout.readline()
        except OSError as exc:
            raise DriverError("netns worker is gone", detail=str(exc)) from exc
        if not line:
            raise DriverError("netns worker exited", detail=f"rc={proc.poll()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise DriverError(reply.get("error", "worker error"), detail=reply.get("detail", ""))
        return reply.get("result")

    def apply(self, tx: Transaction) -> None:
        if isinstance(tx, Script):
            self._call({"op": "script", "text": tx.text})
        else:
            self._call({"op": "json", "doc": tx})

    def elements(self) -> tuple[Element, ...]:
        raw = self._call({"op": "elements"})
        return sort_elements(
            Element(
                e["set"],
                tuple(e["key"]),
                None if e["value"] is None else tuple(e["value"]),
                e["timeout"],
                e["expires"],
                e["packets"],
                e["bytes"],
            )
            for e in raw
        )

    def table_exists(self) -> bool:
        return bool(self._call({"op": "exists"}))

    def flush(self, flows: Sequence[FlowMatch]) -> int:
        """ConntrackFlusher, in the same namespace."""
        return int(self._call({"op": "flush", "flows": [asdict(f) for f in flows]}))

    # Latching: the worker binds the NFQUEUE (a queue belongs to a namespace) and this
    # side is a latch.PacketSource; the decisions stay with the engine in this process.

    def latch_probe(self, latch: LatchSpec) -> QueueProbe:
        return QueueProbe(**self._call({"op": "latch_probe", "queue_num": latch.queue_num}))

    def latch_install(self, latch: LatchSpec, path: QueuePath | None = None) -> QueuePath:
        request = {"op": "latch_install", "queue_num": latch.queue_num, "path": path}
        return QueuePath(self._call(request))

    def latch_open(self, latch: LatchSpec) -> None:
        self._call({"op": "latch_open", "queue_num": latch.queue_num})

    def latch_close(self) -> None:
        self._call({"op": "latch_close"})

    def poll(self, timeout: float) -> list[QueuedPacket]:
        return packets_from_json(self._call({"op": "latch_poll", "timeout": timeout}))

    def verdict(self, packet_id: int, accept: bool) -> None:
        self._call({"op": "latch_verdict", "id": packet_id, "accept": accept})

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> NetnsDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
