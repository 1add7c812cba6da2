"""What the media core asks of the outside world, and what it is told back. Plain data.

The core (`alg.media.core.MediaCore`) never talks to an agent. It emits *actions* — one
FCP operation each, addressed to one agent, tagged with a `token` — and consumes their
*results* (`Done(token, value)` or `Failed(token, error)`), which the shell produces by
running the action (`alg.media.perform.perform`). A retry of an action carries a new token
but the same request, hence the same idempotency key: the agent answers a retry with the
first result (FCP §4, PCP RFC 6887 §11.2).

For the proxy, the core answers each message crossing sides with an *outcome*:
`Forward(data)` (send these bytes instead), `Parked(ticket)` (held until its bindings
arrive; later `Ready(ticket, data)` or `Refused(ticket, status)` from
`MediaCore.take_ready()`), or `Reject(status)` (answer the request with this status,
forward nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

# ---- actions (core -> shell) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reserve:
    """`ReserveBinding` (RFC 5189 PRR): public port(s) for one inside media endpoint."""

    agent: str
    request: BindingRequest
    token: int
    deadline: float


@dataclass(frozen=True, slots=True)
class Enable:
    """`EnableRule` (RFC 5189 PER): the pinhole of a binding, restricted to one peer."""

    agent: str
    request: RuleRequest
    token: int
    deadline: float


@dataclass(frozen=True, slots=True)
class ChangeLifetime:
    """`ChangeLifetime`: 0 removes one rule or frees one binding (RFC 5189 PLC)."""

    agent: str
    request: LifetimeChange
    token: int
    deadline: float


@dataclass(frozen=True, slots=True)
class ChangeGroup:
    """`ChangeGroupLifetime` with a positive lifetime: the session was refreshed
    (RFC 4028 §10) and the whole call lives `interval + slack` longer (RFC 5189 GLC)."""

    agent: str
    request: GroupLifetimeChange
    token: int
    deadline: float


@dataclass(frozen=True, slots=True)
class Release:
    """The call is over: read the group's bindings and rules (with their counters, for
    the CDR), then `ChangeGroupLifetime(group, 0)`. The result is a `ReleaseReport`."""

    agent: str
    group_id: str
    token: int
    deadline: float
    idempotency_key: str


AgentAction = Reserve | Enable | ChangeLifetime | ChangeGroup | Release


def stamped(action: AgentAction, token: int, deadline: float) -> AgentAction:
    """`action` with a new token and deadline (what `dataclasses.replace` would give,
    without its interpreted field walk on every operation of every call)."""
    if isinstance(action, Reserve):
        return Reserve(action.agent, action.request, token, deadline)
    if isinstance(action, Enable):
        return Enable(action.agent, action.request, token, deadline)
    if isinstance(action, ChangeLifetime):
        return ChangeLifetime(action.agent, action.request, token, deadline)
    if isinstance(action, ChangeGroup):
        return ChangeGroup(action.agent, action.request, token, deadline)
    return Release(action.agent, action.group_id, token, deadline, action.idempotency_key)


# ---- results (shell -> core) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleaseReport:
    """What a group held when it was released: bindings and rules with their counters."""

    bindings: tuple[Binding, ...]
    rules: tuple[Rule, ...]


ResultValue = Binding | Rule | LifetimeGrant | GroupLifetimeGrant | ReleaseReport


@dataclass(frozen=True, slots=True)
class Done:
    token: int
    value: ResultValue


@dataclass(frozen=True, slots=True)
class Failed:
    token: int
    error: FcpError


AgentResult = Done | Failed


# ---- outcomes (core -> proxy) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """Send `data` (the message as rewritten) instead of what was given."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Parked:
    """The message waits for its bindings; `take_ready()` gives it back under `ticket`."""

    ticket: int


@dataclass(frozen=True, slots=True)
class Reject:
    """Do not forward. For a request: answer it with `status` (488 forged SDP, 503 no
    agent, 500 an inside address could not be hidden). For a response: see the seam
    notes in `alg.media` (the proxy answers the request's sender instead)."""

    status: int
    reason: str


Outcome = Forward | Parked | Reject


@dataclass(frozen=True, slots=True)
class Ready:
    """A parked message, now rewritten: send `data`."""

    ticket: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """A parked message that cannot be anchored: never send it; handle like `Reject`."""

    ticket: int
    status: int
    reason: str


Resolution = Ready | Refused


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """Media data for a call's CDR (`CallRecorder.set_media(call_id, media)`)."""

    call_id: str
    media: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class OwnRequest:
    """A request the ALG sends itself, on `side`, to `next_hop` (a SIP URI: the first
    Route, else the Request-URI): the ACK and BYE that end a dialog it cannot anchor
    (`alg.media.teardown`). The proxy sends an ACK once and a BYE in a client
    transaction of its own, whose responses it absorbs."""

    side: str
    method: str
    data: bytes
    next_hop: str
