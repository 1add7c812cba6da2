"""The assembled edge proxy (registrar, digest, routing, rate limits, CDRs) through the
core, with fake phones: what `sipwall alg` runs, minus the sockets."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_harness import ALICE, BOB, sent_to

from alg.assemble import AlgServices, assemble
from alg.auth import Algorithm, compute_ha1, compute_response
from alg.builders import build_response
from alg.config import ConfigError, parse_config
from alg.proxy_model import Endpoint
from alg.sip import SipMessage, parse_message
from alg.subscribers import SqliteSubscriberStore, Subscriber

GATEWAY_1 = Endpoint("outside", "UDP", "198.51.100.31", 5060)
GATEWAY_2 = Endpoint("outside", "UDP", "198.51.100.32", 5060)
ROUTES = """
[[route]]
prefix = "1732"
strip = 1
domain = "regional.example"
next_hops = [
  { hop = "198.51.100.31:5060", priority = 10 },
  { hop = "198.51.100.32:5060", priority = 20 },
]
"""


def services(
    tmp_path: Path, *, auth: bool = True, extra: str = "", routes_text: str = ROUTES
) -> AlgServices:
    subscribers = tmp_path / "subscribers.db"
    store = SqliteSubscriberStore(subscribers)
    store.add(Subscriber.with_password("alice", "example.com", "secret", realm="example.com"))
    store.close()
    routes = tmp_path / "routes.toml"
    routes.write_text(routes_text)
    text = f"""
