"""Helpers shared by the FCP tests (imported by conftest and the test modules)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path

from fcp.client import ClientTls, FcpClient, RetryPolicy
from fcp.memory_backend import MemoryBackendConfig
from fcp.server import ServerConfig, ServerTls
from fcp.types import (
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    IpVersion,
    Pool,
    RuleRequest,
    TransportProtocol,
)

ALLOWED = frozenset({"alg-1", "alg-2"})
PUBLIC_V4 = (ipaddress.IPv4Address("203.0.113.10"), ipaddress.IPv4Address("203.0.113.11"))
PUBLIC_V6 = (ipaddress.IPv6Address("2001:db8::10"),)
START = 1_700_000_000.0
UA = ipaddress.IPv4Address("10.77.0.10")  # an inside phone
PEER = ipaddress.IPv4Address("198.51.100.20")  # its outside peer


def pair(group: str, port: int) -> BindingRequest:
    """An RTP/RTCP pair for the phone's media at `port`, in call `group`."""
    return BindingRequest(
        group, Endpoint(UA, port), TransportProtocol.UDP, BindingKind.RTP_PAIR, 300
    )


def pinhole(binding_id: str, key: str | None = None) -> RuleRequest:
    """Both ways, to the peer's RTP port."""
    return RuleRequest(
        binding_id, Direction.BIDIRECTIONAL, PEER, 300, remote_port=30000, idempotency_key=key
    )


class FakeClock:
    """The backend's injectable clock: time moves only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(**overrides: object) -> MemoryBackendConfig:
    pools = (
        Pool("v4", IpVersion.V4, PUBLIC_V4, 20000, 20999),
        Pool("v6", IpVersion.V6, PUBLIC_V6, 20000, 20999),
    )
    return MemoryBackendConfig(pools=pools, **overrides)  # type: ignore[arg-type]


def server_config(pki_dir: Path, address: str = "127.0.0.1:0") -> ServerConfig:
    tls = ServerTls.from_files(pki_dir / "server.pem", pki_dir / "server.key", pki_dir / "ca.pem")
    return ServerConfig(address, ALLOWED, tls=tls, grace_seconds=0.1)


def client_tls(pki_dir: Path, identity: str) -> ClientTls:
    return ClientTls.from_files(
        pki_dir / "ca.pem", pki_dir / f"{identity}.pem", pki_dir / f"{identity}.key"
    )


ClientFactory = Callable[..., Awaitable[FcpClient]]


def local_client(port: int, pki_dir: Path, **kwargs: object) -> FcpClient:
    """A client of "alg-1" for the server on 127.0.0.1:`port` (FcpClient's options)."""
    return FcpClient(f"127.0.0.1:{port}", client_tls(pki_dir, "alg-1"), **kwargs)  # type: ignore[arg-type]


def reconnecting_client(port: int, pki_dir: Path, **kwargs: object) -> FcpClient:
    """A client that outlives its agent: retries long enough, and reconnects within
    0.2 s, for a test that stops the server and starts another on the same port."""
    return local_client(
        port,
        pki_dir,
        retry=RetryPolicy(attempts=40, initial_backoff=0.02, max_backoff=0.2),
        channel_options=[
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 200),
        ],
        **kwargs,
    )
