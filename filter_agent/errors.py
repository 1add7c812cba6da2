"""One error tree for the filter agent.

Every failure that crosses a module boundary is an `AgentError` carrying a `Reason`; the
reasons mirror FCP's error enum one to one (MIDCOM RFC 5189 and PCP RFC 6887 result codes
are where the names come from), so the gRPC layer maps them without guessing and no error
string or return-code tuple ever has to be parsed.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    MALFORMED = "MALFORMED"
    UNSUPPORTED = "UNSUPPORTED"
    NO_PORTS = "NO_PORTS"
    NO_ADDRESSES = "NO_ADDRESSES"
    QUOTA = "QUOTA"
    CANNOT_PROVIDE_EXTERNAL = "CANNOT_PROVIDE_EXTERNAL"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    STALE_EPOCH = "STALE_EPOCH"
    NETWORK_FAILURE = "NETWORK_FAILURE"


class AgentError(Exception):
    """A refused or failed agent operation.

    `retry_after` (seconds) is a hint for transient conditions (ports in quarantine, kernel
    busy); None means retrying the same request will fail the same way.
    """

    def __init__(self, reason: Reason, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"AgentError({self.reason.value!r}, {self.message!r}, {self.retry_after!r})"


class DriverError(AgentError):
    """The kernel (or the fake standing in for it) refused a transaction.

    Always NETWORK_FAILURE from the client's point of view; `detail` keeps libnftables'
    own error text for logs.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(Reason.NETWORK_FAILURE, message, retry_after=1.0)
        self.detail = detail


def malformed(message: str) -> AgentError:
    return AgentError(Reason.MALFORMED, message)


def not_found(what: str) -> AgentError:
    return AgentError(Reason.NOT_FOUND, f"no such {what}")
