"""Protobuf ⇄ typed FCP values, with validation.

`*_from_proto` functions parse what came off the wire and raise `FcpError(MALFORMED)` naming
the proto field path (`internal.port`, `operations[2].enable_rule.remote_address`, ...);
`*_to_proto` functions build messages from values that already validated themselves.
proto3 scalars have no presence, so 0 / "" mean "absent" where the proto says so (no
suggested port, no idle timeout, no idempotency key); `remote_port` uses explicit presence
because 0 would otherwise be indistinguishable from "latch" (RFC 7362).

This module holds the messages; the enums and scalars they are made of are in
`fcp.convert_scalars`, whose public names are importable from here too.
"""

from __future__ import annotations

from fcp import convert_scalars
from fcp.convert_scalars import (
    address_text,
    enum_from_proto,
    optional_address,
    optional_str,
    within,
)
from fcp.errors import FcpError, malformed
from fcp.types import (
    BatchOperation,
    BatchRequest,
    BatchResult,
    Binding,
    BindingRequest,
    Capabilities,
    Counters,
    Endpoint,
    Event,
    ExternalAddress,
    Group,
    GroupLifetimeChange,
    GroupLifetimeGrant,
    LifetimeChange,
    LifetimeGrant,
    LifetimeTarget,
    Pool,
    PortUsage,
    Rule,
    RuleRequest,
    Session,
    SessionRequest,
)
from fcp.v1 import fcp_pb2 as pb

# The scalars' public names, where they were before the split (mypy --strict does not
# re-export a plain import).
IP_VERSIONS = convert_scalars.IP_VERSIONS
PROTOCOLS = convert_scalars.PROTOCOLS
KINDS = convert_scalars.KINDS
DIRECTIONS = convert_scalars.DIRECTIONS
EVENT_KINDS = convert_scalars.EVENT_KINDS
REASONS = convert_scalars.REASONS
reason_from_proto = convert_scalars.reason_from_proto
address_from_proto = convert_scalars.address_from_proto
timestamp_to_proto = convert_scalars.timestamp_to_proto
timestamp_from_proto = convert_scalars.timestamp_from_proto


# ---- session --------------------------------------------------------------------------


def session_request_to_proto(request: SessionRequest) -> pb.OpenSessionRequest:
    return pb.OpenSessionRequest(
        incarnation_id=request.incarnation_id,
        release_previous_state=request.release_previous_state,
    )


def session_request_from_proto(message: pb.OpenSessionRequest) -> SessionRequest:
    return SessionRequest(message.incarnation_id, message.release_previous_state)


def pool_to_proto(pool: Pool) -> pb.Pool:
    return pb.Pool(
        name=pool.name,
        ip_version=IP_VERSIONS[pool.ip_version],
        external_addresses=[str(a) for a in pool.external_addresses],
        port_min=pool.port_min,
        port_max=pool.port_max,
    )


def pool_from_proto(message: pb.Pool) -> Pool:
    return Pool(
        name=message.name,
        ip_version=enum_from_proto("ip_version", message.ip_version, IP_VERSIONS),
        external_addresses=tuple(
            address_from_proto("external_addresses", a) for a in message.external_addresses
        ),
        port_min=message.port_min,
        port_max=message.port_max,
    )


def _pool_at(index: int, message: pb.Pool) -> Pool:
    return within(f"pools[{index}]", lambda: pool_from_proto(message))


def capabilities_to_proto(caps: Capabilities) -> pb.Capabilities:
    return pb.Capabilities(
        ip_versions=[IP_VERSIONS[v] for v in caps.ip_versions],
        pools=[pool_to_proto(p) for p in caps.pools],
        rtp_pair=caps.rtp_pair,
        rtcp_mux=caps.rtcp_mux,
        block=caps.block,
        max_block_size=caps.max_block_size,
        max_lifetime_seconds=caps.max_lifetime_seconds,
        latching=caps.latching,
    )


