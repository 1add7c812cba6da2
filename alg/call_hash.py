"""The hash that names the worker owning a call: Python's half of a contract with the
kernel's (alg.call_steering), which computes the same number for the same Call-ID.

FNV-1a over the Call-ID value's bytes, 32 bits (Fowler, Noll and Vo; the one-byte-at-a-
time form a BPF program can run with a verifier-friendly loop), then Fibonacci hashing
(Knuth, TAOCP 6.4: multiply by 2^32/phi and keep the high half), because FNV's low bits,
the ones `% workers` reads, are weak: its lowest bit is the parity of the bytes' lowest
bits. Compiled with mypyc (sipwall.compiled): it runs for every datagram a worker reads.
"""

from __future__ import annotations

from typing import Final

CALL_HASH_BASIS: Final = 0x811C9DC5
CALL_HASH_PRIME: Final = 0x01000193
CALL_HASH_MIXER: Final = 0x9E3779B1


def fnv1a_32(data: bytes) -> int:
    h = CALL_HASH_BASIS
    for byte in data:
        h = ((h ^ byte) * CALL_HASH_PRIME) & 0xFFFFFFFF
    return h


def call_worker(call_id: bytes, workers: int) -> int:
    """The worker (0..workers-1) owning the call whose Call-ID value is `call_id`."""
    return (((fnv1a_32(call_id) * CALL_HASH_MIXER) & 0xFFFFFFFF) >> 16) % workers