[inside]
address = "10.77.0.1"
[outside]
address = "203.0.113.1"
[proxy]
domains = ["example.com"]
[registrar]
database = "{tmp_path / "location.db"}"
[auth]
realm = "example.com"
{f'subscribers = "{subscribers}"' if auth else ""}
[files]
routes = "{routes}"
cdr = "{tmp_path / "cdr.jsonl"}"
{extra}
"""
    built = assemble(parse_config(tomllib.loads(text)))
    OPENED.append(built)
    return built


OPENED: list[AlgServices] = []


@pytest.fixture(autouse=True)
def _close_services() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def register(branch: str, authorization: str = "", contact_port: int = 5062) -> bytes:
    return (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.77.0.10:5060;branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:alice@example.com>\r\n"
        f"From: <sip:alice@example.com>;tag=r1\r\nCall-ID: reg-1@10.77.0.10\r\n"
        f"CSeq: {len(branch)} REGISTER\r\n"
        f"Contact: <sip:alice@10.77.0.10:{contact_port}>;expires=600\r\n"
        f"{authorization}Content-Length: 0\r\n\r\n"
    ).encode()


def digest_header(
    challenge: SipMessage, header: str, method: str, uri: str, nc: str = "00000001"
) -> str:
    text = challenge.header(header.lower()) or ""
    nonce = re.search(r'nonce="([^"]+)"', text).group(1)  # type: ignore[union-attr]
    algorithm = Algorithm.SHA256 if "SHA-256" in text.split(",")[2] else Algorithm.MD5
    ha1 = compute_ha1(algorithm, "alice", "example.com", "secret")
    response = compute_response(algorithm, ha1, nonce, method, uri, "auth", nc, "c0ffee")
    name = "Authorization" if header == "WWW-Authenticate" else "Proxy-Authorization"
    return (
        f'{name}: Digest username="alice", realm="example.com", nonce="{nonce}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm.value}, qop=auth, '
        f'nc={nc}, cnonce="c0ffee"\r\n'
    )


def invite(to: str, branch: str, authorization: str = "", call_id: str = "call-9") -> bytes:
    return (
        f"INVITE {to} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.77.0.10:5060;branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <{to}>\r\n"
        f"From: <sip:alice@example.com>;tag=a9\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice@10.77.0.10:5060>\r\n{authorization}Content-Length: 0\r\n\r\n"
    ).encode()


def test_register_with_digest_then_call_reaches_the_contact_at_its_source(tmp_path: Path) -> None:
    alg = services(tmp_path)
    core = alg.core
    (challenge,) = sent_to(core.receive(register("z9hG4bKr1"), ALICE, 0.0), ALICE)
    assert challenge.status == 401 and challenge.header("www-authenticate")
    auth = digest_header(challenge, "WWW-Authenticate", "REGISTER", "sip:example.com")
    (ok,) = sent_to(core.receive(register("z9hG4bKr22", auth), ALICE, 1.0), ALICE)
    assert ok.status == 200 and "expires=600" in (ok.header("contact") or "")
    # a replay of the same nonce-count is refused (RFC 7616 §3.4 / §5.4)
    (again,) = sent_to(core.receive(register("z9hG4bKr333", auth), ALICE, 2.0), ALICE)
    assert again.status == 401
    # a call from the outside to alice goes to where she registered from (NAT), the
    # Request-URI being her contact
    inbound = invite("sip:alice@example.com", "z9hG4bKin1").replace(
        b"Via: SIP/2.0/UDP 10.77.0.10:5060", b"Via: SIP/2.0/UDP 203.0.113.20:5060"
    )
    out = core.receive(inbound, BOB, 3.0)
    (to_alice,) = sent_to(out, Endpoint("inside", "UDP", "10.77.0.10", 5060))
    assert str(to_alice.request_uri) == "sip:alice@10.77.0.10:5062"


def test_outbound_requires_proxy_auth_and_strips_consumed_credentials(tmp_path: Path) -> None:
    alg = services(tmp_path)
    core = alg.core
    out = core.receive(invite("sip:17325551212@example.com", "z9hG4bKo1"), ALICE, 0.0)
    challenge = next(m for m in sent_to(out, ALICE) if m.status == 407)
    auth = digest_header(challenge, "Proxy-Authenticate", "INVITE", "sip:17325551212@example.com")
    out = core.receive(invite("sip:17325551212@example.com", "z9hG4bKo2", auth), ALICE, 1.0)
    (forwarded,) = sent_to(out, GATEWAY_1)
    # prefix 1732: strip one digit, domain rewritten, first gateway by priority
    assert str(forwarded.request_uri).startswith("sip:7325551212@regional.example")
    assert not forwarded.has("proxy-authorization")  # §22.3: consumed, removed
    # the gateway fails: failover to the second one (serial forking)
    out = core.receive(build_response(forwarded, 503, to_tag="g1"), GATEWAY_1, 1.5)
    assert [m.method for m in sent_to(out, GATEWAY_1)] == ["ACK"]
    (second,) = sent_to(out, GATEWAY_2)
    assert second.method == "INVITE" and sent_to(out, ALICE) == []
    out = core.receive(build_response(second, 486, to_tag="g2"), GATEWAY_2, 2.0)
    assert [m.status for m in sent_to(out, ALICE)] == [486]
    alg.write_calls(core.take_finished_calls(), wall_offset=1_800_000_000.0)
    alg.close()
    records = [json.loads(line) for line in (tmp_path / "cdr.jsonl").read_text().splitlines()]
    # the challenged attempt and the real call, each with its outcome
    assert [(r["callee"], r["disposition"], r["status"]) for r in records] == [
        ("sip:17325551212@example.com", "FAILED", 407),
        ("sip:17325551212@example.com", "BUSY", 486),
    ]
    assert records[1]["side"] == "inside" and records[1]["start"].startswith("2027-01-15")


def test_outside_callers_only_reach_our_users(tmp_path: Path) -> None:
    alg = services(tmp_path, auth=False)
    relay = invite("sip:someone@elsewhere.example", "z9hG4bKx1").replace(
        b"10.77.0.10:5060;branch", b"203.0.113.20:5060;branch"
    )
    out = alg.core.receive(relay, BOB, 0.0)
    assert [m.status for m in sent_to(out, BOB)] == [100, 403]


def test_rate_limit_answers_503_with_retry_after(tmp_path: Path) -> None:
    alg = services(tmp_path, auth=False, extra="[ratelimit]\nenabled = true\ninvite = [1, 2]\n")
    statuses = []
    for i in range(6):
        out = alg.core.receive(
            invite("sip:nobody@example.com", f"z9hG4bKrl{i}", call_id=f"rl{i}"), ALICE, 0.0
        )
        statuses += [m.status for m in sent_to(out, ALICE) if m.status >= 200]
    assert statuses[:2] == [404, 404]
    assert 503 in statuses


# canned answers only: these tests never query a real server
DNS_ON = '[dns]\nresolver = "system"\n'


def test_dns_off_by_default_never_asks_for_a_lookup(tmp_path: Path) -> None:
    alg = services(tmp_path, auth=False)
    out = alg.core.receive(invite("sip:carol@provider.example", "z9hG4bKd0"), ALICE, 0.0)
    assert [m.status for m in sent_to(out, ALICE)] == [100, 503]
    assert alg.core.take_lookups() == []


def test_other_domain_is_parked_for_dns_then_forwarded_to_what_rfc3263_found(
    tmp_path: Path,
) -> None:
    from alg.dns_resolver import ResolvedTarget

    alg = services(tmp_path, auth=False, extra=DNS_ON)
    core = alg.core
    out = core.receive(invite("sip:carol@provider.example", "z9hG4bKd1"), ALICE, 0.0)
    assert [m.status for m in sent_to(out, ALICE)] == [100]  # parked, nothing forwarded
    assert [s for s in out if s.to.side == "outside"] == []
    assert core.take_lookups() == ["sip:carol@provider.example"]
    # a second call to the same URI waits for the same lookup
    core.receive(invite("sip:carol@provider.example", "z9hG4bKd2", call_id="c2"), ALICE, 0.1)
    assert core.take_lookups() == []
    found = [ResolvedTarget("198.51.100.40", 5080, "udp", "sip.provider.example")]
    alg.edge.remember_resolution("sip:carol@provider.example", found, now=0.2)
    out = core.resume_lookup("sip:carol@provider.example", 0.2)
    server = Endpoint("outside", "UDP", "198.51.100.40", 5080)
    assert [m.call_id for m in sent_to(out, server)] == ["call-9", "c2"]
    assert str(sent_to(out, server)[0].request_uri) == "sip:carol@provider.example"


def test_a_resolved_next_hop_carries_the_domain_its_tls_server_must_prove(
    tmp_path: Path,
) -> None:
    """RFC 5922 §4: the identity is the URI's domain, not the SRV target DNS answered."""
    from alg.dns_resolver import ResolvedTarget

    alg = services(tmp_path, auth=False, extra=DNS_ON)
    uri = "sip:carol@provider.example;transport=tls"
    alg.core.receive(invite(uri, "z9hG4bKn1"), ALICE, 0.0)
    assert alg.core.take_lookups() == [uri]
    found = [ResolvedTarget("198.51.100.40", 5061, "tls", "sip1.provider.example")]
    alg.edge.remember_resolution(uri, found, now=0.1)
    out = alg.core.resume_lookup(uri, 0.1)
    (forwarded,) = [s for s in out if s.to.side == "outside"]
    assert forwarded.to == Endpoint("outside", "TLS", "198.51.100.40", 5061)
    assert forwarded.to.name == "provider.example"
    # a name does not make another peer: equality and hashing ignore it
    assert hash(forwarded.to) == hash(Endpoint("outside", "TLS", "198.51.100.40", 5061))


