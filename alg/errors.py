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


class RouteTableError(AlgError):
    """A route table (TOML) is invalid; `entry` names the offending entry, e.g. `route[3]`."""

    def __init__(self, reason: str, entry: str | None = None, source: str | None = None) -> None:
        where = "".join(f"{part}: " for part in (source, entry) if part)
        super().__init__(where + reason)
        self.reason = reason
        self.entry = entry
        self.source = source


class LogConfigError(AlgError):
    """Logging settings are invalid (unknown level, bad syslog collector, bad facility)."""


class LocationStoreError(AlgError):
    """The location service could not read or commit bindings (a registrar answers 500,
    RFC 3261 §10.3 step 7: no tentative binding survives a failed commit)."""


class DigestParseError(SipParseError):
    """An Authorization/Proxy-Authorization header with the Digest scheme is malformed
    (answered 400, RFC 7616 §3.4). Other schemes are not errors: they are ignored."""

    def __init__(self, reason: str) -> None:
        super().__init__(400, reason)


class SubscriberStoreError(AlgError):
    """The subscriber database refused an operation (duplicate user, bad name, I/O)."""
