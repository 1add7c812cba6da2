"""SIP over TLS: the settings of one side and the `ssl` contexts built from them.

RFC 3261 §26.2 makes TLS the hop-by-hop protection of SIP (a sips: URI, or
`transport=tls`, asks for it on every hop, RFC 5630 §3). A side with "tls" in its
transports listens for TLS on its own port (5061 unless `tls_port` says otherwise, §19.1.2)
and connects out over TLS to every next hop whose URI says so.

* As a server we present `cert`. A client certificate is asked for only when `ca` names
  whom to trust, and required only with `require_client_cert` (a trunk peer that must
  prove who it is, RFC 5922 §7.2 leaves this to policy).
* As a client we verify the server's chain against `ca` (or the system's CAs) and its
  certificate against the SIP domain its address was resolved from (RFC 5922 §4: the
  URI's domain, sent as SNI too, never a host name the DNS answered with), or, for a
  next hop configured by address, against that address (such trunk peers carry an IP
  address in their subjectAltName). The comparison is RFC 5922 §7's, done by
  `sip_identity_matches` once connected: sip: URIs and dNSNames, exact, no wildcards.
  We present `cert` too, for servers that ask for mutual TLS. `verify = false` turns
  the checks off for peers with self-signed certificates; the shell says so loudly in
  its log.
* TLS 1.2 is the floor (RFC 8996 retires 1.0 and 1.1; BCP 195, RFC 9325 §3.1.1).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    """What one side listens with (`server`) and connects out with (`client`), and
    whether a server's identity is checked (`sip_identity_matches`) once connected."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    verify: bool = True


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
    context = _floor(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # verifies the chain
    context.load_cert_chain(settings.cert, settings.key)
    # the name is ours to check (`sip_identity_matches`): OpenSSL's host check accepts
    # wildcards, which RFC 5922 §7.2 forbids, and ignores sip: URIs, which §7.1 reads
    context.check_hostname = False
    if not settings.verify:
        context.verify_mode = ssl.CERT_NONE
    elif settings.ca is not None:
        context.load_verify_locations(settings.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def contexts(settings: TlsSettings) -> TlsContexts:
    """Both contexts; `TlsSetupError` naming the problem if `ssl` refuses a file."""
    try:
        return TlsContexts(server_context(settings), client_context(settings), settings.verify)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"TLS certificate, key or CA refused: {exc}") from exc


def sip_identity_matches(cert: Mapping[str, Any], expected: str) -> bool:
    """Whether a server's (chain-verified) certificate, as `SSLSocket.getpeercert()`
    gives it, names `expected`: the SIP domain we resolved, or the address we were
    given. RFC 5922 §7.1: the identities are the subjectAltName URIs of scheme sip (their
    host, when they have no user part) and dNSNames, the subject's CN only when there is
    no subjectAltName at all; §7.2: compared exactly, case aside, and a wildcard never
    matches. An address is matched against iPAddress entries."""
    sans: tuple[tuple[str, str], ...] = tuple(cert.get("subjectAltName", ()))
    wanted = expected.strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(wanted)
    except ValueError:
        address = None
    if address is not None:
        return any(kind == "IP Address" and _same_address(value, address) for kind, value in sans)
    names: list[str] = []
    for kind, value in sans:
        if kind == "DNS":
            names.append(value)
        elif kind == "URI" and value.lower().startswith("sip:") and "@" not in value:
            names.append(value[4:].split(";", 1)[0].split(":", 1)[0])
    if not sans:
        names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return any(name.lower().rstrip(".") == wanted for name in names)


def _same_address(value: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(value.strip()) == address
    except ValueError:
        return False
