"""Requests the engine accepts, as frozen data (FCP's mutating RPCs, minus transport).

Being values, they double as idempotency fingerprints: a retry with the same key must carry
an equal request, otherwise it is a CONFLICT (PCP RFC 6887 §11.2 nonce semantics, simplified).
`now` is never part of a request; the engine takes it separately.
"""

from __future__ import annotations

from dataclasses import dataclass

from filter_agent.model import BindingKind, Direction, Protocol


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


@dataclass(frozen=True)
class ChangeLifetime:
    object_id: str  # a binding or rule id; lifetime 0 releases it
    lifetime: float


@dataclass(frozen=True)
class ChangeGroupLifetime:
    group: str  # lifetime 0 releases every binding and rule of the group
    lifetime: float


Op = ReserveBinding | EnableRule | ChangeLifetime | ChangeGroupLifetime
