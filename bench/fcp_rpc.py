"""FCP round-trip latency: ReserveBinding + EnableRule over mutual TLS on loopback.

Runs the real grpc.aio server with the in-memory backend (no kernel: the nftables
benchmark comes with the filter agent) and N sequential ReserveBinding+EnableRule pairs
from one FcpClient. Prints p50/p99; the LAST line is `fcp_rpc_roundtrip_p50: <ms> ms`.

    python bench/fcp_rpc.py [-n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fcp import grpc_runtime

grpc_runtime.configure()  # before grpc is imported, as the `sipwall` command does

from fcp.certs import generate_lab_pki, write_lab_pki  # noqa: E402
from fcp.client import ClientTls, FcpClient  # noqa: E402
from fcp.memory_backend import MemoryBackend, MemoryBackendConfig  # noqa: E402
from fcp.server import FcpServer, ServerConfig, ServerTls  # noqa: E402
from fcp.types import (  # noqa: E402
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    GroupLifetimeChange,
    IpVersion,
    Pool,
    RuleRequest,
    TransportProtocol,
)

UA = ipaddress.IPv4Address("10.77.0.10")
PEER = ipaddress.IPv4Address("198.51.100.20")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(count: int, directory: Path) -> list[float]:
    write_lab_pki(directory, generate_lab_pki(["127.0.0.1"], ["alg-1"]))
    pool = Pool("v4", IpVersion.V4, (ipaddress.IPv4Address("203.0.113.10"),), 1024, 65535)
    backend = MemoryBackend(MemoryBackendConfig(pools=(pool,), max_bindings_per_owner=count + 10))
    tls = ServerTls.from_files(
        directory / "server.pem", directory / "server.key", directory / "ca.pem"
    )
    config = ServerConfig("127.0.0.1:0", frozenset({"alg-1"}), tls=tls, grace_seconds=0)
    samples: list[float] = []
    async with FcpServer(backend, config) as server:
        client_tls = ClientTls.from_files(
            directory / "ca.pem", directory / "alg-1.pem", directory / "alg-1.key"
        )
        async with FcpClient(f"127.0.0.1:{server.port}", client_tls) as client:
            await client.open_session()
            for i in range(count + 50):  # the first 50 warm the connection up
                request = BindingRequest(
                    f"call-{i}",
                    Endpoint(UA, 10000 + 2 * (i % 25000)),
                    TransportProtocol.UDP,
                    BindingKind.RTP_PAIR,
                    60,
                )
                start = time.perf_counter()
                binding = await client.reserve_binding(request)
                await client.enable_rule(
                    RuleRequest(binding.binding_id, Direction.BIDIRECTIONAL, PEER, 60, 30000)
                )
                elapsed = time.perf_counter() - start
                await client.change_group_lifetime(GroupLifetimeChange(f"call-{i}", 0))
                if i >= 50:
                    samples.append(elapsed * 1000)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--count", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fcp-bench-") as tmp:
        samples = asyncio.run(run(args.count, Path(tmp)))
    print(f"ReserveBinding+EnableRule over mTLS on loopback, memory backend, n={len(samples)}")
    print(f"mean: {statistics.fmean(samples):.3f} ms")
    print(f"p99: {percentile(samples, 0.99):.3f} ms")
    print(f"fcp_rpc_roundtrip_p50: {percentile(samples, 0.50):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