def capabilities_from_proto(message: pb.Capabilities) -> Capabilities:
    return Capabilities(
        ip_versions=tuple(
            enum_from_proto("ip_versions", v, IP_VERSIONS) for v in message.ip_versions
        ),
        pools=tuple(_pool_at(i, p) for i, p in enumerate(message.pools)),
        rtp_pair=message.rtp_pair,
        rtcp_mux=message.rtcp_mux,
        block=message.block,
        max_block_size=message.max_block_size,
        max_lifetime_seconds=message.max_lifetime_seconds,
        latching=message.latching,
    )


def session_to_proto(session: Session) -> pb.OpenSessionResponse:
    return pb.OpenSessionResponse(
        capabilities=capabilities_to_proto(session.capabilities),
        epoch=session.epoch,
        owner=session.owner,
        incarnation_id=session.incarnation_id,
        previous_incarnation_id=session.previous_incarnation_id or "",
    )


def session_from_proto(message: pb.OpenSessionResponse) -> Session:
    return Session(
        capabilities=capabilities_from_proto(message.capabilities),
        epoch=message.epoch,
        owner=message.owner,
        incarnation_id=message.incarnation_id,
        previous_incarnation_id=optional_str(message.previous_incarnation_id),
    )


# ---- common ---------------------------------------------------------------------------


def endpoint_to_proto(endpoint: Endpoint) -> pb.Endpoint:
    return pb.Endpoint(address=address_text(endpoint.address), port=endpoint.port)


def endpoint_from_proto(field: str, message: pb.Endpoint) -> Endpoint:
    address = address_from_proto(f"{field}.address", message.address)
    return within(field, lambda: Endpoint(address, message.port))


def counters_to_proto(counters: Counters) -> pb.Counters:
    message = pb.Counters(packets=counters.packets, bytes=counters.bytes)
    if counters.last_seen is not None:
        message.last_seen.CopyFrom(timestamp_to_proto(counters.last_seen))
    return message


def counters_from_proto(message: pb.Counters) -> Counters:
    last_seen = timestamp_from_proto(message.last_seen) if message.HasField("last_seen") else None
    return Counters(message.packets, message.bytes, last_seen)


# ---- bindings -------------------------------------------------------------------------


def binding_request_to_proto(request: BindingRequest) -> pb.ReserveBindingRequest:
    return pb.ReserveBindingRequest(
        group_id=request.group_id,
        internal=endpoint_to_proto(request.internal),
        protocol=PROTOCOLS[request.protocol],
        kind=KINDS[request.kind],
        block_size=request.block_size,
        suggested_external_port=request.suggested_external_port or 0,
        prefer_failure=request.prefer_failure,
        lifetime_seconds=request.lifetime_seconds,
        idempotency_key=request.idempotency_key or "",
        pool=request.pool or "",
    )


def binding_request_from_proto(message: pb.ReserveBindingRequest) -> BindingRequest:
    if not message.HasField("internal"):
        raise malformed("internal", "must be set")
    return BindingRequest(
        group_id=message.group_id,
        internal=endpoint_from_proto("internal", message.internal),
        protocol=enum_from_proto("protocol", message.protocol, PROTOCOLS),
        kind=enum_from_proto("kind", message.kind, KINDS),
        lifetime_seconds=message.lifetime_seconds,
        block_size=message.block_size,
        suggested_external_port=message.suggested_external_port or None,
        prefer_failure=message.prefer_failure,
        idempotency_key=optional_str(message.idempotency_key),
        pool=optional_str(message.pool),
    )


def binding_to_proto(binding: Binding) -> pb.Binding:
    return pb.Binding(
        binding_id=binding.binding_id,
        group_id=binding.group_id,
        internal=endpoint_to_proto(binding.internal),
        protocol=PROTOCOLS[binding.protocol],
        kind=KINDS[binding.kind],
        external_address=address_text(binding.external_address),
        external_ports=list(binding.external_ports),
        lifetime_seconds=binding.lifetime_seconds,
        expires_at=timestamp_to_proto(binding.expires_at),
        counters=counters_to_proto(binding.counters),
        pool=binding.pool,
    )


