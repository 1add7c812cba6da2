"""The latch plan: forward-chain hook, queue scripts, nfnetlink batches, path choice."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest

from filter_agent.latch_plan import (
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    LatchSpec,
    QueuePath,
    QueueProbe,
    choose_path,
    latch_teardown_script,
    nft_queue_script,
    probe_batch,
    xt_nfqueue_expr,
    xt_nfqueue_install_batch,
)
from filter_agent.plan import TableSpec, chain_rules, plan_setup

SPEC = TableSpec(latch=True)


@pytest.mark.parametrize(
    ("nft", "xt", "path"),
    [
        (True, True, QueuePath.NFT_QUEUE),
        (True, False, QueuePath.NFT_QUEUE),
        (False, True, QueuePath.XT_NFQUEUE),  # this project's kernels (CONFIG_NFT_QUEUE off)
        (False, False, QueuePath.NONE),
    ],
)
def test_choose_path_prefers_native_then_xt(nft: bool, xt: bool, path: QueuePath) -> None:
    assert choose_path(QueueProbe(nft, xt, "injected")) is path


def test_latch_spec_validates() -> None:
    with pytest.raises(ValueError, match="16 bit"):
        LatchSpec(queue_num=70000)


def test_forward_chain_queues_only_after_the_exact_lookup() -> None:
    plain = chain_rules(TableSpec())["forward"]
    latching = chain_rules(SPEC)["forward"]
    goto = "meta l4proto . ip daddr . th dport . ip saddr @in4a goto latch_queue"
    assert goto not in plain and "latch_queue" not in plan_setup(TableSpec()).text
    # Exactly one rule more, between the exact accept and the address-only accept; the
    # drop of every other address stays after it, so other addresses are never queued.
    assert [r for r in latching if r != goto] == plain
    at = latching.index(goto)
    assert latching[at - 1].endswith("@in4 accept")
    assert latching[at + 1].endswith("@in4a accept")
    assert latching[-1] == "counter drop"
    text = plan_setup(SPEC).text
    assert text.index("add chain inet sipwall latch_queue\n") < text.index(goto)
    assert "flush chain inet sipwall latch_queue" not in text  # setup keeps the verdict


def test_native_queue_and_teardown_scripts() -> None:
    assert nft_queue_script(SPEC, LatchSpec(7)).commands == [
        "add chain inet sipwall latch_queue",
        "flush chain inet sipwall latch_queue",
        "add rule inet sipwall latch_queue queue num 7 bypass",
    ]
    assert latch_teardown_script(SPEC).commands == [
        "add chain inet sipwall latch_queue",
        "flush chain inet sipwall latch_queue",
    ]


# -- nfnetlink bytes -------------------------------------------------------------------------


def attrs(data: bytes) -> dict[int, Any]:
    out: dict[int, Any] = {}
    offset = 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        payload = data[offset + 4 : offset + length]
        out[kind & 0x7FFF] = attrs(payload) if kind & 0x8000 else payload
        offset += (length + 3) & ~3
    return out


def messages(data: bytes) -> list[tuple[int, int, int, int, int, bytes]]:
    out = []
    offset = 0
    while offset < len(data):
        length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        family, _version, res_id = struct.unpack_from("=BBH", data, offset + 16)
        out.append(
            (kind, flags, seq, family, socket.ntohs(res_id), data[offset + 20 : offset + length])
        )
        offset += length
    return out


def test_xt_install_batch_replaces_the_chain_content_atomically() -> None:
    batch = xt_nfqueue_install_batch(SPEC, LatchSpec(5189), seq=10)
    msgs = messages(batch.data)
    assert [m[0] for m in msgs] == [NFNL_MSG_BATCH_BEGIN, 0x0A08, 0x0A06, NFNL_MSG_BATCH_END]
    assert msgs[0][4] == 10 and msgs[-1][4] == 10  # res_id: the nf_tables subsystem
    assert batch.commit and batch.acked == (11, 12)
    delete, new = attrs(msgs[1][5]), attrs(msgs[2][5])
    assert msgs[1][3] == msgs[2][3] == 1  # NFPROTO_INET
    assert delete == {1: b"sipwall\0", 2: b"latch_queue\0"}  # no handle: all rules
    assert msgs[2][1] & 0x0C05 == 0x0C05  # REQUEST | ACK | CREATE | APPEND
    assert new[1] == b"sipwall\0" and new[2] == b"latch_queue\0"
    expr = new[4][1]
    assert expr[1] == b"target\0"
    target = expr[2]
    assert target[1] == b"NFQUEUE\0" and struct.unpack(">I", target[2]) == (3,)
    assert target[3] == struct.pack("=HHH", 5189, 1, 1) + b"\0\0"  # v3 info, bypass, aligned


def test_probe_batch_is_never_committed() -> None:
    batch = probe_batch(SPEC, xt_nfqueue_expr(1))
    kinds = [m[0] for m in messages(batch.data)]
    assert kinds == [NFNL_MSG_BATCH_BEGIN, 0x0A00, 0x0A03, 0x0A06]  # no BATCH_END
    assert not batch.commit
    chain = attrs(messages(batch.data)[3][5])[2]
    assert chain == b"latch_probe\0"
