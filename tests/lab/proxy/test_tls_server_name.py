"""Over TLS the ALG checks a server against the SIP domain it resolved (RFC 5922 §4), in
a lab namespace with real sockets and real handshakes: a server whose certificate names
only its domain (`provider.test`, no address) is accepted when the next hop was resolved
from that domain, and refused when it is reached by address alone or resolved from
another domain. The ALG's shell sends exactly what the core tells it to send."""

from __future__ import annotations

import asyncio
import ssl
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from alg.aio import AlgShell
from alg.assemble import assemble
from alg.config import parse_config
from alg.proxy_model import Endpoint, Send
from fcp.certs import generate_ca, issue_sip, write_pair
from labs.netns import Lab
from labs.nsock import run_in

pytestmark = pytest.mark.netns

SERVER = "127.0.0.1"
OPTIONS = (
    b"OPTIONS sip:carol@provider.test SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-name\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:carol@provider.test>\r\n"
    b"Call-ID: name-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


@pytest.fixture
def host() -> Iterator[str]:
    with Lab("stn") as lab:
        yield lab.add_host("h")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = generate_ca()
    write_pair(tmp_path, "ca", ca)
    write_pair(tmp_path, "provider", issue_sip(ca, ["provider.test"]))  # its domain only
    write_pair(tmp_path, "wildcard", issue_sip(ca, ["*.provider.test"]))
    write_pair(tmp_path, "sip-uri", issue_sip(ca, ["sip:provider.test"]))  # RFC 5922 §7.1
    write_pair(tmp_path, "alg", issue_sip(ca, [SERVER]))
    return tmp_path


def delivered(
    host: str, pki: Path, tmp_path: Path, name: str | None, cert: str = "provider"
) -> bytes:
    """Have the ALG's shell send one request over TLS to the provider at SERVER, as a
    next hop resolved from `name` (None: given by address), the provider presenting
    certificate `cert`; what the provider read."""

    async def run() -> bytes:
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                data = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:  # closed by the ALG unsent
                data = exc.partial
            except OSError:  # torn down mid-TLS by the ALG
                data = b""
            if not received.done():
                received.set_result(data)
            writer.close()

        server = await asyncio.start_server(serve, SERVER, 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        config = parse_config(
            tomllib.loads(f"""
[inside]
address = "10.77.0.1"
[outside]
address = "{SERVER}"
transports = ["udp", "tls"]
tls_port = {port + 1}
tls_cert = "{pki / "alg.pem"}"
tls_key = "{pki / "alg.key"}"
tls_ca = "{pki / "ca.pem"}"
[registrar]
database = "{tmp_path / "location.db"}"
""")
        )
        services = assemble(config)
        shell = AlgShell(config, services.core)
        try:
            shell._dispatch([Send(Endpoint("outside", "TLS", SERVER, port, name=name), OPTIONS)])
            # the connection attempt: it ends with the request written, the connection
            # closed by the ALG unused, or the handshake refused
            await asyncio.gather(*shell._pending)
            if shell.by_peer:  # connected: the provider reads what was written, or EOF
                return await received
            return received.result() if received.done() else b""
        finally:
            await shell.close()
            server.close()
            services.close()

    return run_in(host, lambda: asyncio.run(asyncio.wait_for(run(), 20)))


def test_a_server_proving_the_resolved_domain_gets_the_request(
    host: str, pki: Path, tmp_path: Path
) -> None:
    assert delivered(host, pki, tmp_path, "provider.test") == OPTIONS


@pytest.mark.parametrize("name", [None, "other.test"])
def test_a_server_not_proving_the_name_gets_nothing(
    host: str, pki: Path, tmp_path: Path, name: str | None
) -> None:
    assert delivered(host, pki, tmp_path, name) == b""


def test_a_sip_uri_in_the_certificate_names_the_domain(
    host: str, pki: Path, tmp_path: Path
) -> None:
    assert delivered(host, pki, tmp_path, "provider.test", cert="sip-uri") == OPTIONS


def test_a_wildcard_certificate_proves_no_sip_domain(host: str, pki: Path, tmp_path: Path) -> None:
    # RFC 5922 §7.2; a web client (and OpenSSL's host check) would accept it
    assert delivered(host, pki, tmp_path, "sip.provider.test", cert="wildcard") == b""
