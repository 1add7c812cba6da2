"""A release (ChangeGroupLifetime 0) reports what the group held, with final counters, in
its answer: over real gRPC with mutual TLS (memory backend), through the media shell's
`perform(Release)`, and in the proto conversion. The ALG's call record used to need two
List* round trips before the release; now it is one RPC."""

from __future__ import annotations

import pytest
from fcp_testing import PEER, ClientFactory, pair, pinhole

from alg.media.actions import Done, Failed, Release, ReleaseReport
from alg.media.perform import OwnedBackend, perform
from fcp import convert
from fcp.errors import FcpError, Reason
from fcp.memory_backend import MemoryBackend
from fcp.types import (
    Counters,
    Direction,
    GroupLifetimeChange,
    GroupLifetimeGrant,
    Rule,
)


@pytest.mark.asyncio
async def test_release_answer_carries_the_groups_objects_and_counters(
    connect: ClientFactory, backend: MemoryBackend
) -> None:
    client = await connect()
    await client.open_session()
    first = await client.reserve_binding(pair("call-1", 40000))
    second = await client.reserve_binding(pair("call-1", 40010))
    other = await client.reserve_binding(pair("call-2", 40020))
    r1 = await client.enable_rule(pinhole(first.binding_id))
    await client.enable_rule(pinhole(other.binding_id))
    backend.record_traffic(r1.rule_id, packets=7, octets=1120)
    listed_bindings = await client.list_bindings("call-1")
    listed_rules = await client.list_rules("call-1")

    grant = await client.change_group_lifetime(GroupLifetimeChange("call-1", 0, "rel-1"))

    assert (grant.lifetime_seconds, grant.bindings, grant.rules) == (0, 2, 1)
    assert grant.released_bindings == tuple(listed_bindings)
    assert {b.binding_id for b in grant.released_bindings} == {
        first.binding_id,
        second.binding_id,
    }
    assert grant.released_rules == tuple(listed_rules)
    assert (grant.released_rules[0].counters.packets, grant.released_rules[0].counters.bytes) == (
        7,
        1120,
    )
    # A retry with the same key replays the first answer, report included.
    again = await client.change_group_lifetime(GroupLifetimeChange("call-1", 0, "rel-1"))
    assert again == grant
    # Another group is untouched; a positive lifetime reports nothing released.
    extended = await client.change_group_lifetime(GroupLifetimeChange("call-2", 60))
    assert (extended.released_bindings, extended.released_rules) == ((), ())
    assert [b.binding_id for b in await client.list_bindings()] == [other.binding_id]


@pytest.mark.asyncio
async def test_perform_release_is_one_call_and_an_unknown_group_reports_nothing(
    backend: MemoryBackend,
) -> None:
    api = OwnedBackend(backend, "alg-1")
    binding = await api.reserve_binding(pair("call-9", 40100))
    rule = await api.enable_rule(pinhole(binding.binding_id))
    calls: list[str] = []

    class Counting(OwnedBackend):
        async def list_bindings(self, group_id: str | None = None) -> list:  # type: ignore[type-arg]
            calls.append("list_bindings")
            return list(await super().list_bindings(group_id))

        async def list_rules(
            self, group_id: str | None = None, binding_id: str | None = None
        ) -> list:  # type: ignore[type-arg]
            calls.append("list_rules")
            return list(await super().list_rules(group_id, binding_id))

    counting = Counting(backend, "alg-1")
    result = await perform(Release("gw", "call-9", 1, 5.0, "rel-9"), counting)
    assert isinstance(result, Done)
    assert isinstance(result.value, ReleaseReport)
    assert [b.binding_id for b in result.value.bindings] == [binding.binding_id]
    assert [r.rule_id for r in result.value.rules] == [rule.rule_id]
    assert calls == []  # the report came with the release itself
    assert await api.list_bindings("call-9") == []

    gone = await perform(Release("gw", "never-was", 2, 5.0, "rel-10"), counting)
    assert gone == Done(2, ReleaseReport((), ()))


@pytest.mark.asyncio
async def test_perform_release_reports_other_failures(backend: MemoryBackend) -> None:
    """Only NOT_FOUND means "nothing left to report"; any other refusal is a failure the
    core must see (it retries or gives up), not a silently empty call record."""

    class Unreachable(OwnedBackend):
        async def change_group_lifetime(self, request: GroupLifetimeChange) -> GroupLifetimeGrant:
            raise FcpError(Reason.NETWORK_FAILURE, "nftables said no", retry_after=1.0)

    result = await perform(Release("gw", "call-1", 3, 5.0, "rel-11"), Unreachable(backend, "a"))
    assert isinstance(result, Failed)
    assert result.token == 3 and result.error.reason is Reason.NETWORK_FAILURE


def test_group_grant_round_trips_with_its_report() -> None:
    rule = Rule(
        "r2",
        "b1",
        "g",
        Direction.INBOUND,
        PEER,
        5000,
        None,
        60,
        1_700_000_060.0,
        Counters(3, 480, 1_700_000_001.5),
    )
    grant = GroupLifetimeGrant(0, None, 1, 1, (), (rule,))
    assert convert.group_grant_from_proto(convert.group_grant_to_proto(grant)) == grant
    plain = GroupLifetimeGrant(60, 1_700_000_060.0, 1, 1)
    assert convert.group_grant_from_proto(convert.group_grant_to_proto(plain)) == plain