def test_a_next_hop_given_by_address_has_no_name(tmp_path: Path) -> None:
    alg = services(tmp_path, auth=False)
    out = alg.core.receive(invite("sip:carol@192.0.2.50;transport=tls", "z9hG4bKn2"), ALICE, 0.0)
    (forwarded,) = [s for s in out if s.to.side == "outside"]
    assert (forwarded.to.host, forwarded.to.name) == ("192.0.2.50", None)


NAMED_UPSTREAM = ROUTES + '[default]\nnext_hops = ["gw.carrier.test;transport=tls"]\n'


def test_a_next_hop_given_by_name_is_resolved_and_proves_that_name(tmp_path: Path) -> None:
    from alg.dns_resolver import ResolvedTarget

    alg = services(tmp_path, auth=False, extra=DNS_ON, routes_text=NAMED_UPSTREAM)
    alg.core.receive(invite("sip:carol@elsewhere.example", "z9hG4bKn3"), ALICE, 0.0)
    key = "sip:gw.carrier.test;transport=tls"  # no port given: SRV for TLS, then A/AAAA
    assert alg.core.take_lookups() == [key]
    found = [
        ResolvedTarget("198.51.100.60", 5061, "tls", "gw.carrier.test"),
        ResolvedTarget("198.51.100.61", 5061, "tls", "gw.carrier.test"),
    ]
    alg.edge.remember_resolution(key, found, now=0.1)
    out = alg.core.resume_lookup(key, 0.1)
    (forwarded,) = [s for s in out if s.to.side == "outside"]  # serial: the first address
    assert forwarded.to == Endpoint("outside", "TLS", "198.51.100.60", 5061)
    assert forwarded.to.name == "gw.carrier.test"
    request = parse_message(forwarded.data)
    assert str(request.request_uri) == "sip:carol@elsewhere.example"  # the URI stays


