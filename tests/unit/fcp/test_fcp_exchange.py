"""FCP's Exchange stream over real gRPC with mutual TLS, the memory backend behind the
server: each request answered by id with what its unary call would give, refusals that
leave the stream going, concurrency, deadlines and retries with the same key, the agent
stopping under the stream, and the fallback to unary calls for an agent without Exchange."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import pytest_asyncio
from fcp_testing import (
    PEER,
    ClientFactory,
    FakeClock,
    client_tls,
    local_client,
    make_config,
    pair,
    reconnecting_client,
    server_config,
)

from fcp import convert
from fcp.client import FcpClient, RetryPolicy
from fcp.errors import FcpError, Reason
from fcp.memory_backend import MemoryBackend
from fcp.server import EXCHANGE_IN_FLIGHT, SERVICE_NAME, FcpServer
from fcp.status import decode_error, error_from_status
from fcp.types import (
    Binding,
    BindingRequest,
    Direction,
    GroupLifetimeChange,
    LifetimeChange,
    LifetimeGrant,
    LifetimeTarget,
    RuleRequest,
)
from fcp.v1 import fcp_pb2 as pb
from fcp.v1 import fcp_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio
TIMEOUT = 10.0


def reserve(
    request_id: int, request: BindingRequest, epoch: int | None = None
) -> pb.ExchangeRequest:
    message = pb.ExchangeRequest(
        id=request_id, reserve_binding=convert.binding_request_to_proto(request)
    )
    if epoch is not None:
        message.epoch = epoch
    return message


async def open_raw(
    server: FcpServer, pki_dir: Path, identity: str = "alg-1"
) -> tuple[grpc.aio.Channel, Any]:
    tls = client_tls(pki_dir, identity)
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.cert_chain)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials)
    return channel, pb_grpc.FirewallControlStub(channel).Exchange(None, timeout=TIMEOUT)


async def test_each_request_is_answered_by_id_and_a_refusal_leaves_the_stream_going(
    server: FcpServer, pki_dir: Path, backend: MemoryBackend
) -> None:
    channel, call = await open_raw(server, pki_dir)
    async with channel:
        unknown = RuleRequest("no-such-binding", Direction.BIDIRECTIONAL, PEER, 60)
        for message in (
            reserve(1, pair("call-1", 40000)),
            pb.ExchangeRequest(id=2, enable_rule=convert.rule_request_to_proto(unknown)),
            pb.ExchangeRequest(id=3),  # no operation
            reserve(4, pair("call-1", 40002), epoch=backend.epoch + 1),
        ):
            await call.write(message)
        answers = {}
        for _ in range(4):
            answer = await call.read()
            answers[answer.id] = answer
        assert answers[1].WhichOneof("result") == "reserve_binding"
        binding = convert.binding_from_proto(answers[1].reserve_binding.binding)
        assert binding.internal.port == 40000
        errors = {n: error_from_status(answers[n].error) for n in (2, 3, 4)}
        assert errors[2][0] is grpc.StatusCode.NOT_FOUND
        assert errors[2][1].reason is Reason.NOT_FOUND
        assert errors[3][0] is grpc.StatusCode.INVALID_ARGUMENT
        assert (errors[3][1].reason, errors[3][1].field) == (Reason.MALFORMED, "operation")
        assert errors[4][1].reason is Reason.STALE_EPOCH and errors[4][1].epoch == backend.epoch
        # The stream goes on after three refusals, and ends cleanly when we are done.
        await call.write(reserve(5, pair("call-1", 40004), epoch=backend.epoch))
        fifth = await call.read()
        assert fifth.id == 5 and fifth.WhichOneof("result") == "reserve_binding"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK
    assert len(await backend.list_bindings("alg-1")) == 2


async def test_a_caller_not_allowed_gets_the_stream_refused_with_the_detail(
    server: FcpServer, pki_dir: Path
) -> None:
    channel, call = await open_raw(server, pki_dir, identity="intruder")
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.write(reserve(1, pair("call-1", 40000)))
            await call.read()
    error = info.value
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    trailing = [(k, v) for k, v in cast(Any, error.trailing_metadata())]
    assert decode_error(error.code(), error.details(), trailing).reason is Reason.NOT_AUTHORIZED


async def test_concurrent_operations_share_one_stream_and_get_their_own_answers(
    connect: ClientFactory, backend: MemoryBackend
) -> None:
    client = await connect()
    await client.open_session()  # so every request carries the epoch
    ports = range(40000, 40128, 2)  # 64, in 4 calls (the per-group quota is 16)
    bindings = await asyncio.gather(*(client.reserve_binding(pair(f"c{p % 8}", p)) for p in ports))
    assert [(b.group_id, b.internal.port) for b in bindings] == [(f"c{p % 8}", p) for p in ports]
    assert len({b.external for b in bindings}) == len(bindings)
    assert client.uses_exchange
    with pytest.raises(FcpError) as info:
        await client.enable_rule(RuleRequest("nope", Direction.BIDIRECTIONAL, PEER, 60))
    assert info.value.reason is Reason.NOT_FOUND
    grants = await asyncio.gather(
        *(client.change_group_lifetime(GroupLifetimeChange(f"c{p}", 0)) for p in range(0, 8, 2))
    )
    assert sum(g.bindings for g in grants) == len(bindings)
    assert await backend.list_bindings("alg-1") == []


class Gathers(MemoryBackend):
    """Holds every ChangeLifetime until EXCHANGE_IN_FLIGHT of them run at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running = self.peak = 0
        self.full = asyncio.Event()

    async def change_lifetime(self, owner: str, change: LifetimeChange) -> LifetimeGrant:
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.running >= EXCHANGE_IN_FLIGHT:
            self.full.set()
        await self.full.wait()
        self.running -= 1
        return await super().change_lifetime(owner, change)


