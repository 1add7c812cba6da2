"""The hash naming a call's worker (alg.call_hash), and the steering program that must
compute the same in the kernel (alg.call_steering; its behaviour on the real kernel is
tests/lab/proxy/test_call_steering.py)."""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from alg.call_hash import call_worker, fnv1a_32
from alg.call_steering import SCAN_BYTES, program


@pytest.mark.parametrize(
    ("data", "expected"),
    [  # the FNV-1a 32-bit test vectors (draft-eastlake-fnv, "Test Vectors")
        (b"", 0x811C9DC5),
        (b"a", 0xE40C292C),
        (b"foobar", 0xBF9CF968),
    ],
)
def test_fnv1a_matches_its_published_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_32(data) == expected


@pytest.mark.parametrize("workers", [2, 3, 4, 7])
def test_sequential_call_ids_spread_evenly(workers: int) -> None:
    # sipp's Call-IDs differ only in a counter: FNV's low bits alone would follow the
    # counter's parity; the Fibonacci step spreads them
    counts = Counter(call_worker(f"{n}-4242@10.77.0.10".encode(), workers) for n in range(6000))
    assert set(counts) == set(range(workers))
    assert min(counts.values()) > 0.8 * 6000 / workers, counts


def test_the_program_is_well_formed() -> None:
    code = program(map_fd=7, workers=2)
    insns = [struct.unpack_from("<BBhi", code, at) for at in range(0, len(code), 8)]
    assert insns[-1][0] == 0x95  # exit
    for index, (op, _, off, _) in enumerate(insns):
        if op & 0x07 == 0x05 and op not in (0x85, 0x95):  # a jump: its target is inside
            assert 0 <= index + 1 + off < len(insns), (index, off)
    # the map is loaded once, by descriptor (BPF_PSEUDO_MAP_FD), in a 64-bit immediate
    loads = [(regs, imm) for op, regs, _, imm in insns if op == 0x18]
    assert loads == [(0x12, 7)]
    assert any(op == 0x35 and imm == SCAN_BYTES for op, _, _, imm in insns)  # bounded scan


@pytest.mark.parametrize("workers", [0, 65536])
def test_a_worker_count_out_of_range_is_refused(workers: int) -> None:
    with pytest.raises(ValueError, match="workers"):
        program(map_fd=7, workers=workers)
