"""Kernel reads for the running agent that must not stall its loop.

* `TableProbe` answers "does our table still exist?" with one nfnetlink GETTABLE request
  for our table alone (latch_plan.table_query): tens of microseconds whatever the number
  of pinholes, whereas anything through libnftables (`list tables` included) first fills
  a cache holding every element -- half a second with 80,000 of them, on the loop.
* `element_reader` dumps every counted element for `observe`; the service calls it from
  a worker thread, which is why it gets a context of its own (a libnftables
  context is not shared between threads).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from filter_agent.conntrack import PyrouteConntrackFlusher, shapes
from filter_agent.driver import parse_element
from filter_agent.engine import FlowMatch
from filter_agent.latch_plan import NETLINK_NETFILTER, NLMSG_ERROR, table_query
from filter_agent.plan import COUNTED_SETS, Element, TableSpec

log = logging.getLogger("sipwall.agent.conntrack")


class TableProbe:
    def __init__(self, spec: TableSpec | None = None, timeout: float = 2.0) -> None:
        self.spec = spec or TableSpec()
        self.timeout = timeout
        self._seq = 0

    def __call__(self) -> bool:
        """True if the table exists, False on ENOENT; OSError for anything else."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sk:
            sk.bind((0, 0))
            sk.settimeout(self.timeout)
            sk.sendall(table_query(self.spec, self._seq))
            while True:
                data = sk.recv(65536)
                start = 0
                while start + 16 <= len(data):
                    length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, start)
                    body, start = start + 16, start + max(length, 16)
                    if seq != self._seq:
                        continue
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, body)
                        if code == -errno.ENOENT:
                            return False
                        if code < 0:
                            raise OSError(-code, f"GETTABLE: {os.strerror(-code)}")
                        continue
                    return True  # NFT_MSG_NEWTABLE: the table's attributes


def element_reader(spec: TableSpec | None = None) -> Callable[[], list[Element]]:
    """The counted sets' elements (in4, in4a, out4, out4a), one `list set` each: for
    `list set` libnftables fetches that set's elements only, so the NAT maps (as many
    elements again, and no counters) are never dumped. A set that cannot be listed (the
    table is gone: the table watch rebuilds it) contributes nothing."""
    import nftables

    where = spec or TableSpec()
    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(False)

    def read() -> list[Element]:
        out: list[Element] = []
        for name in COUNTED_SETS:
            rc, text, _err = nft.cmd(f"list set {where.family} {where.name} {name}")
            if rc != 0:
                continue
            for item in json.loads(text).get("nftables", []):
                body = item.get("set")
                if body is not None:
                    out.extend(parse_element(name, raw) for raw in body.get("elem", []))
        return out

    return read


class ConntrackFlush:
    """The engine's `ConntrackFlusher` for this process's namespace.

    pyroute2 0.9's Conntrack drives its own asyncio loop underneath, which cannot run in
    the agent's event-loop thread ("This event loop is already running"), so flushes run
    on one worker thread, in order. The forward chain already drops a released flow per
    packet; the flush removes its NAT state.

    Flows with both ends known go at once (exact deletes, microseconds). Flows that need
    a dump of the conntrack table (~10 ms, see conntrack.py) are gathered: at most one
    dump per `dump_interval`, for every release made meanwhile, so the agent's conntrack
    work stays bounded whatever the call rate. Nothing depends on the delay: the flow is
    already dropped per packet, and its public port is quarantined far longer."""

    def __init__(self, mark: int | None = None, dump_interval: float = 0.25) -> None:
        self._inner = PyrouteConntrackFlusher(mark=mark)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conntrack")
        self._dump_interval = dump_interval
        self._lock = threading.Lock()
        self._pending: list[FlowMatch] = []
        self._scheduled = False
        self._last_dump = -math.inf

    def flush(self, flows: Sequence[FlowMatch]) -> None:
        with self._lock:
            self._pending.extend(flows)
            if self._scheduled:
                return
            self._scheduled = True
        self._worker.submit(self._round).add_done_callback(_report_flush)

    def _round(self) -> int:
        with self._lock:
            dump = any(shapes(flow) is None for flow in self._pending)
        if dump:
            wait = self._last_dump + self._dump_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # a worker thread: gathers releases, blocks nothing
        with self._lock:
            flows, self._pending = self._pending, []
            self._scheduled = False
        if any(shapes(flow) is None for flow in flows):
            self._last_dump = time.monotonic()
        return self._inner.flush(flows)

    def close(self) -> None:
        self._worker.shutdown(wait=True)


def _report_flush(future: Future[int]) -> None:
    error = future.exception()
    if error is not None:
        log.error("conntrack flush failed: %s", error)
    else:
        log.debug("conntrack: %d entries deleted", future.result())
