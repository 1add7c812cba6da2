"""Running the core's agent actions: the few lines of I/O the shell needs.

`perform(action, api)` calls the agent and turns the answer into the result the core
consumes; it never raises an `FcpError` (it becomes `Failed`). `AgentApi` is the shape of
`fcp.client.FcpClient` (one per agent, owner implied by its mTLS identity); tests adapt
`fcp.memory_backend.MemoryBackend` to it with `OwnedBackend`. The shell runs actions
concurrently (one task each) and feeds results back with `MediaCore.on_result`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from alg.media.actions import (
    AgentAction,
    AgentResult,
    ChangeGroup,
    ChangeLifetime,
    Done,
    Enable,
    Failed,
    Release,
    ReleaseReport,
    Reserve,
)
from fcp.backend import FirewallBackend
from fcp.errors import FcpError, Reason
from fcp.types import (
    Binding,
    BindingRequest,
    GroupLifetimeChange,
    GroupLifetimeGrant,
    LifetimeChange,
    LifetimeGrant,
    Rule,
    RuleRequest,
)


class AgentApi(Protocol):
    async def reserve_binding(self, request: BindingRequest) -> Binding: ...
    async def enable_rule(self, request: RuleRequest) -> Rule: ...
    async def change_lifetime(self, request: LifetimeChange) -> LifetimeGrant: ...
    async def change_group_lifetime(self, request: GroupLifetimeChange) -> GroupLifetimeGrant: ...
    async def list_bindings(self, group_id: str | None = None) -> Sequence[Binding]: ...
    async def list_rules(
        self, group_id: str | None = None, binding_id: str | None = None
    ) -> Sequence[Rule]: ...


class OwnedBackend:
    """A `FirewallBackend` seen by one owner, shaped like `FcpClient`."""

    def __init__(self, backend: FirewallBackend, owner: str) -> None:
        self.backend = backend
        self.owner = owner

    async def reserve_binding(self, request: BindingRequest) -> Binding:
        return await self.backend.reserve_binding(self.owner, request)

    async def enable_rule(self, request: RuleRequest) -> Rule:
        return await self.backend.enable_rule(self.owner, request)

    async def change_lifetime(self, request: LifetimeChange) -> LifetimeGrant:
        return await self.backend.change_lifetime(self.owner, request)

    async def change_group_lifetime(self, request: GroupLifetimeChange) -> GroupLifetimeGrant:
        return await self.backend.change_group_lifetime(self.owner, request)

    async def list_bindings(self, group_id: str | None = None) -> Sequence[Binding]:
        return await self.backend.list_bindings(self.owner, group_id)

    async def list_rules(
        self, group_id: str | None = None, binding_id: str | None = None
    ) -> Sequence[Rule]:
        return await self.backend.list_rules(self.owner, group_id, binding_id)


async def _release(action: Release, api: AgentApi) -> ReleaseReport:
    """One RPC: the release answer carries what the group held, with its final counters
    (fcp.proto ChangeGroupLifetimeResponse), which the call record needs. Listing first
    cost two more round trips per call, each ~0.3 ms of agent CPU. A group that is
    already gone (expired, released by an operator) held nothing more to report. A retry
    with the same idempotency key gets the first answer, report included."""
    try:
        grant = await api.change_group_lifetime(
            GroupLifetimeChange(action.group_id, 0, action.idempotency_key)
        )
    except FcpError as exc:
        if exc.reason is Reason.NOT_FOUND:
            return ReleaseReport((), ())
        raise
    return ReleaseReport(grant.released_bindings, grant.released_rules)


async def perform(action: AgentAction, api: AgentApi) -> AgentResult:
    try:
        if isinstance(action, Reserve):
            return Done(action.token, await api.reserve_binding(action.request))
        if isinstance(action, Enable):
            return Done(action.token, await api.enable_rule(action.request))
        if isinstance(action, ChangeLifetime):
            return Done(action.token, await api.change_lifetime(action.request))
        if isinstance(action, ChangeGroup):
            return Done(action.token, await api.change_group_lifetime(action.request))
        if isinstance(action, Release):
            return Done(action.token, await _release(action, api))
    except FcpError as exc:
        return Failed(action.token, exc)
    raise TypeError(f"unknown action {action!r}")