def binding_from_proto(message: pb.Binding) -> Binding:
    return Binding(
        binding_id=message.binding_id,
        group_id=message.group_id,
        internal=endpoint_from_proto("internal", message.internal),
        protocol=enum_from_proto("protocol", message.protocol, PROTOCOLS),
        kind=enum_from_proto("kind", message.kind, KINDS),
        external_address=address_from_proto("external_address", message.external_address),
        external_ports=tuple(message.external_ports),
        lifetime_seconds=message.lifetime_seconds,
        expires_at=timestamp_from_proto(message.expires_at),
        pool=message.pool,
        counters=counters_from_proto(message.counters),
    )


# ---- rules ----------------------------------------------------------------------------


def rule_request_to_proto(request: RuleRequest) -> pb.EnableRuleRequest:
    message = pb.EnableRuleRequest(
        binding_id=request.binding_id,
        direction=DIRECTIONS[request.direction],
        remote_address=address_text(request.remote_address),
        max_idle_seconds=request.max_idle_seconds or 0,
        lifetime_seconds=request.lifetime_seconds,
        idempotency_key=request.idempotency_key or "",
    )
    if request.remote_port is not None:
        message.remote_port = request.remote_port
    if request.binding_ref is not None:
        message.binding_ref = request.binding_ref
    return message


def rule_request_from_proto(message: pb.EnableRuleRequest) -> RuleRequest:
    if message.max_idle_seconds < 0:
        raise malformed("max_idle_seconds", "must not be negative")
    return RuleRequest(
        binding_id=message.binding_id,
        direction=enum_from_proto("direction", message.direction, DIRECTIONS),
        remote_address=address_from_proto("remote_address", message.remote_address),
        lifetime_seconds=message.lifetime_seconds,
        remote_port=message.remote_port if message.HasField("remote_port") else None,
        max_idle_seconds=message.max_idle_seconds or None,
        idempotency_key=optional_str(message.idempotency_key),
        binding_ref=message.binding_ref if message.HasField("binding_ref") else None,
    )


def rule_to_proto(rule: Rule) -> pb.Rule:
    message = pb.Rule(
        rule_id=rule.rule_id,
        binding_id=rule.binding_id,
        group_id=rule.group_id,
        direction=DIRECTIONS[rule.direction],
        remote_address=address_text(rule.remote_address),
        max_idle_seconds=rule.max_idle_seconds or 0,
        lifetime_seconds=rule.lifetime_seconds,
        expires_at=timestamp_to_proto(rule.expires_at),
        counters=counters_to_proto(rule.counters),
    )
    if rule.remote_port is not None:
        message.remote_port = rule.remote_port
    return message


def rule_from_proto(message: pb.Rule) -> Rule:
    return Rule(
        rule_id=message.rule_id,
        binding_id=message.binding_id,
        group_id=message.group_id,
        direction=enum_from_proto("direction", message.direction, DIRECTIONS),
        remote_address=address_from_proto("remote_address", message.remote_address),
        remote_port=message.remote_port if message.HasField("remote_port") else None,
        max_idle_seconds=message.max_idle_seconds or None,
        lifetime_seconds=message.lifetime_seconds,
        expires_at=timestamp_from_proto(message.expires_at),
        counters=counters_from_proto(message.counters),
    )


# ---- lifetimes ------------------------------------------------------------------------


def lifetime_change_to_proto(change: LifetimeChange) -> pb.ChangeLifetimeRequest:
    message = pb.ChangeLifetimeRequest(
        lifetime_seconds=change.lifetime_seconds,
        idempotency_key=change.idempotency_key or "",
    )
    if change.target is LifetimeTarget.RULE:
        message.rule_id = change.target_id
    else:
        message.binding_id = change.target_id
    return message


def lifetime_change_from_proto(message: pb.ChangeLifetimeRequest) -> LifetimeChange:
    which = message.WhichOneof("target")
    if which is None:
        raise malformed("target", "set rule_id or binding_id")
    if which == "rule_id":
        target, target_id = LifetimeTarget.RULE, message.rule_id
    else:
        target, target_id = LifetimeTarget.BINDING, message.binding_id
    return LifetimeChange(
        target, target_id, message.lifetime_seconds, optional_str(message.idempotency_key)
    )


