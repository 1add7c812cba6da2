"""`FirewallBackend`: what the FCP server needs from whoever owns the firewall.

The filter agent implements it over nftables; `fcp.memory_backend.MemoryBackend` is the
in-memory test double. The server (`fcp.server`) authenticates the caller, validates and
converts the request, checks the epoch, and then calls one of these methods with:

* `owner` — the caller's identity from its mTLS certificate, already allow-listed. A
  backend scopes EVERYTHING by owner: group ids are per-owner names, and an object of
  another owner is reported exactly like a missing one (`NOT_FOUND`), never as
  `NOT_AUTHORIZED`, so ids cannot be probed (compare PCP's per-client mappings, RFC 6887
  §11.3).
* a typed, already self-validated request from `fcp.types`.

Contract for implementations (FCP v1 semantics, ARCHITECTURE §4; MIDCOM RFC 5189, PCP RFC
6887):

* Failures raise `fcp.errors.FcpError` with a `Reason`, nothing else; any other exception
  is a bug and becomes gRPC INTERNAL (logged, never shown to the client).
* Granted lifetime = min(requested, capabilities.max_lifetime_seconds), and a rule never
  outlives its binding. Only lifetimes change after creation. Lifetime 0 releases;
  releasing a binding releases its rules; releasing a group releases all its members.
* Idempotency: a request carrying an idempotency key that was already used successfully
  by the same owner returns the first result, without creating anything; the same key
  with a different request raises CONFLICT. `fcp.idempotency.IdempotencyCache` does this.
* `batch` is atomic: either every operation is applied and the results are returned in
  order, or none is and the error carries `operation_index`. A rule in a batch may name
  the binding reserved by an earlier operation of it (`RuleRequest.binding_ref`, resolved
  with `fcp.types.resolve_ref`); `enable_rule` refuses `binding_ref` (`types.standalone`).
* `epoch` is fixed for the life of the backend and differs from any previous run's (PCP
  §8.5); the server uses it for STALE_EPOCH.
* `ADMIN_OWNER` ("*", never a valid certificate identity) is the owner the server passes
  for an identity configured as an administrator (`ServerConfig.admin_identities`, used
  by `sipwall ctl`). A backend that supports it shows every owner's objects to it, with
  group ids qualified as "<owner>/<group>", lets it change lifetimes and release (telling
  the owner with REMOVED_BY_ADMIN), and refuses creation with NOT_AUTHORIZED. A backend
  that does not support it sees an owner that owns nothing.
* `watch_events` yields `WATCH_STARTED` first, once the subscription is live, then every
  event about the owner's objects plus agent-wide events (address changes, draining),
  until the consumer stops iterating (the server closes the generator on cancellation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final, Protocol

from fcp.types import (
    BatchRequest,
    BatchResult,
    Binding,
    BindingRequest,
    Event,
    ExternalAddress,
    Group,
    GroupLifetimeChange,
    GroupLifetimeGrant,
    LifetimeChange,
    LifetimeGrant,
    Rule,
    RuleRequest,
    Session,
    SessionRequest,
)

ADMIN_OWNER: Final = "*"


class FirewallBackend(Protocol):
    """The async interface the FCP server drives; see the module docstring for the rules."""

    @property
    def epoch(self) -> int:
        """This run's boot epoch (non-zero, new at every start)."""
        ...

    async def open_session(self, owner: str, request: SessionRequest) -> Session: ...

    def watch_events(self, owner: str) -> AsyncIterator[Event]:
        """An async iterator of events (usually an async generator); first WATCH_STARTED."""
        ...

    async def reserve_binding(self, owner: str, request: BindingRequest) -> Binding: ...

    async def enable_rule(self, owner: str, request: RuleRequest) -> Rule: ...

    async def change_lifetime(self, owner: str, request: LifetimeChange) -> LifetimeGrant: ...

    async def change_group_lifetime(
        self, owner: str, request: GroupLifetimeChange
    ) -> GroupLifetimeGrant: ...

    async def list_rules(
        self, owner: str, group_id: str | None = None, binding_id: str | None = None
    ) -> Sequence[Rule]: ...

    async def list_bindings(self, owner: str, group_id: str | None = None) -> Sequence[Binding]: ...

    async def list_groups(self, owner: str) -> Sequence[Group]: ...

    async def get_rule(self, owner: str, rule_id: str) -> Rule: ...

    async def get_binding(self, owner: str, binding_id: str) -> Binding: ...

    async def get_group(self, owner: str, group_id: str) -> Group: ...

    async def batch(self, owner: str, request: BatchRequest) -> Sequence[BatchResult]: ...

    async def get_external_addresses(
        self, owner: str, pool: str | None = None
    ) -> Sequence[ExternalAddress]: ...