def test_a_named_hop_with_its_port_is_looked_up_at_that_port(tmp_path: Path) -> None:
    routes = ROUTES + '[default]\nnext_hops = ["gw.carrier.test:5080;transport=tcp"]\n'
    alg = services(tmp_path, auth=False, extra=DNS_ON, routes_text=routes)
    alg.core.receive(invite("sip:carol@elsewhere.example", "z9hG4bKn4"), ALICE, 0.0)
    assert alg.core.take_lookups() == ["sip:gw.carrier.test:5080;transport=tcp"]  # A/AAAA


def test_an_address_of_a_named_hop_that_failed_is_tried_last(tmp_path: Path) -> None:
    """The addresses a named gateway resolved to are watched as literal hops are
    (alg.hop_health): one that left a call unanswered goes after the others."""
    from alg.dns_resolver import ResolvedTarget

    alg = services(tmp_path, auth=False, extra=DNS_ON, routes_text=NAMED_UPSTREAM)
    core, key = alg.core, "sip:gw.carrier.test;transport=tls"
    first, second = (
        ResolvedTarget(address, 5061, "tls", "gw.carrier.test")
        for address in ("198.51.100.60", "198.51.100.61")
    )
    alg.edge.remember_resolution(key, [first, second], now=0.0)
    assert ("198.51.100.60", 5061) in core.hops.watched

    def first_try(branch: str, now: float) -> str:
        out = core.receive(
            invite("sip:carol@elsewhere.example", branch, call_id=branch), ALICE, now
        )
        (forwarded,) = [s for s in out if s.to.side == "outside"]
        return forwarded.to.host

    assert first_try("z9hG4bKh1", 1.0) == "198.51.100.60"
    core.hops.failed(Endpoint("outside", "TLS", "198.51.100.60", 5061), 2.0)  # no answer
    assert first_try("z9hG4bKh2", 3.0) == "198.51.100.61"
    # a reload that drops the named hop forgets its addresses
    alg.edge.reload_routes(alg.edge.routes.table.__class__())
    assert ("198.51.100.60", 5061) not in core.hops.watched


def test_a_next_hop_given_by_name_without_dns_is_refused_at_start(tmp_path: Path) -> None:
    from alg.errors import RouteTableError

    with pytest.raises(RouteTableError, match=r"'gw.carrier.test' is a name.*resolver"):
        services(tmp_path, auth=False, routes_text=NAMED_UPSTREAM)


def test_dns_finding_nothing_answers_503(tmp_path: Path) -> None:
    alg = services(tmp_path, auth=False, extra=DNS_ON)
    core = alg.core
    core.receive(invite("sip:dave@nowhere.example", "z9hG4bKd3"), ALICE, 0.0)
    alg.edge.remember_resolution("sip:dave@nowhere.example", [], now=0.1)
    out = core.resume_lookup("sip:dave@nowhere.example", 0.1)
    assert [m.status for m in sent_to(out, ALICE)] == [503]


def test_services_resolve_fills_the_router_cache(tmp_path: Path) -> None:
    import asyncio

    from alg.dns_resolver import ResolvedTarget

    class CannedResolver:
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def resolve(self, uri, rng):  # type: ignore[no-untyped-def]
            self.asked.append(str(uri))
            return (ResolvedTarget("198.51.100.41", 5060, "udp", uri.host),)

    alg = services(tmp_path, auth=False, extra=DNS_ON)
    canned = CannedResolver()
    alg.resolver = canned  # type: ignore[assignment]
    core = alg.core
    core.receive(invite("sip:erin@other.example", "z9hG4bKd4"), ALICE, 0.0)
    (uri,) = core.take_lookups()
    asyncio.run(alg.resolve(uri, lambda: 0.5))
    out = core.resume_lookup(uri, 0.5)
    assert canned.asked == ["sip:erin@other.example"]
    assert sent_to(out, Endpoint("outside", "UDP", "198.51.100.41", 5060))


