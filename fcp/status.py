"""The one place where FCP reasons meet gRPC status codes.

The server (`fcp.server`) turns an `FcpError` into a status code plus the richer error model
trailer `grpc-status-details-bin`: a serialized `fcp.v1.RpcStatus` (wire-identical to
`google.rpc.Status`) whose single detail is an `Any` holding an `FcpErrorDetail`. The client
(`fcp.client`) does the reverse; when no detail came (a transport failure, a proxy, a gRPC
library error) it falls back on the status code alone (`FALLBACK_REASONS`).

    reason                   gRPC status          why
    NOT_AUTHORIZED           PERMISSION_DENIED    identity known but not allowed
    MALFORMED                INVALID_ARGUMENT     request does not validate; detail names field
    UNSUPPORTED              UNIMPLEMENTED        valid, but not offered by this agent
    NO_PORTS                 RESOURCE_EXHAUSTED   pool full (retry_after: next quarantine end)
    NO_ADDRESSES             RESOURCE_EXHAUSTED   no external address for the IP version/pool
    QUOTA                    RESOURCE_EXHAUSTED   per-owner / per-group limit
    CANNOT_PROVIDE_EXTERNAL  FAILED_PRECONDITION  suggested port taken and prefer_failure set
    NOT_FOUND                NOT_FOUND            unknown id, or another owner's (invisible)
    CONFLICT                 ALREADY_EXISTS       key reused for another request, endpoint bound
    STALE_EPOCH              FAILED_PRECONDITION  agent restarted: reopen the session
    NETWORK_FAILURE          UNAVAILABLE          agent draining / kernel unreachable: retry
    INTERNAL                 INTERNAL             bug in the agent; the message says nothing
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError

from fcp.convert_scalars import REASONS, reason_from_proto
from fcp.errors import FcpError, Reason
from fcp.v1 import fcp_pb2 as pb

STATUS_DETAILS_KEY = "grpc-status-details-bin"
EPOCH_METADATA_KEY = "fcp-epoch"

STATUS_CODES: Mapping[Reason, grpc.StatusCode] = {
    Reason.NOT_AUTHORIZED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    Reason.NO_PORTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.NO_ADDRESSES: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.QUOTA: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.CANNOT_PROVIDE_EXTERNAL: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    Reason.STALE_EPOCH: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.NETWORK_FAILURE: grpc.StatusCode.UNAVAILABLE,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}

# A status without an FcpErrorDetail did not come from FCP's server code: read the code.
FALLBACK_REASONS: Mapping[grpc.StatusCode, Reason] = {
    grpc.StatusCode.PERMISSION_DENIED: Reason.NOT_AUTHORIZED,
    grpc.StatusCode.UNAUTHENTICATED: Reason.NOT_AUTHORIZED,
    grpc.StatusCode.INVALID_ARGUMENT: Reason.MALFORMED,
    grpc.StatusCode.UNIMPLEMENTED: Reason.UNSUPPORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.QUOTA,
    grpc.StatusCode.NOT_FOUND: Reason.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Reason.CONFLICT,
    grpc.StatusCode.UNAVAILABLE: Reason.NETWORK_FAILURE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Reason.NETWORK_FAILURE,
    grpc.StatusCode.CANCELLED: Reason.NETWORK_FAILURE,
}

Metadata = Sequence[tuple[str, str | bytes]]


def status_code(reason: Reason) -> grpc.StatusCode:
    return STATUS_CODES[reason]


def rpc_status(error: FcpError, epoch: int | None = None) -> pb.RpcStatus:
    """`error` as the richer error model's status: code, message and one FcpErrorDetail. A
    unary call carries it serialized in its trailer; an Exchange response carries it as is."""
    detail = pb.FcpErrorDetail(
        reason=REASONS[error.reason],
        message=error.message,
        field=error.field or "",
        epoch=error.epoch if error.epoch is not None else (epoch or 0),
    )
    if error.retry_after is not None:
        detail.retry_after.CopyFrom(_duration(error.retry_after))
    if error.operation_index is not None:
        detail.operation_index = error.operation_index
    packed = any_pb2.Any()
    packed.Pack(detail)
    code = STATUS_CODES[error.reason]
    return pb.RpcStatus(code=code.value[0], message=error.message, details=[packed])


def encode_detail(error: FcpError, epoch: int | None = None) -> bytes:
    """The `grpc-status-details-bin` value for `error`."""
    return rpc_status(error, epoch).SerializeToString()


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=max(0.0, seconds)))
    return duration


def decode_error(
    code: grpc.StatusCode | None, details: str | None, trailing: Metadata | None
) -> FcpError:
    """Rebuild the `FcpError` a server sent, or the closest one for a bare status."""
    for key, value in trailing or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = pb.RpcStatus()
        try:
            status.ParseFromString(value)
        except DecodeError:
            break
        detail = _detail(status)
        if detail is None:
            break
        return _error_of(detail, details)
    return _bare_error(code, details)


def error_from_status(status: pb.RpcStatus) -> tuple[grpc.StatusCode | None, FcpError]:
    """An Exchange response's error: its status code and the `FcpError` it carries."""
    code = CODES_BY_NUMBER.get(status.code)
    detail = _detail(status)
    if detail is None:
        return code, _bare_error(code, status.message)
    return code, _error_of(detail, status.message)


CODES_BY_NUMBER: Mapping[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def _error_of(detail: pb.FcpErrorDetail, details: str | None) -> FcpError:
    return FcpError(
        reason_from_proto(detail.reason),
        detail.message or details or "",
        detail.retry_after.ToTimedelta().total_seconds()
        if detail.HasField("retry_after")
        else None,
        field=detail.field or None,
        operation_index=detail.operation_index if detail.HasField("operation_index") else None,
        epoch=detail.epoch or None,
    )


def _bare_error(code: grpc.StatusCode | None, details: str | None) -> FcpError:
    reason = FALLBACK_REASONS.get(code, Reason.INTERNAL) if code else Reason.INTERNAL
    name = code.name if code else "UNKNOWN"
    return FcpError(reason, f"{name}: {details or 'no details'}")


def _detail(status: pb.RpcStatus) -> pb.FcpErrorDetail | None:
    for packed in status.details:
        detail = pb.FcpErrorDetail()
        if packed.Is(pb.FcpErrorDetail.DESCRIPTOR) and packed.Unpack(detail):
            return detail
    return None
