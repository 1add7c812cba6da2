"""Pure planning for latching: the kernel objects that send a latch candidate to userspace.

Theory of operation
-------------------
A rule whose remote port is unknown (MIDCOM RFC 5189 §2.2: "remote port unknown"; the
symmetric-RTP latching of RFC 7362 §4.2) installs address-only elements (`in4a`/`out4a`,
see plan.py). Latching narrows it: the first packet from the signalled remote address is
handed to the agent, which learns the source port, swaps the address-only elements for
exact ones (`in4`/`out4`) and re-injects the packet. Only that first packet (and whatever
arrives before the swap commits) ever leaves the kernel fast path.

With `TableSpec(latch=True)` the main forward chain (plan.py) gets one more rule, right
after the exact lookup and before the address-only accept:

    ... @in4 accept                       exact element: kernel fast path
    l4 . I . i . R @in4a goto latch_queue  signalled address, port not learnt yet
    ... @in4a accept                      (reached only if latching is off)
    ... counter drop                      every other address: dropped, never queued

and the regular chain `latch_queue` holds only the queue verdict. One lookup per packet,
as before (a second lookup in another chain would count every packet twice in the
per-element counters the idle timer reads). On NF_ACCEPT from userspace netfilter
resumes with the next hook entry after our chain, i.e. the packet goes on as if accepted.

The verdict has two spellings, chosen by a probe (`choose_path`):

* `nft-queue`: nft's own `queue num N bypass` (needs CONFIG_NFT_QUEUE), native syntax.
* `xt-nfqueue`: the xtables NFQUEUE target through nft_compat (CONFIG_NFT_COMPAT), the very
  expression `iptables-nft -j NFQUEUE --queue-num N --queue-bypass` creates. iptables-nft
  itself cannot write it here: it only manages its built-in tables (`ip filter`, `ip
  mangle`, ...), which belong to the host, and refuses other table names ("table
  'sipwall_latch' does not exist"); libnftables cannot parse an `xt` statement either. So
  the agent sends the rule itself as one nfnetlink batch (`xt_nfqueue_install_batch`:
  "delete every rule of latch_queue, add the NFQUEUE target", atomic) into its own inet
  table (nft_compat accepts the inet family; verified on 6.18). For operators: the text
  listing of the table then warns that it "is managed by iptables-nft" and libxtables
  cannot render the target for inet; the JSON listing the agent uses is unaffected. A
  ruleset saved with it cannot be reloaded by `nft -f`; the agent rebuilds its own table.

An empty `latch_queue` (before the verdict is installed, or after `latch_teardown_script`)
is harmless: the goto falls off its end and the base chain's policy accepts, which is
exactly the address-only behaviour.

Bypass and a dead agent: with `bypass` and no process bound to the queue, the kernel does
not drop the packet, it continues with the next hook entry, i.e. it is accepted. That is
safe because only packets that matched an address-only element reach `latch_queue`: the
pinhole degrades to what it was before latching existed (any port of the *signalled*
remote address, RFC 5189 "port unknown"), never wider, and it still expires with its
element. Packets queued at the moment the agent dies are dropped by the kernel (a few
media packets); a queue that overflows drops too (the conservative kernel default).
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass

from filter_agent.plan import LATCH_QUEUE, Script, TableSpec

PROBE_CHAIN = "latch_probe"


class QueuePath(enum.StrEnum):
    NFT_QUEUE = "nft-queue"  # nft's `queue` expression
    XT_NFQUEUE = "xt-nfqueue"  # xtables NFQUEUE target through nft_compat
    NONE = "none"  # no way to queue: unknown-port rules stay address-only


@dataclass(frozen=True)
class LatchSpec:
    queue_num: int = 5189

    def __post_init__(self) -> None:
        if not 0 <= self.queue_num <= 0xFFFF:
            raise ValueError("NFQUEUE numbers are 16 bit")


@dataclass(frozen=True)
class QueueProbe:
    """What the kernel accepted in a transaction that was validated and then aborted."""

    nft_queue: bool
    xt_nfqueue: bool
    detail: str = ""


def choose_path(probe: QueueProbe) -> QueuePath:
    """Prefer nft's native queue (plain nft, listable, reloadable); fall back to the xt
    target; without either, latching stays off (`TableSpec(latch=False)`) and unknown-port
    rules keep their address-only semantics."""
    if probe.nft_queue:
        return QueuePath.NFT_QUEUE
    if probe.xt_nfqueue:
        return QueuePath.XT_NFQUEUE
    return QueuePath.NONE


# -- native syntax ---------------------------------------------------------------------------


def nft_queue_script(spec: TableSpec, latch: LatchSpec) -> Script:
    """The native path: replace `latch_queue`'s content in one transaction."""
    where = f"{spec.family} {spec.name}"
    return Script(
        f"add chain {where} {LATCH_QUEUE}\n"
        f"flush chain {where} {LATCH_QUEUE}\n"
        f"add rule {where} {LATCH_QUEUE} queue num {latch.queue_num} bypass\n"
    )


def latch_teardown_script(spec: TableSpec) -> Script:
    """Stop queueing (idempotent): port-unknown rules fall back to address-only. The goto
    stays until the table is set up again with `TableSpec(latch=False)`."""
    where = f"{spec.family} {spec.name}"
    return Script(f"add chain {where} {LATCH_QUEUE}\nflush chain {where} {LATCH_QUEUE}\n")


