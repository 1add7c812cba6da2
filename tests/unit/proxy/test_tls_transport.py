"""SIP over TLS (alg.tls): the side options, the addresses TLS hops get in Via and
Record-Route, and the contexts (RFC 3261 §26.2, RFC 5658, BCP 195)."""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path

import pytest
from proxy_harness import ALICE, INSIDE, StaticRouter, invite, sent_to

from alg.builders import build_response
from alg.config import AlgConfig, ConfigError, parse_config
from alg.proxy import ProxyCore
from alg.proxy_model import Endpoint, Interface, ProxyConfig
from alg.tls import TlsSettings, contexts, sip_identity_matches
from fcp.certs import generate_ca, issue_server, issue_sip, write_pair

TLS_BOB = Endpoint("outside", "TLS", "203.0.113.20", 5061, connection=7)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca = generate_ca()
    write_pair(directory, "ca", ca)
    write_pair(directory, "alg", issue_server(ca, ["203.0.113.1", "10.77.0.1"]))
    write_pair(directory, "other", issue_server(generate_ca(), ["203.0.113.1"]))
    return directory


def parse(outside: str, pki: Path) -> AlgConfig:
    text = f"""
[inside]
address = "10.77.0.1"
[outside]
address = "203.0.113.1"
{outside.format(pki=pki)}
"""
    return parse_config(tomllib.loads(text))


TLS_OUTSIDE = """transports = ["udp", "tls"]
tls_cert = "{pki}/alg.pem"
tls_key = "{pki}/alg.key"
"""


def test_a_tls_side_has_its_own_port_and_verifies_servers_by_default(pki: Path) -> None:
    config = parse(TLS_OUTSIDE + 'tls_ca = "{pki}/ca.pem"\n', pki)
    tls = config.outside.tls
    assert tls == TlsSettings(f"{pki}/alg.pem", f"{pki}/alg.key", 5061, f"{pki}/ca.pem")
    assert (tls.verify, tls.require_client_cert) == (True, False)
    assert config.inside.tls is None
    interfaces = config.proxy_config().interfaces
    assert (interfaces["outside"].tls_port, interfaces["inside"].tls_port) == (5061, None)


