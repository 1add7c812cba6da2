"""Fixtures for FCP tests: a lab PKI in a tmp dir, a fake clock, the memory backend, and a
real grpc.aio server with mutual TLS on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from fcp_testing import ClientFactory, FakeClock, client_tls, make_config, server_config

from fcp.certs import LabPki, generate_ca, generate_lab_pki, issue_client, write_lab_pki
from fcp.client import ClientTls, FcpClient, RetryPolicy
from fcp.memory_backend import MemoryBackend
from fcp.server import FcpServer


@pytest.fixture(scope="session")
def pki() -> LabPki:
    # "intruder" is signed by our CA but not allow-listed.
    return generate_lab_pki(["127.0.0.1", "::1", "localhost"], ["alg-1", "alg-2", "intruder"])


@pytest.fixture
def pki_dir(tmp_path: Path, pki: LabPki) -> Path:
    directory = tmp_path / "pki"
    write_lab_pki(directory, pki)
    return directory


@pytest.fixture
def rogue_tls(pki: LabPki) -> ClientTls:
    """A client certificate for "alg-1" signed by a CA the agent does not trust."""
    rogue = issue_client(generate_ca("rogue CA"), "alg-1")
    return ClientTls(pki.ca.cert_pem, rogue.cert_pem, rogue.key_pem)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(make_config(), epoch=1111, clock=clock)


@pytest_asyncio.fixture
async def server(backend: MemoryBackend, pki_dir: Path) -> AsyncIterator[FcpServer]:
    fcp_server = FcpServer(backend, server_config(pki_dir))
    await fcp_server.start()
    try:
        yield fcp_server
    finally:
        backend.close()
        await fcp_server.stop(0)


@pytest_asyncio.fixture
async def connect(server: FcpServer, pki_dir: Path) -> AsyncIterator[ClientFactory]:
    """Make clients for the running server; all are closed at the end of the test."""
    clients: list[FcpClient] = []

    async def factory(
        identity: str = "alg-1", tls: ClientTls | None = None, **kwargs: object
    ) -> FcpClient:
        kwargs.setdefault("retry", RetryPolicy(attempts=2, initial_backoff=0.01))
        client = FcpClient(
            f"127.0.0.1:{server.port}",
            tls or client_tls(pki_dir, identity),
            **kwargs,  # type: ignore[arg-type]
        )
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            await client.close()
