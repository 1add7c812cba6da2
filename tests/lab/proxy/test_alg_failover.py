"""Failover between two gateways of a route, with the running ALG and sipp on loopback:
the first gateway takes datagrams and never answers (a socket nobody reads), the second
is a sipp UAS. The first call waits [proxy] failover_timeout and then reaches the second
gateway; the silent one is then held down, so the next calls go to the second at once,
and it is probed with OPTIONS meanwhile."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alg.sip import SipParseError, parse_message
from labs.sipp_runner import alg_process, free_port, sipp_uac, sipp_uas

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@contextlib.contextmanager
def silent_gateway(host: str) -> Iterator[tuple[socket.socket, int]]:
    """A UDP socket that receives and never answers (its queue is read afterwards)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, free_port(host)))
        sock.setblocking(False)
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def requests(sock: socket.socket) -> list[tuple[str, str]]:
    """(method, Call-ID) of the requests queued on `sock`, in arrival order, once each."""
    seen: list[tuple[str, str]] = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return seen
        with contextlib.suppress(SipParseError):
            msg = parse_message(data)
            if (msg.method, msg.call_id) not in seen:
                seen.append((msg.method, msg.call_id))


def invites(seen: list[tuple[str, str]]) -> list[str]:
    return [call_id for method, call_id in seen if method == "INVITE"]


def test_a_silent_gateway_is_failed_over_then_held_down(tmp_path: Path) -> None:
    with (
        silent_gateway("127.0.0.22") as (silent, silent_port),
        sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas,
    ):
        routes = tmp_path / "routes.toml"
        routes.write_text(
            "[default]\nnext_hops = [\n"
            f'  {{ hop = "127.0.0.22:{silent_port}", priority = 10 }},\n'
            f'  {{ hop = "{uas[0]}:{uas[1]}", priority = 20 }},\n]\n'
        )
        extra = f'[files]\nroutes = "{routes}"\n'
        proxy = "failover_timeout = 2\nhop_hold_down = 60\nhop_probe_interval = 1\n"
        with alg_process(tmp_path, extra, proxy_toml=proxy) as alg:
            # R-URI at the UAS; the route table decides the next hop (the default route)
            first = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=1, rate=1)
            first_tried = requests(silent)
            then = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=5, rate=5)
            then_tried = requests(silent)
            # meanwhile the held-down gateway is probed with OPTIONS, every second
            deadline = time.monotonic() + 5
            probes = [r for r in first_tried + then_tried if r[0] == "OPTIONS"]
            while len(probes) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)  # polling the socket for a condition, bounded
                probes += [r for r in requests(silent) if r[0] == "OPTIONS"]
        log = alg.log.read_text()
    # the first call reached the UAS, after trying the silent gateway
    assert (first.returncode, first.successful, first.failed) == (0, 1, 0), first.output
    assert len(invites(first_tried)) == 1, first_tried
    # the silent gateway held down: the next calls go to the UAS at once
    assert (then.returncode, then.successful, then.failed) == (0, 5, 0), then.output
    assert invites(then_tried) == [], then_tried
    assert len(probes) >= 2, probes
    assert "Traceback" not in log, log
