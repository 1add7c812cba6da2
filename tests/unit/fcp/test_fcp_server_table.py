"""The server's table of unary RPCs (`fcp.server.UNARY_RPCS`) against the service in
fcp.proto, and the one shared path it drives, called over real gRPC with mutual TLS for
every unary RPC: the allow-list, the epoch check and the status detail trailer hold for
each of them, not only for the RPCs other tests happen to use."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from fcp_testing import client_tls

from fcp.errors import FcpError, Reason
from fcp.memory_backend import MemoryBackend
from fcp.server import SERVICE_NAME, UNARY_RPCS, FcpServer
from fcp.status import EPOCH_METADATA_KEY, STATUS_DETAILS_KEY, decode_error
from fcp.v1 import fcp_pb2 as pb

TIMEOUT = 10.0
SERVICE = pb.DESCRIPTOR.services_by_name["FirewallControl"]
UNARY = sorted(m.name for m in SERVICE.methods if not m.server_streaming)


def test_table_has_every_unary_rpc_with_the_proto_message_types() -> None:
    assert SERVICE.full_name == SERVICE_NAME
    assert sorted(UNARY_RPCS) == UNARY
    for name, rpc in UNARY_RPCS.items():
        method = SERVICE.methods_by_name[name]
        assert rpc.request.DESCRIPTOR is method.input_type, name
        assert rpc.response.DESCRIPTOR is method.output_type, name


async def _call(
    server: FcpServer, pki_dir: Path, name: str, identity: str, epoch: str | None
) -> grpc.aio.AioRpcError:
    """Call RPC `name` with an empty request through a bare channel; return its error."""
    tls = client_tls(pki_dir, identity)
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.cert_chain)
    rpc = UNARY_RPCS[name]
    metadata = ((EPOCH_METADATA_KEY, epoch),) if epoch is not None else None
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        call = channel.unary_unary(
            f"/{SERVICE_NAME}/{name}",
            request_serializer=rpc.request.SerializeToString,
            response_deserializer=rpc.response.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(rpc.request(), metadata=metadata, timeout=TIMEOUT)
    return info.value


def _decoded(error: grpc.aio.AioRpcError) -> FcpError:
    """The FcpError the server put in the status detail trailer (which must be there)."""
    trailing = [(key, value) for key, value in cast(Any, error.trailing_metadata())]
    assert any(key == STATUS_DETAILS_KEY for key, _ in trailing)
    return decode_error(error.code(), error.details(), trailing)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", UNARY)
async def test_every_unary_rpc_refuses_an_identity_not_allow_listed(
    server: FcpServer, pki_dir: Path, name: str
) -> None:
    # A current epoch, so only the identity can be the reason.
    error = await _call(server, pki_dir, name, "intruder", "1111")
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert _decoded(error).reason is Reason.NOT_AUTHORIZED


@pytest.mark.asyncio
@pytest.mark.parametrize("name", UNARY)
async def test_every_unary_rpc_checks_the_epoch_before_the_request(
    server: FcpServer, pki_dir: Path, backend: MemoryBackend, name: str
) -> None:
    # The empty request is malformed for most RPCs: STALE_EPOCH must come first.
    error = await _call(server, pki_dir, name, "alg-1", str(backend.epoch + 1))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    detail = _decoded(error)
    assert detail.reason is Reason.STALE_EPOCH
    assert detail.epoch == backend.epoch
