"""Typed values validate themselves; proto conversion round-trips and names bad fields."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fcp import convert
from fcp.errors import FcpError, Reason
from fcp.status import decode_error, encode_detail, status_code
from fcp.types import (
    BatchRequest,
    Binding,
    BindingKind,
    BindingRequest,
    Counters,
    Direction,
    Endpoint,
    ExternalAddress,
    GroupLifetimeChange,
    IpVersion,
    LifetimeChange,
    LifetimeTarget,
    PortUsage,
    RuleRequest,
    TransportProtocol,
)
from fcp.v1 import fcp_pb2 as pb

UA = ipaddress.IPv4Address("10.77.0.10")
PEER6 = ipaddress.IPv6Address("2001:db8::99")


def malformed_field(build: object) -> str | None:
    with pytest.raises(FcpError) as info:
        build()  # type: ignore[operator]
    assert info.value.reason is Reason.MALFORMED
    return info.value.field


def request(**overrides: object) -> BindingRequest:
    fields: dict[str, object] = {
        "group_id": "call-1",
        "internal": Endpoint(UA, 40000),
        "protocol": TransportProtocol.UDP,
        "kind": BindingKind.SINGLE,
        "lifetime_seconds": 60,
    }
    fields.update(overrides)
    return BindingRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"group_id": ""}, "group_id"),
        ({"group_id": "has space"}, "group_id"),
        ({"group_id": "x" * 129}, "group_id"),
        ({"lifetime_seconds": -1}, "lifetime_seconds"),
        ({"lifetime_seconds": 0}, "lifetime_seconds"),
        ({"kind": BindingKind.BLOCK, "block_size": 0}, "block_size"),
        ({"block_size": 4}, "block_size"),
        ({"kind": BindingKind.RTP_PAIR, "internal": Endpoint(UA, 65535)}, "internal.port"),
        ({"suggested_external_port": 0}, "suggested_external_port"),
        ({"prefer_failure": True}, "prefer_failure"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_binding_request_validates(overrides: dict[str, object], field: str) -> None:
    assert malformed_field(lambda: request(**overrides)) == field


def test_other_requests_validate() -> None:
    assert malformed_field(lambda: Endpoint(UA, 0)) == "port"
    rule = RuleRequest("b-1", Direction.INBOUND, PEER6, 60)
    assert rule.remote_port is None
    assert malformed_field(lambda: RuleRequest("b-1", Direction.INBOUND, PEER6, 60, 0)) == (
        "remote_port"
    )
    assert malformed_field(lambda: LifetimeChange(LifetimeTarget.RULE, "", 5)) == "rule_id"
    assert malformed_field(lambda: GroupLifetimeChange("g", -1)) == "lifetime_seconds"
    assert malformed_field(lambda: BatchRequest(())) == "operations"
    keyed = request(idempotency_key="k")
    assert malformed_field(lambda: BatchRequest((request(), keyed))) == (
        "operations[1].idempotency_key"
    )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: setattr(m, "remote_address", "not-an-ip"), "remote_address"),
        (lambda m: setattr(m, "remote_address", "fe80::1%eth0"), "remote_address"),
        (lambda m: setattr(m, "remote_address", ""), "remote_address"),
        (lambda m: setattr(m, "direction", 0), "direction"),
        (lambda m: setattr(m, "direction", 42), "direction"),
        (lambda m: setattr(m, "max_idle_seconds", -3), "max_idle_seconds"),
        (lambda m: setattr(m, "remote_port", 65536), "remote_port"),
    ],
)
def test_rule_request_from_proto_names_field(mutate: object, field: str) -> None:
    message = pb.EnableRuleRequest(
        binding_id="b-1",
        direction=pb.DIRECTION_INBOUND,
        remote_address="198.51.100.1",
        lifetime_seconds=30,
    )
    mutate(message)  # type: ignore[operator]
    assert malformed_field(lambda: convert.rule_request_from_proto(message)) == field


def test_batch_from_proto_locates_the_bad_operation() -> None:
    message = pb.BatchRequest()
    message.operations.add().change_group_lifetime.CopyFrom(
        pb.ChangeGroupLifetimeRequest(group_id="g", lifetime_seconds=0)
    )
    bad = message.operations.add().reserve_binding
    bad.CopyFrom(convert.binding_request_to_proto(request()))
    bad.internal.port = 0
    with pytest.raises(FcpError) as info:
        convert.batch_from_proto(message)
    assert info.value.field == "operations[1].reserve_binding.internal.port"
    assert info.value.operation_index == 1
    message.operations.add()  # empty oneof
    del message.operations[1]
    with pytest.raises(FcpError) as info:
        convert.batch_from_proto(message)
    assert info.value.field == "operations[1]"


def test_change_lifetime_needs_a_target() -> None:
    assert (
        malformed_field(
            lambda: convert.lifetime_change_from_proto(pb.ChangeLifetimeRequest(lifetime_seconds=1))
        )
        == "target"
    )


ports = st.integers(1, 65000)


@given(
    port=ports,
    kind=st.sampled_from(list(BindingKind)),
    size=st.integers(1, 16),
    lifetime=st.integers(1, 10**6),
    suggested=st.none() | ports,
    key=st.none() | st.text("abcdef0123456789", min_size=1, max_size=40),
    v6=st.booleans(),
)
def test_binding_request_round_trips(
    port: int,
    kind: BindingKind,
    size: int,
    lifetime: int,
    suggested: int | None,
    key: str | None,
    v6: bool,
) -> None:
    address = PEER6 if v6 else UA
    original = request(
        internal=Endpoint(address, port),
        kind=kind,
        block_size=size if kind is BindingKind.BLOCK else 0,
        lifetime_seconds=lifetime,
        suggested_external_port=suggested,
        idempotency_key=key,
    )
    wire = convert.binding_request_to_proto(original).SerializeToString()
    parsed = pb.ReserveBindingRequest.FromString(wire)
    assert convert.binding_request_from_proto(parsed) == original


def test_results_round_trip() -> None:
    binding = Binding(
        "b-1",
        "g",
        Endpoint(UA, 4000),
        TransportProtocol.UDP,
        BindingKind.RTP_PAIR,
        ipaddress.IPv4Address("203.0.113.10"),
        (20000, 20001),
        60,
        1_700_000_060.25,
        "v4",
        Counters(3, 300, 1_700_000_001.5),
    )
    assert convert.binding_from_proto(convert.binding_to_proto(binding)) == binding
    rule = RuleRequest("b-1", Direction.OUTBOUND, PEER6, 60, remote_port=None)
    assert convert.rule_request_from_proto(convert.rule_request_to_proto(rule)) == rule


@pytest.mark.parametrize("reason", list(Reason))
def test_error_detail_round_trips_for_every_reason(reason: Reason) -> None:
    error = FcpError(reason, "why", 2.5, field="f", operation_index=3, epoch=77)
    trailer = [("grpc-status-details-bin", encode_detail(error))]
    back = decode_error(status_code(reason), str(error), trailer)
    assert (back.reason, back.message, back.retry_after, back.field) == (reason, "why", 2.5, "f")
    assert (back.operation_index, back.epoch) == (3, 77)


def test_status_without_detail_falls_back_on_code() -> None:
    import grpc

    error = decode_error(grpc.StatusCode.UNAVAILABLE, "connection refused", [])
    assert error.reason is Reason.NETWORK_FAILURE
    garbage = decode_error(grpc.StatusCode.INTERNAL, "x", [("grpc-status-details-bin", b"\xff")])
    assert garbage.reason is Reason.INTERNAL


def test_binding_ref_round_trips_and_is_optional() -> None:
    by_ref = RuleRequest(
        "", Direction.INBOUND, ipaddress.IPv4Address("198.51.100.1"), 60, binding_ref=0
    )
    message = convert.rule_request_to_proto(by_ref)
    assert message.HasField("binding_ref") and message.binding_ref == 0
    assert convert.rule_request_from_proto(message) == by_ref
    plain = convert.rule_request_to_proto(replace(by_ref, binding_id="b-1", binding_ref=None))
    assert not plain.HasField("binding_ref")


def test_external_address_round_trips_with_its_port_usage() -> None:
    address = ExternalAddress(
        ipaddress.IPv4Address("203.0.113.10"),
        "v4",
        IpVersion.V4,
        (
            PortUsage(TransportProtocol.UDP, 20000, 1500, 240),
            PortUsage(TransportProtocol.TCP, 20000, 0, 0),
        ),
    )
    wire = convert.external_address_to_proto(address).SerializeToString()
    back = convert.external_address_from_proto(pb.ExternalAddress.FromString(wire))
    assert back == address
    assert back.port_usage[0].free == 18260


def test_port_usage_beyond_the_range_is_refused() -> None:
    message = pb.ExternalAddress(address="203.0.113.10", pool="v4", ip_version=pb.IP_VERSION_V4)
    message.port_usage.add(protocol=pb.TRANSPORT_PROTOCOL_UDP, total=10, bound=8, quarantined=3)
    with pytest.raises(FcpError) as info:
        convert.external_address_from_proto(message)
    assert info.value.reason is Reason.MALFORMED
    message.port_usage[0].protocol = pb.TRANSPORT_PROTOCOL_UNSPECIFIED
    message.port_usage[0].quarantined = 0
    with pytest.raises(FcpError):
        convert.external_address_from_proto(message)