@pytest.mark.parametrize(
    ("outside", "complaint"),
    [
        ('transports = ["udp", "tls"]\n', "needs tls_cert and tls_key"),
        (TLS_OUTSIDE.replace("alg.key", "missing.key"), "tls_key is not a readable file"),
        (TLS_OUTSIDE + "tls_port = 5060\n", "tls_port must differ from port"),
        (TLS_OUTSIDE + "tls_port = 70000\n", "tls_port must be 1-65535"),
        (TLS_OUTSIDE + 'tls_verify = "yes"\n', "tls_verify must be true or false"),
        (TLS_OUTSIDE + "tls_require_client_cert = true\n", "needs tls_ca"),
        # a key that is not the certificate's: refused when the file is read, not per call
        (TLS_OUTSIDE.replace("alg.key", "other.key"), "TLS certificate, key or CA refused"),
        ('tls_cert = "{pki}/alg.pem"\n', 'tls_* options need "tls" in transports'),
        ('transports = ["udp", "tls", "sctp"]\n', "subset of udp, tcp, tls"),
        ('tls_cerf = "{pki}/alg.pem"\n', "unknown option(s) tls_cerf"),
    ],
)
def test_bad_tls_options_are_named(outside: str, complaint: str, pki: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[outside\]") as caught:
        parse(outside, pki)
    assert complaint in str(caught.value)


def test_tls_hops_get_the_tls_port_in_via_and_record_route() -> None:
    outside = Interface("outside", "203.0.113.1", 5060, tls_port=5061)
    core = ProxyCore(
        ProxyConfig(interfaces={"inside": INSIDE, "outside": outside}),
        StaticRouter({"bob": [TLS_BOB]}),
    )
    out = core.receive(invite(), ALICE, 0.0)
    (forwarded,) = sent_to(out, TLS_BOB)
    top = forwarded.vias[0]
    assert (top.transport, top.host, top.port) == ("TLS", "203.0.113.1", 5061)
    # RFC 5658: the entry facing bob names our TLS port, the one facing alice our UDP one
    routes = [str(r.uri) for r in forwarded.record_routes]
    assert routes == [
        "sip:203.0.113.1:5061;transport=tls;lr;r2=on",
        "sip:10.77.0.1:5060;transport=udp;lr;r2=on",
    ]
    # bob's answer comes back on his connection and is ours to relay: the TLS Via matches
    ok = build_response(forwarded, 200, to_tag="b1")
    (answer,) = sent_to(core.receive(ok, TLS_BOB, 0.1), ALICE)
    assert answer.status == 200


def test_our_tls_address_in_a_route_is_recognised_as_ours() -> None:
    outside = Interface("outside", "203.0.113.1", 5060, tls_port=5061)
    config = ProxyConfig(interfaces={"inside": INSIDE, "outside": outside})
    assert config.is_ours("203.0.113.1", 5061) and config.is_ours("203.0.113.1", None)
    assert not config.is_ours("10.77.0.1", 5061)  # no TLS on the inside
    assert not ProxyConfig(interfaces={"inside": INSIDE, "outside": INSIDE}).is_ours(
        "203.0.113.1", 5061
    )


def test_contexts_refuse_old_tls_and_ask_clients_only_when_told(pki: Path) -> None:
    base = TlsSettings(f"{pki}/alg.pem", f"{pki}/alg.key")
    plain = contexts(base)
    assert plain.server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.server.verify_mode == ssl.CERT_NONE  # no CA given: no client certificate
    # the chain by OpenSSL, the name by us (RFC 5922 §7: sip_identity_matches)
    assert (plain.client.verify_mode, plain.client.check_hostname) == (ssl.CERT_REQUIRED, False)
    assert plain.verify
    trusting = contexts(TlsSettings(base.cert, base.key, ca=f"{pki}/ca.pem"))
    assert trusting.server.verify_mode == ssl.CERT_OPTIONAL
    strict = contexts(
        TlsSettings(base.cert, base.key, ca=f"{pki}/ca.pem", require_client_cert=True)
    )
    assert strict.server.verify_mode == ssl.CERT_REQUIRED
    blind = contexts(TlsSettings(base.cert, base.key, verify=False))
    assert (blind.client.verify_mode, blind.client.check_hostname) == (ssl.CERT_NONE, False)
    assert not blind.verify


def san(*entries: tuple[str, str]) -> dict[str, object]:
    return {"subject": ((("commonName", "cn.example"),),), "subjectAltName": entries}


@pytest.mark.parametrize(
    ("cert", "expected", "matches"),
    [
        (san(("DNS", "provider.test")), "provider.test", True),
        (san(("DNS", "Provider.Test.")), "provider.test", True),  # case, root dot
        (san(("DNS", "provider.test")), "sip.provider.test", False),
        (san(("DNS", "*.provider.test")), "sip.provider.test", False),  # §7.2: no wildcard
        (san(("URI", "sip:provider.test")), "provider.test", True),  # §7.1
        (san(("URI", "sip:provider.test;transport=tls")), "provider.test", True),
        (san(("URI", "sip:alice@provider.test")), "provider.test", False),  # a user's
        (san(("URI", "https://provider.test/")), "provider.test", False),
        (san(("IP Address", "198.51.100.10")), "198.51.100.10", True),
        (san(("IP Address", "2001:DB8:0:0:0:0:0:1\n")), "[2001:db8::1]", True),
        (san(("DNS", "198.51.100.10")), "198.51.100.10", False),  # an address is no name
        (san(("IP Address", "198.51.100.10")), "provider.test", False),
        (san(("DNS", "other.test")), "cn.example", False),  # CN only without SANs
        ({"subject": ((("commonName", "provider.test"),),)}, "provider.test", True),
        ({}, "provider.test", False),
    ],
)
def test_a_servers_identity_is_compared_as_rfc_5922_says(
    cert: dict[str, object], expected: str, matches: bool
) -> None:
    assert sip_identity_matches(cert, expected) is matches


TCP_CAROL = Endpoint("outside", "TCP", "203.0.113.30", 5060)


def forked_core() -> ProxyCore:
    router = StaticRouter({"bob": [TLS_BOB], "both": [TLS_BOB, TCP_CAROL]})
    outside = Interface("outside", "203.0.113.1", 5060, tls_port=5061)
    return ProxyCore(ProxyConfig(interfaces={"inside": INSIDE, "outside": outside}), router)


def test_an_undeliverable_request_fails_its_branch_at_once_as_a_503() -> None:
    core = forked_core()
    out = core.receive(invite(), ALICE, 0.0)
    (send,) = [s for s in out if s.to == TLS_BOB]
    # RFC 3261 §16.9: as if bob had answered 503; §16.7 step 6: alice gets a 500
    answered = core.transport_failed(send, 0.2)
    (final,) = sent_to(answered, ALICE)
    assert final.status == 500
    assert core.stats["transport_failed"] == 1
    assert core.transaction_count == 1  # only alice's server transaction, completing
    # a second report for the same send (the transaction is gone) changes nothing
    assert core.transport_failed(send, 0.3) == []


def test_a_failed_branch_leaves_the_other_forks_to_answer() -> None:
    core = forked_core()
    out = core.receive(invite(to_user="both"), ALICE, 0.0)
    (to_bob,) = [s for s in out if s.to == TLS_BOB]
    (to_carol,) = sent_to(out, TCP_CAROL)
    assert sent_to(core.transport_failed(to_bob, 0.1), ALICE) == []  # carol may answer
    ok = build_response(to_carol, 200, to_tag="c1")
    (answer,) = sent_to(core.receive(ok, TCP_CAROL, 0.2), ALICE)
    assert answer.status == 200


def test_what_is_not_a_pending_request_is_ignored() -> None:
    core = forked_core()
    out = core.receive(invite(), ALICE, 0.0)
    (send,) = [s for s in out if s.to == TLS_BOB]
    (trying,) = [s for s in out if s.to == ALICE]
    assert core.transport_failed(trying, 0.1) == []  # a response: no client transaction
    elsewhere = Endpoint("outside", "TLS", "203.0.113.99", 5061)
    assert core.transport_failed(type(send)(elsewhere, send.data), 0.1) == []
    assert core.transport_failed(type(send)(send.to, b"garbage"), 0.1) == []
    assert core.stats["transport_failed"] == 0


def test_a_lab_sip_certificate_may_serve_and_be_presented_as_a_client() -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = issue_sip(generate_ca(), ["203.0.113.1", "10.77.0.1"]).certificate
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "203.0.113.1",
        "10.77.0.1",
    ]