def test_media_settings_parse_and_build_the_media_core(tmp_path: Path) -> None:
    from alg.assemble import media_core
    from alg.config import ConfigError

    base = {"inside": {"address": "10.77.0.1"}, "outside": {"address": "203.0.113.1"}}
    assert parse_config(base).media.enabled is False
    assert media_core(parse_config(base)) is None
    secret = tmp_path / "media.secret"
    secret.write_bytes(b"0123456789abcdef0123")
    data = {
        **base,
        "media": {
            "enabled": True,
            "secret_file": str(secret),
            "agents": [{"name": "gw1", "address": "127.0.0.1:7700", "weight": 2}],
            "trusted": [{"address": "10.77.0.50", "subnets": ["10.77.5.0/24"]}],
        },
    }
    config = parse_config(data)
    assert [(a.name, a.weight) for a in config.media.agents] == [("gw1", 2.0)]
    assert media_core(config) is not None
    for broken, words in (
        ({"enabled": True}, "at least one"),
        ({"agents": [{"name": "gw1"}]}, "name and address"),
        ({"agents": [{"name": "a", "address": "x:1", "ca": "c"}]}, "go together"),
        ({"trusted": [{"address": "nope"}]}, r"trusted\[0\]"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_config({**base, "media": broken})
    secret.write_bytes(b"short")
    with pytest.raises(ConfigError, match="16 bytes"):
        media_core(config)


@pytest.mark.parametrize(
    ("uri", "source_side", "status"),
    [
        ("sip:203.0.113.1:5060", "outside", 200),  # a trunk pinging our outside address
        ("sip:203.0.113.1", "outside", 200),
        ("sip:10.77.0.1:5060", "inside", 200),
        ("sip:bob@203.0.113.1:5060", "outside", 404),  # to a user: routed as usual
        ("sip:198.51.100.9:5060", "inside", None),  # someone else: forwarded, not ours
    ],
)
def test_options_addressed_to_us_is_answered_200(
    uri: str, source_side: str, status: int | None
) -> None:
    config = parse_config(
        {
            "inside": {"address": "10.77.0.1"},
            "outside": {"address": "203.0.113.1"},
            "proxy": {"inside_networks": ["10.77.0.0/16"]},
        }
    )
    core = assemble(config).core
    host = "198.51.100.7" if source_side == "outside" else "10.77.0.10"
    source = Endpoint(source_side, "UDP", host, 5060)  # type: ignore[arg-type]
    options = (
        f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:5060;branch=z9hG4bKo1\r\n"
        f"Max-Forwards: 70\r\nTo: <{uri}>\r\nFrom: <sip:ping@{host}>;tag=p1\r\n"
        "Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    answers = [parse_message(s.data) for s in core.receive(options, source, 0.0) if s.to == source]
    if status is None:
        assert answers == []
        return
    (answer,) = answers
    assert answer.status == status
    if status == 200:
        assert "OPTIONS" in (answer.header("allow") or "")
        assert answer.header("accept") == "application/sdp"


@pytest.mark.parametrize(
    ("dns", "complaint"),
    [
        ('resolver = "system"\nnameservers = ["ns.example"]', "list of IP addresses"),
        ('resolver = "system"\nnameservers = "192.0.2.53"', "list of IP addresses"),
        ('nameservers = ["192.0.2.53"]', 'needs resolver = "system"'),
        ('resolver = "system"\nservers = ["192.0.2.53"]', "servers"),
    ],
)
def test_bad_dns_settings_are_named(dns: str, complaint: str) -> None:
    text = f'[inside]\naddress = "10.77.0.1"\n[outside]\naddress = "203.0.113.1"\n[dns]\n{dns}\n'
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        parse_config(tomllib.loads(text))


def test_configured_nameservers_are_the_ones_asked() -> None:
    from alg.assemble import dns_resolver

    text = (
        '[inside]\naddress = "10.77.0.1"\n[outside]\naddress = "203.0.113.1"\n'
        '[dns]\nresolver = "system"\nnameservers = ["192.0.2.53", "2001:db8::53"]\n'
    )
    config = parse_config(tomllib.loads(text))
    assert config.dns_nameservers == ("192.0.2.53", "2001:db8::53")
    resolver = dns_resolver(config.dns_nameservers)
    assert resolver._resolver.nameservers == ["192.0.2.53", "2001:db8::53"]  # type: ignore[attr-defined]
