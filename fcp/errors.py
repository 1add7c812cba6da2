"""FCP's one error tree.

A backend (the filter agent, or the in-memory test double) raises `FcpError` with a
`Reason`; the server turns it into a gRPC status plus an `FcpErrorDetail` (see
`fcp.status`); the client turns that back into the same `FcpError`. Nothing else crosses
the wire, and no caller ever sees a raw `grpc.RpcError`.

The reasons are MIDCOM's (RFC 5189 §2.2.x "failure reasons") and PCP's result codes
(RFC 6887 §7.4) folded into one list; `INTERNAL` is ours, for agent faults.
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why an FCP request failed; mirrors `fcp.v1.FcpErrorDetail.Reason` by name."""

    NOT_AUTHORIZED = "NOT_AUTHORIZED"  # identity not allowed (PCP NOT_AUTHORIZED)
    MALFORMED = "MALFORMED"  # request does not validate (PCP MALFORMED_REQUEST)
    UNSUPPORTED = "UNSUPPORTED"  # valid but not implemented here (PCP UNSUPP_OPCODE/OPTION)
    NO_PORTS = "NO_PORTS"  # pool has no free port (PCP NO_RESOURCES)
    NO_ADDRESSES = "NO_ADDRESSES"  # no external address for this IP version / pool
    QUOTA = "QUOTA"  # per-owner or per-group limit reached (PCP USER_EX_QUOTA)
    CANNOT_PROVIDE_EXTERNAL = "CANNOT_PROVIDE_EXTERNAL"  # suggested port + prefer_failure
    NOT_FOUND = "NOT_FOUND"  # unknown id, or an id owned by someone else
    CONFLICT = "CONFLICT"  # idempotency key reused for another request; endpoint taken
    STALE_EPOCH = "STALE_EPOCH"  # the agent restarted since the client's OpenSession
    NETWORK_FAILURE = "NETWORK_FAILURE"  # agent unreachable, draining, or kernel failure
    INTERNAL = "INTERNAL"  # unexpected fault in the agent; details only in its log

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed later without change."""
        return self in _RETRYABLE


_RETRYABLE = frozenset({Reason.NO_PORTS, Reason.QUOTA, Reason.NETWORK_FAILURE})


class FcpError(Exception):
    """A failed FCP operation.

    `field` names the offending request field for `MALFORMED` (proto field path, e.g.
    `internal.port`); `retry_after` is a hint in seconds; `operation_index` is the failing
    operation of a `Batch`; `epoch` is the agent's current epoch when it is known.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        retry_after: float | None = None,
        *,
        field: str | None = None,
        operation_index: int | None = None,
        epoch: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.field = field
        self.operation_index = operation_index
        self.epoch = epoch

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        return f"{self.reason.value}{where}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r}, field={self.field!r})"

    def with_operation_index(self, index: int) -> FcpError:
        """The same error, located at operation `index` of a batch."""
        return FcpError(
            self.reason,
            self.message,
            self.retry_after,
            field=self.field,
            operation_index=index,
            epoch=self.epoch,
        )


def malformed(field: str, message: str) -> FcpError:
    """A MALFORMED error naming `field` (the proto field path)."""
    return FcpError(Reason.MALFORMED, f"{field}: {message}", field=field)


def not_found(what: str, ident: str) -> FcpError:
    return FcpError(Reason.NOT_FOUND, f"no {what} {ident!r}")


class EpochChanged(FcpError):
    """The agent's epoch differs from the one this client learned: the agent restarted.

    Raised by the client instead of a plain STALE_EPOCH error. Everything the client
    believed about its bindings and rules must be re-checked (PCP §8.5): open a new session,
    then list or re-create.
    """

    def __init__(self, old_epoch: int | None, new_epoch: int | None, message: str) -> None:
        super().__init__(Reason.STALE_EPOCH, message, epoch=new_epoch)
        self.old_epoch = old_epoch
        self.new_epoch = new_epoch
