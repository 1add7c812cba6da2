"""SIP over TLS: the settings of one side and the `ssl` contexts built from them.

RFC 3261 §26.2 makes TLS the hop-by-hop protection of SIP (a sips: URI, or
`transport=tls`, asks for it on every hop, RFC 5630 §3). A side with "tls" in its
transports listens for TLS on its own port (5061 unless `tls_port` says otherwise, §19.1.2)
and connects out over TLS to every next hop whose URI says so.

* As a server we present `cert`. A client certificate is asked for only when `ca` names
  whom to trust, and required only with `require_client_cert` (a trunk peer that must
  prove who it is, RFC 5922 §7.2 leaves this to policy).
* As a client we verify the server's chain against `ca` (or the system's CAs) and its
  certificate against the SIP domain its address was resolved from (RFC 5922 §4 and
  §7.1: the URI's domain, sent as SNI too, never a host name the DNS answered with), or,
  for a next hop configured by address, against that address (such trunk peers carry an
  IP address in their subjectAltName). We present `cert` too, for servers that ask for
  mutual TLS. `verify = false` turns the check off for
  peers with self-signed certificates; the shell says so loudly in its log.
* TLS 1.2 is the floor (RFC 8996 retires 1.0 and 1.1; BCP 195, RFC 9325 §3.1.1).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from alg.errors import AlgError


class TlsSetupError(AlgError):
    """A certificate, key or CA bundle that `ssl` refuses."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """SIP over TLS on one side (`[inside]`/`[outside]` tls_* options of alg.toml)."""

    cert: str  # PEM chain we present, as a server and as a client
    key: str
    port: int = 5061
    # PEM bundle of the CAs we trust for the peers' certificates; None: the system's
    ca: str | None = None
    # check the certificate (chain and address) of every server we connect to
    verify: bool = True
    # ask connecting clients for a certificate and refuse them without one (needs `ca`)
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class TlsContexts:
    """What one side listens with (`server`) and connects out with (`client`)."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def _floor(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    context = _floor(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(settings.cert, settings.key)
    if settings.ca is not None:
        context.load_verify_locations(settings.ca)
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
        )
    return context


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    context = _floor(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # verifies chain and name
    context.load_cert_chain(settings.cert, settings.key)
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif settings.ca is not None:
        context.load_verify_locations(settings.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def contexts(settings: TlsSettings) -> TlsContexts:
    """Both contexts; `TlsSetupError` naming the problem if `ssl` refuses a file."""
    try:
        return TlsContexts(server_context(settings), client_context(settings))
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"TLS certificate, key or CA refused: {exc}") from exc
