"""SIP over TLS between the running ALG and a real TLS peer (Kamailio 5.6 with its tls
module, labs/kamailio_tls.py), with sipp at both ends, on loopback.

    outbound: sipp UAC (inside) -UDP-> ALG -TLS-> Kamailio -UDP-> sipp UAS
    inbound:  sipp UAC -UDP-> Kamailio -TLS-> ALG (outside) -UDP-> sipp UAS (inside)

Kamailio logs every request with the transport it arrived over, so the tests see what
crossed TLS. The TLS is mutual both ways: each end presents its certificate and checks
the other's against the lab CA (the ALG with tls_require_client_cert on the way in), and
a peer whose certificate the ALG cannot verify gets nothing.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.kamailio_tls import Pki, TlsPeer, tls_peer, write_pki
from labs.sipp_runner import RunningAlg, alg_process, free_port, sipp_uac, sipp_uas

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ALG_OUTSIDE = "127.0.0.17"


def tls_outside(pki: Pki, port: int, ca: str, *, require_client_cert: bool = False) -> str:
    return (
        'transports = ["udp", "tls"]\n'
        f"tls_port = {port}\n"
        f'tls_cert = "{pki.path("alg.pem")}"\n'
        f'tls_key = "{pki.path("alg.key")}"\n'
        f'tls_ca = "{pki.path(ca)}"\n'
        f"tls_require_client_cert = {str(require_client_cert).lower()}\n"
    )


@contextlib.contextmanager
def calling_out_over_tls(
    tmp_path: Path, trusted_ca: str
) -> Iterator[tuple[RunningAlg, TlsPeer, tuple[str, int]]]:
    """The sipp UAS behind Kamailio, and the ALG whose upstream is Kamailio over TLS,
    trusting `trusted_ca` (a file of the lab PKI) for the server's certificate."""
    pki = write_pki(tmp_path / "pki")
    alg_tls = (ALG_OUTSIDE, free_port(ALG_OUTSIDE))
    with (
        sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas,
        tls_peer(tmp_path, pki, alg_tls) as peer,
    ):
        upstream = f'upstream = "{peer.tls[0]}:{peer.tls[1]};transport=tls"\n'
        with alg_process(
            tmp_path,
            outside_toml=tls_outside(pki, alg_tls[1], trusted_ca),
            proxy_toml=upstream,
        ) as alg:
            yield alg, peer, uas


def test_calls_leave_over_tls_to_a_verified_peer(tmp_path: Path) -> None:
    with calling_out_over_tls(tmp_path, "ca.pem") as (alg, peer, uas):
        result = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=10, rate=10)
    requests = peer.requests()
    log = alg.log.read_text()
    assert (result.returncode, result.successful, result.failed) == (0, 10, 0), result.output
    # every request of every call reached the peer from the ALG's outside address over TLS
    for method in ("INVITE", "ACK", "BYE"):
        over_tls = [r for r in requests if r.startswith(f"{method} ") and r.endswith("over tls")]
        assert len(over_tls) == 10, requests
        assert all(f" from {ALG_OUTSIDE}:" in r for r in over_tls), over_tls
    assert not [r for r in requests if r.endswith("over udp")], requests
    assert "Traceback" not in log and "cannot connect" not in log, log


def test_calls_come_in_over_tls_from_a_peer_that_verifies_us(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    alg_tls = (ALG_OUTSIDE, free_port(ALG_OUTSIDE))
    with (
        sipp_uas("uas_sdp.xml", "127.0.0.5", tmp_path) as uas,
        tls_peer(tmp_path, pki, alg_tls) as peer,
    ):
        users = f'[users]\nbob = ["sip:bob@{uas[0]}:{uas[1]}"]\n'
        # mutual TLS: the ALG refuses a client without a certificate from the lab CA
        outside = tls_outside(pki, alg_tls[1], "ca.pem", require_client_cert=True)
        with alg_process(tmp_path, users, outside_toml=outside) as alg:
            # first, clients that are not TLS peers at all: plain SIP on the TLS port, and
            # a TLS client without a certificate. Each is cut off; the ALG goes on serving
            assert cut_off_plaintext(alg_tls)
            assert cut_off_without_certificate(alg_tls, pki)
            # the caller is outside and sends through Kamailio, which relays over TLS
            result = sipp_uac(
                "uac_sdp.xml",
                alg_tls,
                peer.udp,
                tmp_path,
                calls=10,
                rate=10,
                local=("127.0.0.21", free_port("127.0.0.21")),
            )
        requests = peer.requests()
        log = alg.log.read_text()
    assert (result.returncode, result.successful, result.failed) == (0, 10, 0), result.output
    invites = [r for r in requests if r.startswith("INVITE ")]
    assert len(invites) == 10 and all(r.endswith("over udp") for r in invites), requests
    assert "Traceback" not in log, log


def cut_off_plaintext(address: tuple[str, int]) -> bool:
    """Plain SIP sent to the TLS port: the handshake fails and the ALG closes it."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"OPTIONS sip:127.0.0.17 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        try:
            while sock.recv(4096):  # whatever TLS alert comes back, then the close
                pass
        except ConnectionResetError:
            pass
    return True


def cut_off_without_certificate(address: tuple[str, int], pki: Pki) -> bool:
    """A TLS client that trusts the ALG but has no certificate of its own is refused
    (tls_require_client_cert): the handshake, or the first read after it, fails."""
    context = ssl.create_default_context(cafile=pki.path("ca.pem"))
    with socket.create_connection(address, timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=address[0]) as tls:
                tls.sendall(b"\r\n\r\n")  # a keep-alive ping: answered if accepted
                return tls.recv(4096) == b""
        except (ssl.SSLError, ConnectionResetError):
            return True


def test_a_peer_whose_certificate_we_cannot_verify_gets_nothing(tmp_path: Path) -> None:
    # the ALG trusts a CA that did not sign Kamailio's certificate
    with calling_out_over_tls(tmp_path, "stranger.pem") as (alg, peer, uas):
        result = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=1, rate=1, timeout=15)
    requests = peer.requests()
    log = alg.log.read_text()
    # the call fails at once (RFC 3261 §16.9: a 503, relayed as 500), long before Timer B
    assert (result.successful, result.failed) == (0, 1), result.output
    assert "received 'SIP/2.0 500 " in uac_errors(tmp_path), result.output
    assert "certificate verify failed" in log, log
    assert log.count("cannot connect") == 1, log  # one attempt, no retransmission
    assert requests == [], requests


def test_a_refused_connection_fails_the_call_at_once(tmp_path: Path) -> None:
    # nothing listens at the upstream's TCP port: the connection is refused and the
    # caller gets the 500 at once (RFC 3261 §16.9), not a 408 after Timer B (32 s)
    closed = ("127.0.0.30", free_port("127.0.0.30"))
    upstream = f'upstream = "{closed[0]}:{closed[1]};transport=tcp"\n'
    with (
        sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas,
        alg_process(tmp_path, proxy_toml=upstream) as alg,
    ):
        result = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=1, rate=1, timeout=15)
    log = alg.log.read_text()
    assert (result.successful, result.failed) == (0, 1), result.output
    assert "Connect call failed" in log, log
    assert "received 'SIP/2.0 500 " in uac_errors(tmp_path), result.output


def uac_errors(workdir: Path) -> str:
    """What sipp's UAC wrote to its error file (-trace_err): unexpected messages."""
    return "".join(path.read_text() for path in workdir.glob("uac-*.err"))
