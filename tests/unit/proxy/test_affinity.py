"""Call-ID affinity between stateful workers (alg.affinity): every message of a call has
one owner, whatever its form; a datagram for another worker reaches it whole, with the
side and source it came from; one that cannot be handed over is counted as dropped."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable

import pytest

from alg.affinity import Affinity, decode, encode, owner
from alg.proxy_model import Endpoint

INVITE = (
    b"INVITE sip:bob@203.0.113.20 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-1\r\n"
    b"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContent-Length: 9\r\n\r\ni: other\n"
)
RINGING = (
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-1\r\n"
    b"cAlL-iD:   {cid}  \r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
)
COMPACT_BYE = b"BYE sip:a@x SIP/2.0\r\nv: SIP/2.0/UDP x;branch=z9hG4bK-2\r\ni:{cid}\r\n\r\n"


def test_every_form_of_a_calls_messages_has_the_same_owner() -> None:
    for n in range(50):
        cid = f"call-{n}@10.77.0.10".encode()
        owners = {
            owner(template.replace(b"{cid}", cid), 4) for template in (INVITE, RINGING, COMPACT_BYE)
        }
        assert len(owners) == 1 and owners != {None}


def test_calls_spread_over_the_workers_and_the_body_is_not_read() -> None:
    owners = Counter(owner(INVITE.replace(b"{cid}", f"c{n}".encode()), 2) for n in range(400))
    assert min(owners[0], owners[1]) > 120  # crc32 spreads them
    # the body's "i: other" line is not a header: without a Call-ID there is no owner
    no_call_id = INVITE.replace(b"Call-ID: {cid}\r\n", b"")
    assert b"\ni: other" in no_call_id and owner(no_call_id, 2) is None


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"OPTIONS sip:a SIP/2.0\r\nCall-ID:\r\n\r\n", b"\r\n\r\ni: x\r\n"]
)
def test_no_readable_call_id_means_no_owner(data: bytes) -> None:
    assert owner(data, 2) is None


def test_a_frame_keeps_the_datagram_its_side_and_source() -> None:
    source = Endpoint("outside", "UDP", "2001:db8::20", 5062)
    data = RINGING.replace(b"{cid}", b"x")
    assert decode(encode(data, source)) == (data, source)


def owned_by(index: int) -> bytes:
    return next(
        d for n in range(100) if owner(d := INVITE.replace(b"{cid}", b"%d" % n), 2) == index
    )


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.mark.asyncio
async def test_datagrams_owned_by_another_worker_are_handed_over_whole_and_in_order() -> None:
    group = os.getpid()
    stats: Counter[str] = Counter()
    here: list[tuple[bytes, Endpoint]] = []
    there: list[tuple[bytes, Endpoint]] = []
    first = Affinity(group, 0, 2, stats, lambda d, s: here.append((d, s)))
    second = Affinity(group, 1, 2, stats, lambda d, s: there.append((d, s)))
    await first.start()
    await second.start()
    try:
        source = Endpoint("inside", "UDP", "10.77.0.10", 5060)
        mine, theirs = owned_by(0), owned_by(1)
        first.route(mine, source)
        assert here == [(mine, source)]  # its own call: delivered in place, at once
        # a burst, larger than any datagram queue would hold (max_dgram_qlen is 10)
        burst = [theirs.replace(b"z9hG4bK-1", b"z9hG4bK-%d" % n) for n in range(500)]
        for data in burst:
            first.route(data, source)
        await until(lambda: len(there) == len(burst))
        assert there == [(data, source) for data in burst]
        assert stats == Counter({"affinity.handed_off": 500, "affinity.taken_over": 500})
    finally:
        first.close()
        second.close()


@pytest.mark.asyncio
async def test_a_hand_off_to_a_worker_that_is_not_there_is_a_counted_drop() -> None:
    stats: Counter[str] = Counter()
    alone = Affinity(os.getpid(), 0, 2, stats, lambda d, s: None)
    await alone.start()
    try:
        alone.route(owned_by(1), Endpoint("inside", "UDP", "10.77.0.10", 5060))
        await until(lambda: stats["affinity.dropped"] == 1)
    finally:
        alone.close()
