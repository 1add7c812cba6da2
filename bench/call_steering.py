"""What the kernel spends steering one datagram to its stateful worker (alg.call_steering).

In a lab namespace, two worker sockets join a steering group; a sender sends SIP
messages to them, and the kernel counts the program's runs and run time (BPF_ENABLE_STATS,
held only for the run). Each message is a sipp-style INVITE with SDP (Call-ID at byte
197, as sipp sends it), and, as a harder case, the same INVITE behind four more Vias
and two Record-Routes (Call-ID at byte 491). Every datagram is checked to have reached
the worker `alg.affinity.owner` names. The hand-off this replaces costs the proxy a write,
a read and an event-loop turn (tens of µs): `bench/proxy_cps.py` shows the whole effect.
Last line: the headline, nanoseconds per datagram for the sipp INVITE.
Run: .venv/bin/python bench/call_steering.py [--datagrams N]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alg.affinity import owner
from alg.call_steering import GroupSteering, counting_runs, runs
from labs.netns import Lab
from labs.nsock import socket_in

PORT = 5060
SO_RCVBUFFORCE = 33
WORKERS = 2
BATCH = 200  # sent, then drained, so no receive buffer overflows

SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 10.77.0.10\r\ns=-\r\n"
    "c=IN IP4 10.77.0.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(n: int, hops: int) -> bytes:
    vias = [f"Via: SIP/2.0/UDP 198.51.100.{h}:5060;branch=z9hG4bK-{n}-{h}" for h in range(hops)]
    routes = [f"Record-Route: <sip:198.51.100.{h};lr>" for h in range(hops // 2)]
    lines = [
        "INVITE sip:service@203.0.113.20:5060 SIP/2.0",
        *vias,
        f"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-{n}",
        *routes,
        f"From: sipp <sip:sipp@10.77.0.10:5060>;tag={n}SIPpTag00{n}",
        "To: service <sip:service@203.0.113.20:5060>",
        f"Call-ID: {n}-4242@10.77.0.10",
        "CSeq: 1 INVITE",
        "Contact: sip:sipp@10.77.0.10:5060",
        "Max-Forwards: 70",
        "Subject: Performance Test",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + SDP).encode()


def measure(
    host: str, group: GroupSteering, workers: dict[int, socket.socket], hops: int, count: int
) -> float:
    """ns per run of the program over `count` datagrams; checks each one's worker."""
    sender = socket_in(host)
    by_fd = {sock.fileno(): index for index, sock in workers.items()}
    poller = select.poll()
    for sock in workers.values():
        poller.register(sock, select.POLLIN)
    runs_before, ns_before = runs(group.program_fd)
    misplaced = 0
    try:
        for first in range(0, count, BATCH):
            batch = [invite(n, hops) for n in range(first, min(count, first + BATCH))]
            for data in batch:
                sender.sendto(data, ("127.0.0.1", PORT))
            received = 0
            while received < len(batch):
                ready = poller.poll(5000)
                if not ready:
                    raise SystemExit(f"only {received} of {len(batch)} datagrams arrived")
                for fd, _ in ready:
                    data = workers[by_fd[fd]].recv(65535)
                    received += 1
                    misplaced += owner(data, WORKERS) != by_fd[fd]
    finally:
        sender.close()
    runs_after, ns_after = runs(group.program_fd)
    if misplaced or runs_after - runs_before != count:
        raise SystemExit(f"{misplaced} misplaced, {runs_after - runs_before} runs for {count}")
    offset = invite(0, hops).index(b"Call-ID")
    ns = (ns_after - ns_before) / count
    print(f"Call-ID at byte {offset:4d} ({hops} extra Vias): {ns:7.1f} ns per datagram")
    return ns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=50_000)
    args = parser.parse_args()
    stats = counting_runs()
    group = GroupSteering.create(WORKERS)
    workers: dict[int, socket.socket] = {}
    try:
        with Lab("swb") as lab:
            host = lab.add_host("h")
            for index in range(WORKERS):
                sock = workers[index] = socket_in(host)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
                sock.bind(("127.0.0.1", PORT))
                sock.setblocking(False)
                group.join(sock, index)
            deep = measure(host, group, workers, 4, args.datagrams)
            print(f"call_steering_deep_ns_per_datagram: {deep:.0f} ns")
            sipp = measure(host, group, workers, 0, args.datagrams)
    finally:
        for sock in workers.values():
            sock.close()
        group.close()
        os.close(stats)
    print(f"call_steering_ns_per_datagram: {sipp:.0f} ns")


if __name__ == "__main__":
    main()