def lifetime_grant_to_proto(grant: LifetimeGrant) -> pb.ChangeLifetimeResponse:
    message = pb.ChangeLifetimeResponse(lifetime_seconds=grant.lifetime_seconds)
    if grant.expires_at is not None:
        message.expires_at.CopyFrom(timestamp_to_proto(grant.expires_at))
    return message


def lifetime_grant_from_proto(message: pb.ChangeLifetimeResponse) -> LifetimeGrant:
    expires = timestamp_from_proto(message.expires_at) if message.HasField("expires_at") else None
    return LifetimeGrant(message.lifetime_seconds, expires)


def group_change_to_proto(change: GroupLifetimeChange) -> pb.ChangeGroupLifetimeRequest:
    return pb.ChangeGroupLifetimeRequest(
        group_id=change.group_id,
        lifetime_seconds=change.lifetime_seconds,
        idempotency_key=change.idempotency_key or "",
    )


def group_change_from_proto(message: pb.ChangeGroupLifetimeRequest) -> GroupLifetimeChange:
    return GroupLifetimeChange(
        message.group_id, message.lifetime_seconds, optional_str(message.idempotency_key)
    )


def group_grant_to_proto(grant: GroupLifetimeGrant) -> pb.ChangeGroupLifetimeResponse:
    message = pb.ChangeGroupLifetimeResponse(
        lifetime_seconds=grant.lifetime_seconds,
        bindings=grant.bindings,
        rules=grant.rules,
        released_bindings=[binding_to_proto(b) for b in grant.released_bindings],
        released_rules=[rule_to_proto(r) for r in grant.released_rules],
    )
    if grant.expires_at is not None:
        message.expires_at.CopyFrom(timestamp_to_proto(grant.expires_at))
    return message


def group_grant_from_proto(message: pb.ChangeGroupLifetimeResponse) -> GroupLifetimeGrant:
    expires = timestamp_from_proto(message.expires_at) if message.HasField("expires_at") else None
    return GroupLifetimeGrant(
        message.lifetime_seconds,
        expires,
        message.bindings,
        message.rules,
        tuple(binding_from_proto(b) for b in message.released_bindings),
        tuple(rule_from_proto(r) for r in message.released_rules),
    )


def group_to_proto(group: Group) -> pb.Group:
    message = pb.Group(
        group_id=group.group_id,
        external_address=str(group.external_address or ""),
        binding_ids=list(group.binding_ids),
        rule_ids=list(group.rule_ids),
        counters=counters_to_proto(group.counters),
    )
    if group.expires_at is not None:
        message.expires_at.CopyFrom(timestamp_to_proto(group.expires_at))
    return message


def group_from_proto(message: pb.Group) -> Group:
    expires = timestamp_from_proto(message.expires_at) if message.HasField("expires_at") else None
    return Group(
        group_id=message.group_id,
        external_address=optional_address("external_address", message.external_address),
        binding_ids=tuple(message.binding_ids),
        rule_ids=tuple(message.rule_ids),
        counters=counters_from_proto(message.counters),
        expires_at=expires,
    )


# ---- batch ----------------------------------------------------------------------------


def batch_to_proto(batch: BatchRequest) -> pb.BatchRequest:
    message = pb.BatchRequest(idempotency_key=batch.idempotency_key or "")
    for operation in batch.operations:
        item = message.operations.add()
        if isinstance(operation, BindingRequest):
            item.reserve_binding.CopyFrom(binding_request_to_proto(operation))
        elif isinstance(operation, RuleRequest):
            item.enable_rule.CopyFrom(rule_request_to_proto(operation))
        elif isinstance(operation, LifetimeChange):
            item.change_lifetime.CopyFrom(lifetime_change_to_proto(operation))
        else:
            item.change_group_lifetime.CopyFrom(group_change_to_proto(operation))
    return message


