"""Fixtures for the agent service tests: the fake kernel, a service on a tmp state
database, and the real FCP server (grpc.aio, mutual TLS, 127.0.0.1) in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from agent_service_testing import Kernel

from fcp.certs import LabPki, generate_ca, generate_lab_pki, issue_client, write_lab_pki
from fcp.client import ClientTls, FcpClient, RetryPolicy
from fcp.server import FcpServer, ServerConfig, ServerTls
from filter_agent.service import AgentService

Connect = Callable[..., Awaitable[FcpClient]]


@pytest.fixture(scope="session")
def agent_pki() -> LabPki:
    return generate_lab_pki(["127.0.0.1"], ["alg-1", "alg-2", "ctl", "stranger"])


@pytest.fixture
def pki_path(tmp_path: Path, agent_pki: LabPki) -> Path:
    write_lab_pki(tmp_path / "pki", agent_pki)
    return tmp_path / "pki"


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "agent.db"


@pytest_asyncio.fixture
async def service(kernel: Kernel, db: Path) -> AsyncIterator[AgentService]:
    svc = kernel.open(db)
    try:
        yield svc
    finally:
        await svc.close()


@pytest_asyncio.fixture
async def server(service: AgentService, pki_path: Path) -> AsyncIterator[FcpServer]:
    tls = ServerTls.from_files(
        pki_path / "server.pem", pki_path / "server.key", pki_path / "ca.pem"
    )
    config = ServerConfig(
        "127.0.0.1:0",
        frozenset({"alg-1", "alg-2"}),
        tls=tls,
        grace_seconds=0.1,
        admin_identities=frozenset({"ctl"}),
    )
    fcp_server = FcpServer(service, config)
    await fcp_server.start()
    try:
        yield fcp_server
    finally:
        await fcp_server.stop(0)


@pytest_asyncio.fixture
async def connect(server: FcpServer, pki_path: Path) -> AsyncIterator[Connect]:
    clients: list[FcpClient] = []

    async def factory(identity: str = "alg-1", tls: ClientTls | None = None) -> FcpClient:
        tls = tls or ClientTls.from_files(
            pki_path / "ca.pem", pki_path / f"{identity}.pem", pki_path / f"{identity}.key"
        )
        client = FcpClient(
            f"127.0.0.1:{server.port}", tls, retry=RetryPolicy(attempts=1), deadline=5.0
        )
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
def rogue_tls(agent_pki: LabPki) -> ClientTls:
    rogue = issue_client(generate_ca("rogue CA"), "alg-1")
    return ClientTls(agent_pki.ca.cert_pem, rogue.cert_pem, rogue.key_pem)
