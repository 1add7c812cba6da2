"""Sockets inside a lab namespace, opened from this process without a helper subprocess.

A socket belongs to the network namespace its creating *thread* was in when it called
socket(2). `socket_in` makes a short-lived thread join the namespace (setns(2) affects only
the calling thread), create the socket there and exit; the socket keeps working from any
thread afterwards, and this process's own namespace is never changed. `run_in` runs a
whole piece of work (an asyncio loop and everything it opens) on such a thread.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(
    ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM
) -> socket.socket:
    return run_in(ns, lambda: socket.socket(family, kind))


def run_in(ns: str, work: Callable[[], T]) -> T:
    """`work()` on a thread that joined `ns` first: every socket it opens (an asyncio loop
    it runs, say) is in the lab namespace; this process's other threads stay where they
    are. Its result, or its exception, comes back to the caller."""
    result: list[T] = []
    errors: list[BaseException] = []

    def inside() -> None:
        try:
            _join(ns)
            result.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=inside, name=f"in-{ns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _join(ns: str) -> None:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)
