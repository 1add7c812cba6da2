"""Tiny UDP traffic tools run inside lab namespaces (`python -m labs.udp ...`).

send: `send BIND_ADDR BIND_PORT DST_ADDR DST_PORT INTERVAL COUNT TAG` sends COUNT datagrams
      "TAG:seq" every INTERVAL seconds and prints "sent <seq> <monotonic time>" for each.
recv: `recv BIND_ADDR BIND_PORT DURATION` prints "recv <monotonic time> <src> <sport> <data>"
      per datagram until DURATION elapsed.
Bounded in count and duration by construction; CLOCK_MONOTONIC is system wide, so the
times compare directly with the test's `time.monotonic()`.
"""

from __future__ import annotations

import socket
import sys
import time


def send(  # noqa: PLR0917 - mirrors the command line
    bind_addr: str, bind_port: int, dst: str, dport: int, interval: float, count: int, tag: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((bind_addr, bind_port))
        start = time.monotonic()
        for seq in range(count):
            target = start + seq * interval
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the stream, not waiting for a condition
            try:
                s.sendto(f"{tag}:{seq}".encode(), (dst, dport))
            except OSError:  # ICMP unreachable from an earlier datagram; keep streaming
                pass
            print(f"sent {seq} {time.monotonic():.6f}", flush=True)


def recv(bind_addr: str, bind_port: int, duration: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((bind_addr, bind_port))
        print("ready", flush=True)
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, (src, sport) = s.recvfrom(2048)
            except TimeoutError:
                break
            print(f"recv {time.monotonic():.6f} {src} {sport} {data.decode()}", flush=True)


def main(argv: list[str]) -> int:
    if argv[0] == "send":
        send(argv[1], int(argv[2]), argv[3], int(argv[4]), float(argv[5]), int(argv[6]), argv[7])
    elif argv[0] == "recv":
        recv(argv[1], int(argv[2]), float(argv[3]))
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