async def test_one_streams_operations_run_concurrently_and_past_the_limit_none_is_lost(
    pki_dir: Path, clock: FakeClock
) -> None:
    backend = Gathers(make_config(), epoch=7, clock=clock)
    async with FcpServer(backend, server_config(pki_dir)) as fcp_server:
        client = local_client(fcp_server.port, pki_dir, deadline=TIMEOUT)
        async with client:
            count = EXCHANGE_IN_FLIGHT + 44
            changes = [
                client.change_lifetime(LifetimeChange(LifetimeTarget.BINDING, f"b-{n}", 60))
                for n in range(count)
            ]
            results = await asyncio.gather(*changes, return_exceptions=True)
            assert client.uses_exchange
    # They ran side by side, as unary calls would (one at a time would hang here).
    assert backend.peak == EXCHANGE_IN_FLIGHT
    assert len(results) == count  # and every one answered (NOT_FOUND: no such binding)
    assert all(isinstance(r, FcpError) and r.reason is Reason.NOT_FOUND for r in results)


class Stalls(MemoryBackend):
    """Holds the first ReserveBinding until the second arrives: the first answer comes
    after the client has given up on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: list[str | None] = []
        self.second = asyncio.Event()

    async def reserve_binding(self, owner: str, request: BindingRequest) -> Binding:
        self.keys.append(request.idempotency_key)
        if len(self.keys) == 1:
            await self.second.wait()
        else:
            self.second.set()
        return await super().reserve_binding(owner, request)


async def test_a_late_answer_is_dropped_and_the_retry_reuses_the_key(
    pki_dir: Path, clock: FakeClock
) -> None:
    backend = Stalls(make_config(), epoch=7, clock=clock)
    async with FcpServer(backend, server_config(pki_dir)) as fcp_server:
        client = local_client(
            fcp_server.port,
            pki_dir,
            deadline=0.3,
            retry=RetryPolicy(attempts=3, initial_backoff=0.01),
        )
        async with client:
            binding = await client.reserve_binding(pair("call-1", 40000))  # no key given
            assert await client.reserve_binding(pair("d", 40100)) is not None  # stream fine
    assert backend.keys[0] is not None and backend.keys[0] == backend.keys[1]
    assert binding in await backend.list_bindings("alg-1")
    assert len(await backend.list_bindings("alg-1")) == 2  # one per key, not per attempt


async def test_closing_the_client_fails_what_waits_on_the_stream(
    pki_dir: Path, clock: FakeClock
) -> None:
    backend = Stalls(make_config(), epoch=7, clock=clock)
    async with FcpServer(backend, server_config(pki_dir)) as fcp_server:
        client = local_client(fcp_server.port, pki_dir)
        waiting = asyncio.create_task(client.reserve_binding(pair("call-1", 40000)))
        while not backend.keys:  # the agent has it
            await asyncio.sleep(0.01)
        await client.close()
        with pytest.raises(FcpError) as info:
            await asyncio.wait_for(waiting, TIMEOUT)
        assert info.value.reason is Reason.NETWORK_FAILURE
        backend.second.set()


async def test_stopping_the_agent_ends_the_stream_and_the_client_reconnects(
    pki_dir: Path, clock: FakeClock
) -> None:
    first = FcpServer(MemoryBackend(make_config(), epoch=1, clock=clock), server_config(pki_dir))
    await first.start()
    port = first.port
    client = reconnecting_client(port, pki_dir)
    second: FcpServer | None = None
    try:
        await client.reserve_binding(pair("a", 40000))
        # A long grace would be waited out in full if the open stream kept the server busy.
        await asyncio.wait_for(first.stop(grace=60), 5)
        backend = MemoryBackend(make_config(), epoch=2, clock=clock)
        second = FcpServer(backend, server_config(pki_dir, f"127.0.0.1:{port}"))
        await second.start()
        binding = await client.reserve_binding(pair("b", 40002))
        assert await backend.list_bindings("alg-1") == [binding]
        assert client.uses_exchange
    finally:
        await client.close()
        await first.stop(0)
        if second is not None:
            await second.stop(0)


@pytest_asyncio.fixture
async def unary_only_agent(backend: MemoryBackend) -> AsyncIterator[tuple[str, list[str]]]:
    """A gRPC server that knows ReserveBinding but not Exchange, as an agent from before
    Exchange would; it answers with one real binding and records what was called."""
    called: list[str] = []
    binding = await backend.reserve_binding("alg-1", pair("old", 40000))
    answer = pb.ReserveBindingResponse(binding=convert.binding_to_proto(binding))

    async def reserve_binding(request: pb.ReserveBindingRequest, context: object) -> Any:
        called.append("ReserveBinding")
        return answer

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ReserveBinding": grpc.unary_unary_rpc_method_handler(
                reserve_binding,
                request_deserializer=pb.ReserveBindingRequest.FromString,
                response_serializer=pb.ReserveBindingResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", called
    finally:
        await server.stop(0)


async def test_an_agent_without_exchange_is_spoken_to_in_unary_calls(
    unary_only_agent: tuple[str, list[str]],
) -> None:
    target, called = unary_only_agent
    async with FcpClient(target, None, retry=RetryPolicy(attempts=1)) as client:
        assert client.uses_exchange
        binding = await client.reserve_binding(pair("call-1", 40000))
        assert binding.group_id == "old" and called == ["ReserveBinding"]
        assert not client.uses_exchange  # and stays so
        await client.reserve_binding(pair("call-1", 40000))
    assert called == ["ReserveBinding", "ReserveBinding"]
