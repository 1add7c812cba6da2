"""Running the core's agent actions: the few lines of I/O the shell needs.

`perform(action, api)` calls the agent and turns the answer into the result the core
consumes; it never raises an `FcpError` (it becomes `Failed`). `AgentApi` is the shape of
`fcp.client.FcpClient` (one per agent, owner implied by its mTLS identity); tests adapt
`fcp.memory_backend.MemoryBackend` to it with `OwnedBackend`. The shell runs actions
concurrently (one task each) and feeds results back with `MediaCore.on_result`.

`coalesce` and `perform_batch`: the pinholes and the group lifetime an answer brings
(`Enable`s, then `ChangeGroup`, emitted together) go to their agent as ONE FCP Batch: a
round trip and ~0.35 ms of agent CPU less per call. Each action still gets the result it
would have had alone: a Batch is atomic, so when one operation is refused (the error names
its index) nothing was applied, that action gets the error and the others are sent on
their own.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import replace
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
    MAX_BATCH_OPERATIONS,
    BatchOperation,
    BatchRequest,
    BatchResult,
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
    async def batch(
        self, operations: Sequence[BatchOperation], *, idempotency_key: str | None = None
    ) -> tuple[BatchResult, ...]: ...
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

    async def batch(
        self, operations: Sequence[BatchOperation], *, idempotency_key: str | None = None
    ) -> tuple[BatchResult, ...]:
        request = BatchRequest(tuple(operations), idempotency_key)
        return tuple(await self.backend.batch(self.owner, request))

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


Batched = tuple[Enable | ChangeGroup, ...]


def coalesce(actions: Sequence[AgentAction]) -> list[AgentAction | Batched]:
    """Actions in the order to run them: per agent, its `Enable`s and `ChangeGroup`s as one
    batch (Enables first, so a group lifetime set in the same batch covers the new rules);
    everything else alone. A batch of one is just that action."""
    batches: dict[str, list[Enable | ChangeGroup]] = {}
    out: list[AgentAction | Batched] = []
    for action in actions:
        if isinstance(action, Enable | ChangeGroup):
            batches.setdefault(action.agent, []).append(action)
        else:
            out.append(action)
    for members in batches.values():
        members.sort(key=lambda a: isinstance(a, ChangeGroup))  # stable: Enables first
        for start in range(0, len(members), MAX_BATCH_OPERATIONS):
            chunk = tuple(members[start : start + MAX_BATCH_OPERATIONS])
            out.append(chunk[0] if len(chunk) == 1 else chunk)
    return out


def batch_key(actions: Batched) -> str:
    """The same actions give the same key, so a retry of the batch is answered with the
    first result (each action's own key, which a batch may not carry, is part of it)."""
    keys = "\n".join(a.request.idempotency_key or f"token:{a.token}" for a in actions)
    return "b-" + hashlib.blake2b(keys.encode(), digest_size=16).hexdigest()


async def perform_batch(actions: Batched, api: AgentApi) -> list[AgentResult]:
    operations = [replace(a.request, idempotency_key=None) for a in actions]
    try:
        values = await api.batch(operations, idempotency_key=batch_key(actions))
    except FcpError as exc:
        index = exc.operation_index
        if index is None or not 0 <= index < len(actions):
            # Not one operation's fault (agent unreachable, overloaded, ...): each action
            # fails as it would have alone, and the core retries or fails over as usual.
            return [Failed(a.token, exc) for a in actions]
        # Nothing was applied: the refused one gets its error, the others go alone.
        alone = [a for i, a in enumerate(actions) if i != index]
        rest = await asyncio.gather(*(perform(a, api) for a in alone))
        alone_error = FcpError(
            exc.reason, exc.message, exc.retry_after, field=exc.field, epoch=exc.epoch
        )
        return [Failed(actions[index].token, alone_error), *rest]
    return [Done(a.token, v) for a, v in zip(actions, values, strict=True)]
