"""Kamailio as a SIP-over-TLS peer on loopback, for the ALG's TLS tests.

`tls_peer` writes a PKI (`fcp.certs`: one CA, a SIP certificate for the ALG's outside
address and one for Kamailio's), fills `kamailio/tls_peer.cfg` and its tls.cfg, starts
Kamailio in the foreground and waits until its UDP and TLS sockets listen. On the way out
(success, failure or Ctrl-C) Kamailio is stopped: terminate, then kill.

The TLS is mutual both ways: as a server Kamailio requires a client certificate signed
by the lab CA (so the ALG must present its own), and as a client it presents its own
and verifies the ALG's.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fcp.certs import generate_ca, issue_sip, write_pair
from labs.sipp_runner import free_port, stop

TEMPLATE = Path(__file__).resolve().parent / "kamailio" / "tls_peer.cfg"
HOST = "127.0.0.30"


def kamailio_tls_cfg(cert: Path, key: Path, ca: Path, *, require_client_cert: bool) -> str:
    """A tls.cfg for Kamailio's tls module: as a server and as a client it presents
    `cert` (TLS 1.2 or newer); as a client it checks servers against `ca`, and as a
    server it requires (and checks) clients' certificates only if told."""
    profiles = []
    for role, checks in (("server", require_client_cert), ("client", True)):
        flag = "yes" if checks else "no"
        profiles.append(
            f"[{role}:default]\nmethod = TLSv1.2+\n"
            f"verify_certificate = {flag}\nrequire_certificate = {flag}\n"
            f"certificate = {cert}\nprivate_key = {key}\nca_list = {ca}\n"
        )
    return "\n".join(profiles)


@dataclass(frozen=True)
class Pki:
    """`ca.pem`; `alg.pem`/`alg.key` (127.0.0.17, the ALG's outside); `peer.pem`/`peer.key`
    (Kamailio's address); `stranger.pem` a CA that signed neither."""

    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)


def write_pki(directory: Path, alg_host: str = "127.0.0.17") -> Pki:
    ca = generate_ca()
    write_pair(directory, "ca", ca)
    write_pair(directory, "alg", issue_sip(ca, [alg_host]))
    write_pair(directory, "peer", issue_sip(ca, [HOST]))
    write_pair(directory, "stranger", generate_ca("not the lab CA"))
    return Pki(directory)


@dataclass(frozen=True)
class TlsPeer:
    udp: tuple[str, int]
    tls: tuple[str, int]
    log: Path

    def requests(self) -> list[str]:
        """The peer's log lines of requests received: "METHOD URI from IP:PORT over PROTO"."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line.split("tlspeer: ", 1)[1] for line in text.splitlines() if "tlspeer: " in line]


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


@contextlib.contextmanager
def tls_peer(workdir: Path, pki: Pki, alg_tls: tuple[str, int]) -> Iterator[TlsPeer]:
    """Kamailio relaying UDP <-> TLS; requests it gets over UDP go to `alg_tls` over TLS."""
    udp, tls = (HOST, free_port(HOST)), (HOST, free_port(HOST))
    run = workdir / "kamailio"
    run.mkdir(parents=True, exist_ok=True)
    tls_cfg = run / "tls.cfg"
    directory = pki.directory
    tls_cfg.write_text(
        kamailio_tls_cfg(
            directory / "peer.pem",
            directory / "peer.key",
            directory / "ca.pem",
            require_client_cert=True,
        )
    )
    values = {
        "@HOST@": HOST,
        "@UDP_PORT@": str(udp[1]),
        "@TLS_PORT@": str(tls[1]),
        "@TLS_CFG@": str(tls_cfg),
        "@ALG_TLS@": f"sip:{alg_tls[0]}:{alg_tls[1]};transport=tls",
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    config = run / "kamailio.cfg"
    config.write_text(text)
    log = run / "kamailio.log"
    argv = ["kamailio", "-f", str(config), "-P", str(run / "kamailio.pid"), "-Y", str(run)]
    argv += ["-DD", "-E"]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _listening(*tls):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kamailio did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)  # polling a condition (the socket), bounded by the deadline
        yield TlsPeer(udp, tls, log)
    finally:
        stop(process)
