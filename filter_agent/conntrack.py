"""Delete the conntrack entries of a closed binding or rule (pyroute2 ctnetlink).

Deleting the element already makes the forward chain drop the flow (its connection carries
our ct mark and no pinhole matches), but the conntrack entry would keep its NAT and its
counters alive until the UDP timeout; deleting it also lets a later packet be classified
afresh (new binding, new rule) instead of riding an old NAT.

A flow of a binding shows up in conntrack in one of two shapes (original direction):
inbound, remote -> public P:p (DNATed), or outbound, inside I:i -> remote (SNATed). We ask
the kernel to filter on the original tuple (CTA_FILTER, Linux >= 5.8) for each shape.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from filter_agent.engine import FlowMatch

log = logging.getLogger("sipwall.agent.conntrack")

_PROTO = {"udp": socket.IPPROTO_UDP, "tcp": socket.IPPROTO_TCP}


class PyrouteConntrackFlusher:
    """`netns`: a named network namespace (tests); None = this process's namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def flush(self, flows: Sequence[FlowMatch]) -> int:
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        kwargs = {"netns": self.netns} if self.netns else {}
        deleted = 0
        with Conntrack(**kwargs) as ct:
            for flow in flows:
                proto = _PROTO[flow.protocol]
                shapes = (
                    NFCTAttrTuple(
                        proto=proto,
                        saddr=flow.remote_addr,
                        sport=flow.remote_port,
                        daddr=flow.external_addr,
                        dport=flow.external_port,
                    ),
                    NFCTAttrTuple(
                        proto=proto,
                        saddr=flow.internal_addr,
                        sport=flow.internal_port,
                        daddr=flow.remote_addr,
                        dport=flow.remote_port,
                    ),
                )
                for shape in shapes:
                    for entry in list(ct.dump_entries(tuple_orig=shape)):
                        try:
                            ct.delete(entry)
                            deleted += 1
                        except OSError as exc:  # raced with the kernel's own expiry
                            log.debug("conntrack entry already gone: %s", exc)
        return deleted
