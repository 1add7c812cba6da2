"""Latching, the kernel side: probe the queue path, install the latch chains.

Runs in the agent's network namespace (production: the agent process itself; lab tests:
the `NetnsDriver` worker). The plans are in latch_plan.py; this module only sends them:
native scripts through the agent's libnftables driver, the xt rule and the probes as raw
nfnetlink batches (one `AF_NETLINK` socket per call, closed at once).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import asdict
from typing import Any

from filter_agent.driver import NftDriver
from filter_agent.errors import DriverError
from filter_agent.latch import Flow, NfqueueReader, QueuedPacket
from filter_agent.latch_plan import (
    NETLINK_NETFILTER,
    NLMSG_ERROR,
    Batch,
    LatchSpec,
    QueuePath,
    QueueProbe,
    choose_path,
    latch_teardown_script,
    nft_queue_expr,
    nft_queue_script,
    probe_batch,
    xt_nfqueue_expr,
    xt_nfqueue_install_batch,
)
from filter_agent.model import Protocol as Transport
from filter_agent.plan import TableSpec

_REPLY_TIMEOUT = 5.0  # seconds; the kernel answers a batch at once, this is a deadline


def send_batch(batch: Batch) -> None:
    """Send one nfnetlink batch and wait for every acknowledgement; raise `DriverError`
    with the kernel's errno on the first error. A batch without END is aborted by the
    kernel after validation, so "no error" then means "would have been accepted"."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sk:
        sk.bind((0, 0))
        sk.sendall(batch.data)
        waiting = set(batch.acked)
        deadline = time.monotonic() + _REPLY_TIMEOUT
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DriverError("nfnetlink batch: no answer", detail=f"seq {sorted(waiting)}")
            sk.settimeout(left)
            data = sk.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code < 0:
                        name = errno.errorcode.get(-code, str(-code))
                        raise DriverError(
                            "nfnetlink batch refused", detail=f"{name}: {os.strerror(-code)}"
                        )
                    waiting.discard(seq)
                offset += max(length, 16)


def _accepted(batch: Batch) -> tuple[bool, str]:
    try:
        send_batch(batch)
    except DriverError as exc:
        return False, exc.detail
    except OSError as exc:
        return False, str(exc)
    return True, "ok"


def probe(spec: TableSpec, latch: LatchSpec) -> QueueProbe:
    """Ask the kernel, in transactions it validates and aborts, which queue verdict it
    can hold: nft's `queue` expression, and the xt NFQUEUE target via nft_compat."""
    nft_ok, nft_why = _accepted(probe_batch(spec, nft_queue_expr(latch.queue_num)))
    xt_ok, xt_why = _accepted(probe_batch(spec, xt_nfqueue_expr(latch.queue_num)))
    return QueueProbe(nft_ok, xt_ok, f"nft queue: {nft_why}; xt NFQUEUE: {xt_why}")


def install(
    driver: NftDriver, spec: TableSpec, latch: LatchSpec, path: QueuePath | None = None
) -> QueuePath:
    """Install (or repair) the queue verdict in `latch_queue`, on the path given or on the
    one the probe chooses; returns the path used (`NONE` installs nothing). The table must
    have been set up with `TableSpec(latch=True)`; call again whenever `Engine.reconcile()`
    rebuilt it. Until then the chain is empty, which means address-only (safe)."""
    if path is None:
        path = choose_path(probe(spec, latch))
    if path is QueuePath.NFT_QUEUE:
        driver.apply(nft_queue_script(spec, latch))
    elif path is QueuePath.XT_NFQUEUE:
        send_batch(xt_nfqueue_install_batch(spec, latch))
    return path


def uninstall(driver: NftDriver, spec: TableSpec) -> None:
    driver.apply(latch_teardown_script(spec))


class LatchSession:
    """The `latch_*` requests of the netns worker (drivers/netns_worker.py): the worker
    lives in the gateway namespace, so the queue it binds is that namespace's queue. JSON
    in, JSON out; the decisions stay with the engine in the calling process."""

    def __init__(self, driver: NftDriver, spec: TableSpec) -> None:
        self.driver = driver
        self.spec = spec
        self.reader: NfqueueReader | None = None

    def handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op == "latch_probe":
            return asdict(probe(self.spec, LatchSpec(request["queue_num"])))
        if op == "latch_install":
            path = request.get("path")
            latch = LatchSpec(request["queue_num"])
            return install(self.driver, self.spec, latch, None if path is None else QueuePath(path))
        if op == "latch_uninstall":
            uninstall(self.driver, self.spec)
            return None
        if op == "latch_open":
            self.close()
            self.reader = NfqueueReader(request["queue_num"])
            return None
        if op == "latch_close":
            self.close()
            return None
        reader = self.reader
        if reader is None:
            raise ValueError("no queue is open")
        if op == "latch_poll":
            return [
                {"id": p.id, "flow": None if p.flow is None else asdict(p.flow)}
                for p in reader.poll(float(request["timeout"]))
            ]
        if op == "latch_verdict":
            reader.verdict(int(request["id"]), bool(request["accept"]))
            return None
        raise ValueError(f"unknown op {op!r}")

    def close(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()


def packets_from_json(raw: list[dict[str, Any]]) -> list[QueuedPacket]:
    out = []
    for item in raw:
        flow = item["flow"]
        if flow is not None:
            flow = Flow(
                Transport(flow["protocol"]), flow["src"], flow["sport"], flow["dst"], flow["dport"]
            )
        out.append(QueuedPacket(int(item["id"]), flow))
    return out
