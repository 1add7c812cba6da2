"""FCP types <-> engine ops and model, and AgentError -> FcpError. Pure functions.

Two clocks meet here: the engine counts CLOCK_MONOTONIC seconds (timers must not jump with
the wall clock), FCP speaks wall-clock seconds (RFC 5189 lifetimes are durations, but
expiry and last-seen are shown to humans). `Clock.offset` is wall - monotonic, taken
when converting, so a stepped wall clock only moves what is displayed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import ipaddress
from dataclasses import dataclass

from fcp import types as f
from fcp.errors import FcpError
from fcp.errors import Reason as FcpReason
from filter_agent import model as m
from filter_agent import ops
from filter_agent.errors import AgentError

DIRECTIONS = {
    f.Direction.INBOUND: m.Direction.INBOUND,
    f.Direction.OUTBOUND: m.Direction.OUTBOUND,
    f.Direction.BIDIRECTIONAL: m.Direction.BOTH,
}
FCP_DIRECTIONS = {v: k for k, v in DIRECTIONS.items()}

# Admin views show group ids as "<owner>/<group>": owner identities cannot contain "/"
# (fcp.certs.check_identity), so the first "/" always splits them back.
QUALIFIER = "/"


def agent_error(exc: AgentError) -> FcpError:
    """Same reason name on both sides (filter_agent.errors mirrors fcp.errors)."""
    return FcpError(FcpReason(exc.reason.value), exc.message, exc.retry_after)


@dataclass(frozen=True)
class View:
    """How objects are shown: `offset` converts engine time to wall time; `admin` views
    qualify group ids with their owner."""

    offset: float
    now: float  # engine clock
    admin: bool = False

    def group_id(self, owner: str, group: str) -> str:
        return f"{owner}{QUALIFIER}{group}" if self.admin else group

    def wall(self, t: float) -> float:
        return t + self.offset

    def remaining(self, expires_at: float) -> int:
        return max(0, round(expires_at - self.now))

    def counters(self, c: m.Counters) -> f.Counters:
        seen = None if c.last_seen is None else self.wall(c.last_seen)
        return f.Counters(c.packets, c.bytes, seen)

    def binding(self, b: m.Binding, pool: str, counters: m.Counters) -> f.Binding:
        return f.Binding(
            binding_id=b.id,
            group_id=self.group_id(b.owner, b.group),
            internal=f.Endpoint(_v4(b.internal_addr), b.internal_port),
            protocol=f.TransportProtocol(b.protocol.value),
            kind=f.BindingKind(b.kind.value),
            external_address=_v4(b.external_addr),
            external_ports=b.external_ports,
            lifetime_seconds=self.remaining(b.expires_at),
            expires_at=self.wall(b.expires_at),
            pool=pool,
            counters=self.counters(counters),
        )

    def rule(self, r: m.Rule, counters: m.Counters) -> f.Rule:
        return f.Rule(
            rule_id=r.id,
            binding_id=r.binding_id,
            group_id=self.group_id(r.owner, r.group),
            direction=FCP_DIRECTIONS[r.direction],
            remote_address=_v4(r.remote_addr),
            remote_port=r.remote_port,
            max_idle_seconds=None if r.max_idle is None else round(r.max_idle),
            lifetime_seconds=self.remaining(r.expires_at),
            expires_at=self.wall(r.expires_at),
            counters=self.counters(counters),
        )

    def group(
        self,
        owner: str,
        group: str,
        bindings: list[m.Binding],
        rules: list[m.Rule],
        counters: m.Counters,
    ) -> f.Group:
        expiries = [b.expires_at for b in bindings]
        return f.Group(
            group_id=self.group_id(owner, group),
            external_address=(_v4(bindings[0].external_addr) if bindings else None),
            binding_ids=tuple(b.id for b in bindings),
            rule_ids=tuple(r.id for r in rules),
            counters=self.counters(counters),
            expires_at=self.wall(max(expiries)) if expiries else None,
        )


def _ipv4(address: f.IPAddress, field: str) -> str:
    if address.version != 4:
        raise FcpError(FcpReason.UNSUPPORTED, "this agent has IPv4 pools only", field=field)
    return _text(address)


# ipaddress is pure Python: parsing and printing were a good part of a bulk install, and
# the same addresses recur in every call. Both directions are pure, so cached.
_text = functools.lru_cache(maxsize=8192)(str)
_v4 = functools.lru_cache(maxsize=8192)(ipaddress.IPv4Address)


def reserve_op(request: f.BindingRequest, pool: str) -> ops.ReserveBinding:
    if request.pool is not None and request.pool != pool:
        raise FcpError(FcpReason.NO_ADDRESSES, f"no pool {request.pool!r}", field="pool")
    return ops.ReserveBinding(
        group=request.group_id,
        internal_addr=_ipv4(request.internal.address, "internal.address"),
        internal_port=request.internal.port,
        protocol=m.Protocol(request.protocol.value),
        kind=m.BindingKind(request.kind.value),
        lifetime=float(request.lifetime_seconds),
        block_size=request.block_size or 1,
        suggested_port=request.suggested_external_port,
        prefer_failure=request.prefer_failure,
    )


def enable_op(request: f.RuleRequest) -> ops.EnableRule:
    return ops.EnableRule(
        binding_id=request.binding_id,
        remote_addr=_ipv4(request.remote_address, "remote_address"),
        remote_port=request.remote_port,
        direction=DIRECTIONS[request.direction],
        lifetime=float(request.lifetime_seconds),
        max_idle=None if request.max_idle_seconds is None else float(request.max_idle_seconds),
        binding_ref=request.binding_ref,
    )


def fingerprint(request: object) -> str:
    """What an idempotency key must be reused with: the request without its key, as the
    hex digest of its repr (these frozen values' repr is deterministic and survives a
    restart). A digest, not the repr itself: the agent keeps one per remembered operation,
    in memory and in the store, and a repr is ~300-500 characters.

    The key is blanked on a shallow copy rather than with `dataclasses.replace`, which
    would run the validation in `__post_init__` again (it already ran when the request was
    built): this is on every mutating call's path."""
    if getattr(request, "idempotency_key", None) is not None and hasattr(
        request, "__dataclass_fields__"
    ):
        request = copy.copy(request)
        object.__setattr__(request, "idempotency_key", None)  # a private copy, never shared
    return _digest(repr(request))


def stored_fingerprint(text: str) -> str:
    """A fingerprint read from the store: state databases written before fingerprints
    were digests hold the repr itself, which becomes its digest."""
    if len(text) == FINGERPRINT_LENGTH and all(c in _HEX for c in text):
        return text
    return _digest(text)


FINGERPRINT_LENGTH = 32  # hex digits of a 128-bit BLAKE2b digest
_HEX = frozenset("0123456789abcdef")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
