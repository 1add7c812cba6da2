"""The ALG's one error tree.

Every error the ALG's sans-I/O core raises derives from `AlgError`. Parse errors carry the
SIP status a server should answer with (RFC 3261 §21), so the shell never has to guess:
`SipParseError(400, "Malformed Via header")` becomes `SIP/2.0 400 Malformed Via header`.
"""

from __future__ import annotations


class AlgError(Exception):
    """Base class of all errors raised by the ALG core."""


class SipParseError(AlgError):
    """A SIP message could not be parsed or is not acceptable.

    `status` is the response code to answer a request with (400, 413, 416, 505, ...);
    `reason` is the reason phrase naming the fault, safe to put on the status line.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class SdpParseError(AlgError):
    """A session description could not be parsed (answered 488 or 400 by the proxy)."""

    def __init__(self, reason: str, line_number: int | None = None) -> None:
        where = f" (line {line_number})" if line_number is not None else ""
        super().__init__(reason + where)
        self.reason = reason
        self.line_number = line_number


class SdpRewriteError(AlgError):
    """A rewrite asked of a session description cannot be applied (bad index, bad value)."""
