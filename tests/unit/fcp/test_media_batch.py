"""The media shell sends an answer's pinholes and group lifetime as one FCP Batch
(`alg.media.perform.coalesce` / `perform_batch`), and every action still gets the result it
would have had alone: over real gRPC with mutual TLS and against the memory backend."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from fcp_testing import ClientFactory, pair, pinhole

from alg.media.actions import ChangeGroup, Done, Enable, Failed, Release, Reserve
from alg.media.perform import OwnedBackend, batch_key, coalesce, perform_batch
from fcp.errors import FcpError, Reason
from fcp.memory_backend import MemoryBackend
from fcp.types import (
    BatchOperation,
    BatchResult,
    GroupLifetimeChange,
    GroupLifetimeGrant,
    Rule,
)


def enable(token: int, binding_id: str, key: str, agent: str = "gw") -> Enable:
    return Enable(agent, pinhole(binding_id, key), token, 5.0)


def group(token: int, group_id: str, lifetime: int, key: str, agent: str = "gw") -> ChangeGroup:
    return ChangeGroup(agent, GroupLifetimeChange(group_id, lifetime, key), token, 5.0)


def test_coalesce_batches_enables_then_group_changes_per_agent() -> None:
    reserve = Reserve("gw", pair("c1", 40000), 1, 5.0)
    release = Release("gw", "c0", 2, 5.0, "rel")
    g1, e1, e2 = group(3, "c1", 1800, "k3"), enable(4, "b1", "k4"), enable(5, "b2", "k5")
    other = enable(6, "b9", "k6", agent="gw2")
    work = coalesce([reserve, g1, e1, release, e2, other])
    assert work == [reserve, release, (e1, e2, g1), other]  # a batch of one is the action
    assert coalesce([e1]) == [e1]


def test_the_batch_key_follows_the_actions_keys_not_their_tokens() -> None:
    first = (enable(1, "b1", "k1"), group(2, "c1", 60, "k2"))
    retry = (enable(7, "b1", "k1"), group(8, "c1", 60, "k2"))
    assert batch_key(first) == batch_key(retry)
    assert batch_key(first) != batch_key((enable(1, "b1", "k1"), group(2, "c1", 60, "k9")))


@pytest.mark.asyncio
async def test_one_batch_over_grpc_gives_each_action_its_result(
    connect: ClientFactory, backend: MemoryBackend
) -> None:
    client = await connect()
    await client.open_session()
    binding = await client.reserve_binding(pair("call-1", 40000))
    batched = (enable(1, binding.binding_id, "e-1"), group(2, "call-1", 1800, "g-1"))
    results = await perform_batch(batched, client)
    assert [r.token for r in results] == [1, 2]
    rule, grant = (r.value for r in results if isinstance(r, Done))
    assert isinstance(rule, Rule) and rule.binding_id == binding.binding_id
    assert isinstance(grant, GroupLifetimeGrant) and grant.lifetime_seconds == 1800
    assert grant.rules == 1  # the group change came after the new pinhole
    # A retry (new tokens, same requests) is answered with the first result: no new rule.
    retry = (enable(3, binding.binding_id, "e-1"), group(4, "call-1", 1800, "g-1"))
    again = await perform_batch(retry, client)
    assert [r.value for r in again if isinstance(r, Done)] == [rule, grant]
    assert len(await client.list_rules("call-1")) == 1


@pytest.mark.asyncio
async def test_a_refused_operation_fails_alone_and_the_others_still_happen(
    backend: MemoryBackend,
) -> None:
    api = OwnedBackend(backend, "alg-1")
    binding = await api.reserve_binding(pair("call-2", 40100))
    batched = (
        enable(1, "no-such-binding", "e-1"),
        enable(2, binding.binding_id, "e-2"),
        group(3, "call-2", 900, "g-2"),
    )
    results = await perform_batch(batched, api)
    failed, *done = results
    assert isinstance(failed, Failed) and failed.token == 1
    assert failed.error.reason is Reason.NOT_FOUND
    assert failed.error.operation_index is None  # as if it had been sent alone
    assert sorted(r.token for r in done if isinstance(r, Done)) == [2, 3]
    assert [r.binding_id for r in await api.list_rules("call-2")] == [binding.binding_id]


@pytest.mark.asyncio
async def test_a_failure_of_the_whole_batch_fails_every_action(backend: MemoryBackend) -> None:
    class Unreachable(OwnedBackend):
        async def batch(
            self, operations: Sequence[BatchOperation], *, idempotency_key: str | None = None
        ) -> tuple[BatchResult, ...]:
            raise FcpError(Reason.NETWORK_FAILURE, "agent unreachable", retry_after=1.0)

    batched = (enable(1, "b1", "e-1"), group(2, "call-3", 60, "g-3"))
    results = await perform_batch(batched, Unreachable(backend, "alg-1"))
    assert [(r.token, type(r)) for r in results] == [(1, Failed), (2, Failed)]
    assert all(isinstance(r, Failed) and r.error.reason is Reason.NETWORK_FAILURE for r in results)
