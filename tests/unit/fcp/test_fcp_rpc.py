"""FCP over real gRPC: loopback sockets, mutual TLS with certificates made in a tmp dir,
the memory backend behind the server. Ownership answers NOT_FOUND for another owner's
objects (no existence oracle), as documented in fcp.proto."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from fcp_testing import (
    ALLOWED,
    ClientFactory,
    FakeClock,
    client_tls,
    make_config,
    reconnecting_client,
    server_config,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fcp.client import FcpClient, RetryPolicy
from fcp.errors import EpochChanged, FcpError, Reason
from fcp.memory_backend import MemoryBackend
from fcp.server import SERVICE_NAME, FcpServer, ServerConfig
from fcp.status import decode_error
from fcp.types import (
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    Event,
    EventKind,
    Group,
    GroupLifetimeChange,
    LifetimeChange,
    LifetimeTarget,
    RuleRequest,
    TransportProtocol,
)
from fcp.v1 import fcp_pb2 as pb
from fcp.v1 import fcp_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio

UA = ipaddress.IPv4Address("10.77.0.10")
PEER = ipaddress.IPv4Address("198.51.100.20")
TIMEOUT = 10.0


def pair(group: str = "call-1", port: int = 40000, key: str | None = None) -> BindingRequest:
    return BindingRequest(
        group,
        Endpoint(UA, port),
        TransportProtocol.UDP,
        BindingKind.RTP_PAIR,
        300,
        idempotency_key=key,
    )


def rule(binding_id: str, port: int | None = 30000) -> RuleRequest:
    return RuleRequest(binding_id, Direction.BIDIRECTIONAL, PEER, 300, remote_port=port)


async def raw_error(
    server: FcpServer, pki_dir: Path, request: pb.ReserveBindingRequest, identity: str = "alg-1"
) -> grpc.aio.AioRpcError:
    """Send a request with the bare generated stub and return the gRPC error it gets."""
    tls = client_tls(pki_dir, identity)
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.cert_chain)
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        stub = pb_grpc.FirewallControlStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReserveBinding(request, timeout=TIMEOUT)
    return info.value


# ---- round trips ---------------------------------------------------------------------


async def test_every_rpc_round_trips(connect: ClientFactory, backend: MemoryBackend) -> None:
    client = await connect()
    session = await client.open_session()
    assert session.epoch == 1111 and session.owner == "alg-1"
    assert session.capabilities.rtp_pair and session.capabilities.max_lifetime_seconds == 3600
    assert {p.name for p in session.capabilities.pools} == {"v4", "v6"}

    addresses = await client.get_external_addresses()
    assert {str(a.address) for a in addresses} == {"203.0.113.10", "203.0.113.11", "2001:db8::10"}
    assert [a.pool for a in await client.get_external_addresses("v6")] == ["v6"]

    binding = await client.reserve_binding(pair())
    rtp, rtcp = binding.external_ports
    assert rtp % 2 == 0 and rtcp == rtp + 1 and 20000 <= rtp <= 20999
    assert binding.lifetime_seconds == 300 and binding.internal == Endpoint(UA, 40000)

    created = await client.enable_rule(rule(binding.binding_id))
    assert created.remote_address == PEER and created.remote_port == 30000
    latch = await client.enable_rule(rule(binding.binding_id, port=None))
    assert latch.remote_port is None  # latch on first packet

    backend.record_traffic(created.rule_id, packets=5, octets=800)
    got = await client.get_rule(created.rule_id)
    assert (got.counters.packets, got.counters.bytes) == (5, 800)
    assert got.counters.last_seen == pytest.approx(1_700_000_000.0)
    assert (await client.get_binding(binding.binding_id)).counters.packets == 5
    assert {r.rule_id for r in await client.list_rules()} == {created.rule_id, latch.rule_id}
    assert await client.list_rules(binding_id="nope") == []
    assert [b.binding_id for b in await client.list_bindings("call-1")] == [binding.binding_id]

    group = await client.get_group("call-1")
    assert group.external_address == binding.external_address
    assert group.counters.packets == 5 and set(group.rule_ids) == {created.rule_id, latch.rule_id}
    assert [g.group_id for g in await client.list_groups()] == ["call-1"]

    grant = await client.change_lifetime(LifetimeChange(LifetimeTarget.RULE, latch.rule_id, 7200))
    assert grant.lifetime_seconds == 300  # a rule never outlives its binding
    grant = await client.change_lifetime(LifetimeChange(LifetimeTarget.RULE, latch.rule_id, 0))
    assert grant.lifetime_seconds == 0 and grant.expires_at is None

    extended = await client.change_group_lifetime(GroupLifetimeChange("call-1", 99999))
    assert extended.lifetime_seconds == 3600  # min(requested, max)
    assert (extended.bindings, extended.rules) == (1, 1)

    results = await client.batch([pair("call-2", 40010), pair("call-2", 40020)])
    assert len(results) == 2

    released = await client.release_group("call-1")
    assert released.lifetime_seconds == 0 and released.bindings == 1
    assert [g.group_id for g in await client.list_groups()] == ["call-2"]
    with pytest.raises(FcpError) as info:
        await client.get_binding(binding.binding_id)
    assert info.value.reason is Reason.NOT_FOUND


# ---- authentication and ownership ----------------------------------------------------


async def test_untrusted_certificate_is_refused_at_handshake(
    connect: ClientFactory, rogue_tls: object, backend: MemoryBackend
) -> None:
    good = await connect()
    assert (await good.open_session()).owner == "alg-1"  # the server works
    rogue = await connect(tls=rogue_tls, retry=RetryPolicy(attempts=1))
    with pytest.raises(FcpError) as info:
        await rogue.open_session(deadline=5)
    assert info.value.reason is Reason.NETWORK_FAILURE  # never reached the service
    assert "UNAVAILABLE" in info.value.message
    assert await backend.list_groups("alg-1") == []


async def test_identity_not_allow_listed_is_permission_denied(
    server: FcpServer, pki_dir: Path, connect: ClientFactory
) -> None:
    intruder = await connect("intruder")
    with pytest.raises(FcpError) as info:
        await intruder.reserve_binding(pair())
    assert info.value.reason is Reason.NOT_AUTHORIZED

    error = await raw_error(server, pki_dir, pb.ReserveBindingRequest(), identity="intruder")
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED  # before any validation


async def test_one_owner_cannot_see_or_change_anothers_objects(connect: ClientFactory) -> None:
    alice, bob = await connect("alg-1"), await connect("alg-2")
    binding = await alice.reserve_binding(pair())
    created = await alice.enable_rule(rule(binding.binding_id))
    attempts = [
        bob.get_binding(binding.binding_id),
        bob.get_rule(created.rule_id),
        bob.get_group("call-1"),
        bob.enable_rule(rule(binding.binding_id)),
        bob.change_lifetime(LifetimeChange(LifetimeTarget.RULE, created.rule_id, 0)),
        bob.change_lifetime(LifetimeChange(LifetimeTarget.BINDING, binding.binding_id, 0)),
        bob.release_group("call-1"),
    ]
    for attempt in attempts:
        with pytest.raises(FcpError) as info:
            await attempt
        assert info.value.reason is Reason.NOT_FOUND
    assert await bob.list_rules() == [] and await bob.list_bindings() == []
    assert (await alice.get_rule(created.rule_id)).rule_id == created.rule_id


# ---- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: setattr(m.internal, "address", "10.77.0.300"), "internal.address"),
        (lambda m: setattr(m.internal, "port", 70000), "internal.port"),
        (lambda m: setattr(m, "group_id", ""), "group_id"),
        (lambda m: setattr(m, "lifetime_seconds", -5), "lifetime_seconds"),
        (lambda m: m.MergeFrom(pb.ReserveBindingRequest(kind=pb.BINDING_KIND_BLOCK)), "block_size"),
        (lambda m: setattr(m, "protocol", pb.TRANSPORT_PROTOCOL_UNSPECIFIED), "protocol"),
        (lambda m: m.ClearField("internal"), "internal"),
    ],
)
async def test_malformed_request_is_invalid_argument_naming_the_field(
    server: FcpServer, pki_dir: Path, connect: ClientFactory, mutate: object, field: str
) -> None:
    message = pb.ReserveBindingRequest(
        group_id="call-1",
        internal=pb.Endpoint(address="10.77.0.10", port=40000),
        protocol=pb.TRANSPORT_PROTOCOL_UDP,
        kind=pb.BINDING_KIND_SINGLE,
        lifetime_seconds=60,
    )
    mutate(message)  # type: ignore[operator]
    error = await raw_error(server, pki_dir, message)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    decoded = decode_error(
        error.code(), error.details(), [(k, v) for k, v in cast(Any, error.trailing_metadata())]
    )
    assert decoded.reason is Reason.MALFORMED and decoded.field == field
    assert decoded.epoch == 1111


async def test_client_rebuilds_fcp_error_from_status_detail(connect: ClientFactory) -> None:
    client = await connect()
    await client.reserve_binding(pair(key="k1"))
    with pytest.raises(FcpError) as info:  # same key, different request
        await client.reserve_binding(pair(port=40100, key="k1"))
    assert info.value.reason is Reason.CONFLICT and info.value.field == "idempotency_key"


# ---- idempotency and retries ---------------------------------------------------------


async def test_retry_with_same_key_returns_same_binding(
    connect: ClientFactory, backend: MemoryBackend
) -> None:
    client = await connect()
    first = await client.reserve_binding(pair(key="retry-me"))
    again = await client.reserve_binding(pair(key="retry-me"))
    assert again == first
    assert len(await backend.list_bindings("alg-1")) == 1


class LosesFirstAnswer:
    """Wraps a backend: the first reservation succeeds but its answer is lost (UNAVAILABLE)."""

    def __init__(self, inner: MemoryBackend) -> None:
        self.inner = inner
        self.calls: list[str | None] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    async def reserve_binding(self, owner: str, request: BindingRequest) -> object:
        self.calls.append(request.idempotency_key)
        result = await self.inner.reserve_binding(owner, request)
        if len(self.calls) == 1:
            raise FcpError(Reason.NETWORK_FAILURE, "answer lost", retry_after=0.01)
        return result


async def test_client_retries_unavailable_with_the_same_generated_key(
    backend: MemoryBackend, pki_dir: Path
) -> None:
    flaky = LosesFirstAnswer(backend)
    config = server_config(pki_dir)
    async with FcpServer(flaky, config) as fcp_server:  # type: ignore[arg-type]
        client = FcpClient(
            f"127.0.0.1:{fcp_server.port}",
            client_tls(pki_dir, "alg-1"),
            retry=RetryPolicy(attempts=3, initial_backoff=0.01),
        )
        async with client:
            binding = await client.reserve_binding(pair())  # no key given
    assert len(flaky.calls) == 2 and flaky.calls[0] == flaky.calls[1] is not None
    assert await backend.list_bindings("alg-1") == [binding]


# ---- batch ---------------------------------------------------------------------------


async def test_batch_is_all_or_nothing(connect: ClientFactory, backend: MemoryBackend) -> None:
    client = await connect()
    existing = await client.reserve_binding(pair("call-1", 40000))
    with pytest.raises(FcpError) as info:
        await client.batch(
            [
                pair("call-2", 40010),
                RuleRequest(existing.binding_id, Direction.INBOUND, PEER, 60),
                LifetimeChange(LifetimeTarget.BINDING, existing.binding_id, 0),
                RuleRequest("b-does-not-exist", Direction.INBOUND, PEER, 60),
            ]
        )
    assert info.value.reason is Reason.NOT_FOUND and info.value.operation_index == 3
    assert [b.binding_id for b in await client.list_bindings()] == [existing.binding_id]
    assert await client.list_rules() == []
    assert [g.group_id for g in await client.list_groups()] == ["call-1"]
    # and the ports of the failed batch were not consumed: the same port is available
    again = await client.reserve_binding(pair("call-3", 40010))
    assert again.group_id == "call-3"


# ---- events --------------------------------------------------------------------------


async def next_event(events: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(events), TIMEOUT)


async def test_event_stream_delivers_expiry(
    connect: ClientFactory, backend: MemoryBackend, clock: FakeClock
) -> None:
    client = await connect()
    await client.open_session()
    events = client.watch_events()
    try:
        started = await next_event(events)  # subscription is live from here on
        assert started.kind is EventKind.WATCH_STARTED and started.epoch == 1111
        binding = await client.reserve_binding(pair())
        short = await client.enable_rule(
            RuleRequest(binding.binding_id, Direction.INBOUND, PEER, 30)
        )
        clock.advance(31)
        backend.sweep()
        expired = await next_event(events)
        assert (expired.kind, expired.rule_id, expired.group_id) == (
            EventKind.EXPIRED,
            short.rule_id,
            "call-1",
        )
        backend.drain()
        assert (await next_event(events)).kind is EventKind.AGENT_DRAINING
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def test_events_of_one_owner_are_not_sent_to_another(
    connect: ClientFactory, backend: MemoryBackend, clock: FakeClock
) -> None:
    alice, bob = await connect("alg-1"), await connect("alg-2")
    bob_events = bob.watch_events()
    try:
        assert (await next_event(bob_events)).kind is EventKind.WATCH_STARTED
        binding = await alice.reserve_binding(pair())
        await alice.enable_rule(RuleRequest(binding.binding_id, Direction.INBOUND, PEER, 10))
        clock.advance(11)
        backend.sweep()
        backend.change_external_address(
            "v4", ipaddress.IPv4Address("203.0.113.11"), ipaddress.IPv4Address("203.0.113.12")
        )
        # Bob sees the agent-wide event and nothing of Alice's expiry before it.
        changed = await next_event(bob_events)
        assert changed.kind is EventKind.EXTERNAL_ADDRESS_CHANGED
        assert str(changed.new_address) == "203.0.113.12"
    finally:
        await bob_events.aclose()  # type: ignore[attr-defined]


# ---- epoch ---------------------------------------------------------------------------


async def test_client_detects_epoch_change_when_agent_restarts(
    pki_dir: Path, clock: FakeClock
) -> None:
    seen: list[tuple[int | None, int | None]] = []
    first = FcpServer(MemoryBackend(make_config(), epoch=111, clock=clock), server_config(pki_dir))
    await first.start()
    port = first.port
    client = reconnecting_client(
        port, pki_dir, on_epoch_change=lambda old, new: seen.append((old, new))
    )
    second: FcpServer | None = None
    try:
        assert (await client.open_session()).epoch == 111
        await first.stop(0)
        second = FcpServer(
            MemoryBackend(make_config(), epoch=222, clock=clock),
            server_config(pki_dir, f"127.0.0.1:{port}"),
        )
        await second.start()
        with pytest.raises(EpochChanged) as info:
            await client.list_groups()
        assert (info.value.old_epoch, info.value.new_epoch) == (111, 222)
        assert info.value.reason is Reason.STALE_EPOCH
        assert client.epoch_changed and seen == [(111, 222)]
        with pytest.raises(EpochChanged):  # keeps failing until the session is reopened
            await client.list_groups()
        assert seen == [(111, 222)]  # reported once
        session = await client.open_session()
        assert session.epoch == 222 and not client.epoch_changed
        assert session.previous_incarnation_id is None  # the new agent never saw us
        assert await client.list_groups() == []
    finally:
        await client.close()
        await first.stop(0)
        if second is not None:
            await second.stop(0)


# ---- standard services, internal errors, insecure mode --------------------------------


async def test_health_and_reflection_answer(server: FcpServer, pki_dir: Path) -> None:
    tls = client_tls(pki_dir, "alg-1")
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.cert_chain)
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
        )
        replies = [reply async for reply in call]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


class Broken(MemoryBackend):
    async def list_groups(self, owner: str) -> Sequence[Group]:
        raise RuntimeError("secret path /etc/sipwall/token leaked?")


async def test_unexpected_backend_error_is_internal_without_details(
    pki_dir: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Broken(make_config(), epoch=5, clock=clock)
    async with FcpServer(backend, server_config(pki_dir)) as fcp_server:
        client = FcpClient(f"127.0.0.1:{fcp_server.port}", client_tls(pki_dir, "alg-1"))
        async with client:
            with (
                caplog.at_level(logging.ERROR, logger="sipwall.fcp.server"),
                pytest.raises(FcpError) as info,
            ):
                await client.list_groups()
    assert info.value.reason is Reason.INTERNAL
    assert "secret" not in str(info.value) and "Traceback" not in str(info.value)
    assert "secret path" in caplog.text  # the operator still gets the traceback


async def test_insecure_mode_only_on_loopback_and_warns(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="loopback"):
        ServerConfig("0.0.0.0:0", ALLOWED, insecure_identity="alg-1")
    with pytest.raises(ValueError, match="loopback"):
        FcpClient("192.0.2.1:1")
    socket = tmp_path / "fcp.sock"
    config = ServerConfig(f"unix:{socket}", ALLOWED, insecure_identity="alg-1", grace_seconds=0)
    with caplog.at_level(logging.WARNING, logger="sipwall.fcp.server"):
        async with FcpServer(backend, config), FcpClient(f"unix:{socket}") as client:
            assert (await client.open_session()).owner == "alg-1"
    assert "WITHOUT TLS" in caplog.text
