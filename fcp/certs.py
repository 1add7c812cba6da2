"""Lab PKI for FCP's mutual TLS: a CA, the agent's server certificate, ALG client certificates.

FCP authenticates both ends with certificates from one private CA. The client's identity —
the owner of everything it creates — is carried twice: as a URI SAN `urn:sipwall:<id>`
(what `identity_of` reads first: SANs are the modern place for identities, RFC 6125) and as
the subject CN (for humans and older tools). The agent allow-lists identities, so a
certificate from the right CA for an unknown ALG still gets PERMISSION_DENIED.

Keys are ECDSA P-256: fast to generate in tests and supported by gRPC's TLS stack.

    python -m fcp.certs --out DIR --server-host 127.0.0.1 --server-host agent.lab \
        --client alg-1 --client alg-2

(`sipwall agent gen-certs` is meant to call `main`.)
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IDENTITY_URI_PREFIX = "urn:sipwall:"
_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_VALID_DAYS = 825


class CertificateError(ValueError):
    """A certificate request cannot be honoured (bad identity or host name)."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def check_identity(identity: str) -> str:
    if not _IDENTITY.match(identity):
        raise CertificateError(f"identity {identity!r} must match {_IDENTITY.pattern}")
    return identity


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, valid_days: int
) -> x509.CertificateBuilder:
    start = _now() - datetime.timedelta(minutes=5)  # tolerate small clock skew
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def generate_ca(common_name: str = "sipwall lab CA", valid_days: int = 3650) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), valid_days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _issue(
    ca: KeyPair,
    common_name: str,
    sans: list[x509.GeneralName],
    usages: Sequence[x509.ObjectIdentifier],
    valid_days: int,
) -> KeyPair:
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key must be an EC key")
    ca_cert = ca.certificate
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), valid_days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server(
    ca: KeyPair, hosts: Sequence[str], valid_days: int = DEFAULT_VALID_DAYS
) -> KeyPair:
    """The agent's certificate; every host (IP address or DNS name) becomes a SAN."""
    return _issue(ca, hosts[0], _host_sans(hosts), (ExtendedKeyUsageOID.SERVER_AUTH,), valid_days)


def issue_sip(ca: KeyPair, hosts: Sequence[str], valid_days: int = DEFAULT_VALID_DAYS) -> KeyPair:
    """A SIP-over-TLS certificate for the labs: a SIP element is the server of the
    connections it accepts and the client of those it opens (mutual TLS when the other
    end asks), so it may do both (serverAuth and clientAuth); hosts as SANs."""
    usages = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    return _issue(ca, hosts[0], _host_sans(hosts), usages, valid_days)


def _host_sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise CertificateError("a server certificate needs at least one host")
    sans: list[x509.GeneralName] = []
    for host in hosts:
        if host.startswith("sip:"):  # a SIP domain as RFC 5922 §7.1 writes it
            sans.append(x509.UniformResourceIdentifier(host))
            continue
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return sans


def issue_client(ca: KeyPair, identity: str, valid_days: int = DEFAULT_VALID_DAYS) -> KeyPair:
    """An ALG's certificate: identity in the URI SAN `urn:sipwall:<identity>` and the CN."""
    check_identity(identity)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(IDENTITY_URI_PREFIX + identity)]
    return _issue(ca, identity, sans, (ExtendedKeyUsageOID.CLIENT_AUTH,), valid_days)


def identity_of(cert: x509.Certificate) -> str | None:
    """The FCP identity of a (verified) client certificate: URI SAN first, else the CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    for uri in uris:
        if uri.startswith(IDENTITY_URI_PREFIX):
            candidate = uri.removeprefix(IDENTITY_URI_PREFIX)
            return candidate if _IDENTITY.match(candidate) else None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) == 1 and isinstance(names[0].value, str) and _IDENTITY.match(names[0].value):
        return names[0].value
    return None


def _write(path: Path, data: bytes, mode: int) -> None:
    # Create with the final mode so a private key is never readable by others, not even
    # for the moment between write and chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def write_pair(directory: Path, name: str, pair: KeyPair) -> tuple[Path, Path]:
    """Write `<name>.pem` (0644) and `<name>.key` (0600) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    _write(cert_path, pair.cert_pem, 0o644)
    _write(key_path, pair.key_pem, 0o600)
    return cert_path, key_path


@dataclass(frozen=True)
class LabPki:
    ca: KeyPair
    server: KeyPair
    clients: dict[str, KeyPair]


def generate_lab_pki(server_hosts: Sequence[str], client_identities: Sequence[str]) -> LabPki:
    ca = generate_ca()
    return LabPki(
        ca,
        issue_server(ca, server_hosts),
        {identity: issue_client(ca, identity) for identity in client_identities},
    )


def write_lab_pki(directory: Path, pki: LabPki) -> None:
    """ca.pem/ca.key, server.pem/server.key, <identity>.pem/.key; keys 0600."""
    write_pair(directory, "ca", pki.ca)
    write_pair(directory, "server", pki.server)
    for identity, pair in pki.clients.items():
        write_pair(directory, identity, pair)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fcp.certs", description="Generate FCP lab certificates")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument(
        "--server-host",
        action="append",
        default=[],
        dest="hosts",
        help="IP or DNS name of the agent (repeatable; default 127.0.0.1, ::1)",
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        dest="clients",
        help="client identity, e.g. alg-1 (repeatable; default alg-1)",
    )
    args = parser.parse_args(argv)
    try:
        pki = generate_lab_pki(
            args.hosts or ["127.0.0.1", "::1", "localhost"], args.clients or ["alg-1"]
        )
    except CertificateError as exc:
        parser.error(str(exc))
    write_lab_pki(args.out, pki)
    print(f"wrote CA, server and {len(pki.clients)} client certificate(s) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