def _operation_from_proto(index: int, item: pb.BatchOperation) -> BatchOperation:
    which = item.WhichOneof("operation")
    prefix = f"operations[{index}].{which}"
    try:
        if which == "reserve_binding":
            return within(prefix, lambda: binding_request_from_proto(item.reserve_binding))
        if which == "enable_rule":
            return within(prefix, lambda: rule_request_from_proto(item.enable_rule))
        if which == "change_lifetime":
            return within(prefix, lambda: lifetime_change_from_proto(item.change_lifetime))
        if which == "change_group_lifetime":
            return within(prefix, lambda: group_change_from_proto(item.change_group_lifetime))
        raise malformed(f"operations[{index}]", "no operation set")
    except FcpError as exc:
        raise exc.with_operation_index(index) from None


def batch_from_proto(message: pb.BatchRequest) -> BatchRequest:
    operations = tuple(_operation_from_proto(i, op) for i, op in enumerate(message.operations))
    return BatchRequest(operations, optional_str(message.idempotency_key))


def batch_result_to_proto(result: BatchResult) -> pb.BatchResult:
    if isinstance(result, Binding):
        return pb.BatchResult(
            reserve_binding=pb.ReserveBindingResponse(binding=binding_to_proto(result))
        )
    if isinstance(result, Rule):
        return pb.BatchResult(enable_rule=pb.EnableRuleResponse(rule=rule_to_proto(result)))
    if isinstance(result, LifetimeGrant):
        return pb.BatchResult(change_lifetime=lifetime_grant_to_proto(result))
    return pb.BatchResult(change_group_lifetime=group_grant_to_proto(result))


def batch_result_from_proto(message: pb.BatchResult) -> BatchResult:
    which = message.WhichOneof("result")
    if which == "reserve_binding":
        return binding_from_proto(message.reserve_binding.binding)
    if which == "enable_rule":
        return rule_from_proto(message.enable_rule.rule)
    if which == "change_lifetime":
        return lifetime_grant_from_proto(message.change_lifetime)
    if which == "change_group_lifetime":
        return group_grant_from_proto(message.change_group_lifetime)
    raise malformed("results", "empty batch result")


# ---- addresses and events -------------------------------------------------------------


def external_address_to_proto(address: ExternalAddress) -> pb.ExternalAddress:
    return pb.ExternalAddress(
        address=str(address.address),
        pool=address.pool,
        ip_version=IP_VERSIONS[address.ip_version],
        port_usage=[
            pb.PortUsage(
                protocol=PROTOCOLS[u.protocol],
                total=u.total,
                bound=u.bound,
                quarantined=u.quarantined,
            )
            for u in address.port_usage
        ],
    )


def external_address_from_proto(message: pb.ExternalAddress) -> ExternalAddress:
    return ExternalAddress(
        address=address_from_proto("address", message.address),
        pool=message.pool,
        ip_version=enum_from_proto("ip_version", message.ip_version, IP_VERSIONS),
        port_usage=tuple(
            PortUsage(
                enum_from_proto("port_usage.protocol", u.protocol, PROTOCOLS),
                u.total,
                u.bound,
                u.quarantined,
            )
            for u in message.port_usage
        ),
    )


def event_to_proto(event: Event) -> pb.Event:
    return pb.Event(
        sequence=event.sequence,
        kind=EVENT_KINDS[event.kind],
        time=timestamp_to_proto(event.time),
        epoch=event.epoch,
        group_id=event.group_id or "",
        binding_id=event.binding_id or "",
        rule_id=event.rule_id or "",
        pool=event.pool or "",
        old_address=str(event.old_address or ""),
        new_address=str(event.new_address or ""),
        message=event.message,
    )


def event_from_proto(message: pb.Event) -> Event:
    return Event(
        sequence=message.sequence,
        kind=enum_from_proto("kind", message.kind, EVENT_KINDS),
        time=timestamp_from_proto(message.time),
        epoch=message.epoch,
        group_id=optional_str(message.group_id),
        binding_id=optional_str(message.binding_id),
        rule_id=optional_str(message.rule_id),
        pool=optional_str(message.pool),
        old_address=optional_address("old_address", message.old_address),
        new_address=optional_address("new_address", message.new_address),
        message=message.message,
    )
