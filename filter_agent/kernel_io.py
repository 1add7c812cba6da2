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

from filter_agent.conntrack import CtnetlinkFlusher, shapes
from filter_agent.driver import parse_element
from filter_agent.engine import FlowMatch
from filter_agent.latch_plan import NETLINK_NETFILTER, NLMSG_ERROR, table_query
from filter_agent.plan import COUNTED_SETS, Element, TableSpec

log = logging.getLogger("sipwall.agent.conntrack")


class TableProbe:
    """One netlink socket for the probe's life: closing one right after an nftables
    commit costs an RCU grace period, 7-15 ms that also stall the agent's next
    transaction (see conntrack.CtnetlinkFlusher). Dropped after any error."""

    def __init__(self, spec: TableSpec | None = None, timeout: float = 2.0) -> None:
        self.spec = spec or TableSpec()
        self.timeout = timeout
        self._seq = 0
        self._sock: socket.socket | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __call__(self) -> bool:
        """True if the table exists, False on ENOENT; OSError for anything else."""
        self._seq = self._seq % 0x7FFFFFFF + 1
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self._sock.bind((0, 0))
            self._sock.settimeout(self.timeout)
        try:
            return self._ask(self._sock)
        except BaseException:
            self.close()
            raise

    def _ask(self, sk: socket.socket) -> bool:
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

    Flows with both ends known are deleted at once, on the caller's thread (the event
    loop): one netlink write of exact deletes and its acks, tens of microseconds --
    less than handing them to a thread would cost. The forward chain already drops a
    released flow per packet; the flush removes its NAT state.

    Flows that need a dump of the conntrack table (~10 ms of kernel time, see
    conntrack.py) go to one worker thread and are gathered: at most one dump per
    `dump_interval`, for every release made meanwhile, so the agent's conntrack work
    stays bounded whatever the call rate. Nothing depends on the delay: the flow is
    already dropped per packet, and its public port is quarantined far longer. Each
    thread has its own netlink socket, kept open (see CtnetlinkFlusher)."""

    def __init__(self, mark: int | None = None, dump_interval: float = 2.0) -> None:
        self._exact = CtnetlinkFlusher(mark=mark)
        self._inner = CtnetlinkFlusher(mark=mark)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conntrack")
        self._dump_interval = dump_interval
        self._lock = threading.Lock()
        self._pending: list[FlowMatch] = []
        self._scheduled = False
        self._last_dump = -math.inf

    def flush(self, flows: Sequence[FlowMatch]) -> None:
        exact = [shape for flow in flows for shape in shapes(flow) or ()]
        if exact:
            log.debug("conntrack: %d entries deleted", self._exact.delete_exact(exact))
        rest = [flow for flow in flows if shapes(flow) is None]
        if not rest:
            return
        with self._lock:
            self._pending.extend(rest)
            if self._scheduled:
                return
            self._scheduled = True
        self._worker.submit(self._round).add_done_callback(_report_flush)

    def _round(self) -> int:
        wait = self._last_dump + self._dump_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # a worker thread: gathers releases, blocks nothing
        with self._lock:
            flows, self._pending = self._pending, []
            self._scheduled = False
        self._last_dump = time.monotonic()
        return self._inner.flush(flows)

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._inner.close()
        self._exact.close()


def _report_flush(future: Future[int]) -> None:
    error = future.exception()
    if error is not None:
        log.error("conntrack flush failed: %s", error)
    else:
        log.debug("conntrack: %d entries deleted", future.result())
