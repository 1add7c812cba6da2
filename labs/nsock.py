"""Sockets inside a lab namespace, opened from this process without a helper subprocess.

A socket belongs to the network namespace its creating *thread* was in when it called
socket(2). `socket_in` makes a short-lived thread join the namespace (setns(2) affects only
the calling thread), create the socket there and exit; the socket keeps working from any
thread afterwards, and this process's own namespace is never changed.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(
    ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM
) -> socket.socket:
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
                result.append(socket.socket(family, kind))
            finally:
                os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=work, name=f"setns-{ns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
