"""Requests the engine accepts, as frozen data (FCP's mutating RPCs, minus transport).

Being values, they double as idempotency fingerprints: a retry with the same key must carry
an equal request, otherwise it is a CONFLICT (PCP RFC 6887 §11.2 nonce semantics, simplified).
`now` is never part of a request; the engine takes it separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from filter_agent.errors import malformed
from filter_agent.model import Binding, BindingKind, Direction, Protocol


@dataclass(frozen=True)
class ReserveBinding:
    group: str
    internal_addr: str
    internal_port: int
    protocol: Protocol = Protocol.UDP
    kind: BindingKind = BindingKind.RTP_PAIR
    lifetime: float = 3600.0
    block_size: int = 1  # ports, for BindingKind.BLOCK only
    suggested_port: int | None = None
    prefer_failure: bool = False
    idempotency_key: str | None = None


@dataclass(frozen=True)
class EnableRule:
    binding_id: str
    remote_addr: str
    remote_port: int | None
    direction: Direction = Direction.BOTH
    lifetime: float = 3600.0
    max_idle: float | None = None
    idempotency_key: str | None = None
    binding_ref: int | None = None  # in a batch: the earlier op whose binding this opens


@dataclass(frozen=True)
class ChangeLifetime:
    object_id: str  # a binding or rule id; lifetime 0 releases it
    lifetime: float


@dataclass(frozen=True)
class ChangeGroupLifetime:
    group: str  # lifetime 0 releases every binding and rule of the group
    lifetime: float


Op = ReserveBinding | EnableRule | ChangeLifetime | ChangeGroupLifetime


def resolve_ref(request: Op, requests: Sequence[Op], results: Sequence[object]) -> Op:
    """An EnableRule naming an earlier ReserveBinding of its batch by index (`binding_ref`)
    gets that binding's id; `results` are the batch's results so far."""
    if not isinstance(request, EnableRule) or request.binding_ref is None:
        return request
    index = request.binding_ref
    ref = results[index] if 0 <= index < len(results) else None
    if ref is None or not isinstance(requests[index], ReserveBinding):
        raise malformed("binding_ref must name an earlier reservation of the batch")
    assert isinstance(ref, Binding)
    return replace(request, binding_id=ref.id, binding_ref=None)
