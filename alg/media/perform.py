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
from fcp.errors import FcpError
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
            bindings = tuple(await api.list_bindings(action.group_id))
            rules = tuple(await api.list_rules(action.group_id))
            if bindings or rules:
                await api.change_group_lifetime(
                    GroupLifetimeChange(action.group_id, 0, action.idempotency_key)
                )
            return Done(action.token, ReleaseReport(bindings, rules))
    except FcpError as exc:
        return Failed(action.token, exc)
    raise TypeError(f"unknown action {action!r}")