# -- nfnetlink (for what libnftables cannot express) -------------------------------------------
#
# Constants from <linux/netlink.h>, <linux/netfilter/nfnetlink.h>, <linux/netfilter/
# nf_tables.h>, <linux/netfilter/nfnetlink_compat.h> and <linux/netfilter/xt_NFQUEUE.h>.

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x400, 0x800
NLMSG_ERROR = 0x2
NLA_F_NESTED = 0x8000
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 3, 6, 8
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO = 1, 2, 3
NFTA_QUEUE_NUM, NFTA_QUEUE_TOTAL, NFTA_QUEUE_FLAGS = 1, 2, 3
NFT_QUEUE_FLAG_BYPASS = 0x01
NFQ_FLAG_BYPASS = 0x01
NFQUEUE_REVISION = 3  # struct xt_NFQ_info_v3 { u16 queuenum, queues_total, flags; }
_FAMILY = {"inet": 1, "ip": 2, "ip6": 10}


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nest(kind: int, payload: bytes) -> bytes:
    return _nla(kind | NLA_F_NESTED, payload)


def _str(text: str) -> bytes:
    return text.encode() + b"\0"


def _msg(kind: int, flags: int, seq: int, family: int, body: bytes, *, res_id: int = 0) -> bytes:
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def _nft(msg_type: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | msg_type


@dataclass(frozen=True)
class Batch:
    """An nfnetlink batch as bytes, plus the sequence numbers that must be acknowledged.

    Without a BATCH_END message the kernel validates every message (errors come back as
    usual) and then aborts the whole transaction: the netlink equivalent of `nft -c`.
    """

    data: bytes
    acked: tuple[int, ...]
    commit: bool


def _batch(messages: list[tuple[int, int, bytes]], family: int, seq: int, commit: bool) -> Batch:
    data = _msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", res_id=NFNL_SUBSYS_NFTABLES)
    acked = []
    for i, (kind, flags, body) in enumerate(messages, start=1):
        data += _msg(_nft(kind), NLM_F_REQUEST | NLM_F_ACK | flags, seq + i, family, body)
        acked.append(seq + i)
    if commit:
        end = seq + len(messages) + 1
        data += _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, b"", res_id=NFNL_SUBSYS_NFTABLES)
    return Batch(data, tuple(acked), commit)


def _expr(name: str, data: bytes) -> bytes:
    return _nest(NFTA_LIST_ELEM, _nla(NFTA_EXPR_NAME, _str(name)) + _nest(NFTA_EXPR_DATA, data))


def xt_nfqueue_expr(queue_num: int) -> bytes:
    """nft_compat `target` expression: xt NFQUEUE v3, one queue, bypass."""
    info = struct.pack("=HHH", queue_num, 1, NFQ_FLAG_BYPASS)
    info += b"\0" * (-len(info) % 8)  # XT_ALIGN: the kernel compares aligned sizes
    return _expr(
        "target",
        _nla(NFTA_TARGET_NAME, _str("NFQUEUE"))
        + _nla(NFTA_TARGET_REV, struct.pack(">I", NFQUEUE_REVISION))
        + _nla(NFTA_TARGET_INFO, info),
    )


def nft_queue_expr(queue_num: int) -> bytes:
    """nft's native `queue num N bypass` expression (absent without CONFIG_NFT_QUEUE)."""
    return _expr(
        "queue",
        _nla(NFTA_QUEUE_NUM, struct.pack(">H", queue_num))
        + _nla(NFTA_QUEUE_TOTAL, struct.pack(">H", 1))
        + _nla(NFTA_QUEUE_FLAGS, struct.pack(">H", NFT_QUEUE_FLAG_BYPASS)),
    )


def _rule_body(table: str, chain: str, expr: bytes) -> bytes:
    return (
        _nla(NFTA_RULE_TABLE, _str(table))
        + _nla(NFTA_RULE_CHAIN, _str(chain))
        + _nest(NFTA_RULE_EXPRESSIONS, expr)
    )


def xt_nfqueue_install_batch(spec: TableSpec, latch: LatchSpec, seq: int = 1) -> Batch:
    """The xt path: atomically replace `latch_queue`'s content with the NFQUEUE target."""
    family = _FAMILY[spec.family]
    where = _nla(NFTA_RULE_TABLE, _str(spec.name)) + _nla(NFTA_RULE_CHAIN, _str(LATCH_QUEUE))
    return _batch(
        [
            (NFT_MSG_DELRULE, 0, where),  # no handle: every rule of the chain
            (
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                _rule_body(spec.name, LATCH_QUEUE, xt_nfqueue_expr(latch.queue_num)),
            ),
        ],
        family,
        seq,
        commit=True,
    )


def table_query(spec: TableSpec, seq: int = 1) -> bytes:
    """NFT_MSG_GETTABLE for our table alone: answered with the table's attributes (no
    chains, sets or elements) or ENOENT. `list tables` through libnftables instead fills
    its whole cache, every element included: 30 ms per call at 8,000 elements, 0.5 s at
    80,000 (measured) -- far too slow to poll on the agent's loop."""
    return _msg(
        _nft(NFT_MSG_GETTABLE),
        NLM_F_REQUEST,
        seq,
        _FAMILY[spec.family],
        _nla(NFTA_TABLE_NAME, _str(spec.name)),
    )


def probe_batch(spec: TableSpec, expr: bytes, seq: int = 1) -> Batch:
    """Table (idempotent), throw-away chain and a rule with `expr`, never committed."""
    family = _FAMILY[spec.family]
    return _batch(
        [
            (NFT_MSG_NEWTABLE, NLM_F_CREATE, _nla(NFTA_TABLE_NAME, _str(spec.name))),
            (
                NFT_MSG_NEWCHAIN,
                NLM_F_CREATE,
                _nla(NFTA_CHAIN_TABLE, _str(spec.name)) + _nla(NFTA_CHAIN_NAME, _str(PROBE_CHAIN)),
            ),
            (
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                _rule_body(spec.name, PROBE_CHAIN, expr),
            ),
        ],
        family,
        seq,
        commit=False,
    )
