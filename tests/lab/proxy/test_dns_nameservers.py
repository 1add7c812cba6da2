"""`[dns] nameservers` against a real DNS server (labs/dns_server.py) in a lab
namespace: the ALG's resolver asks the configured server, not the host's, and turns
its answers into next hops (RFC 3263 §4.2: a URI with a port gets A records, one
without a port the transport's SRV records first)."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator

import pytest

from alg.assemble import dns_resolver
from alg.dns_resolver import ResolvedTarget
from alg.sip import SipUri, parse_uri
from labs.netns import Lab
from labs.nsock import run_in

pytestmark = pytest.mark.netns

SERVER = "127.0.0.53"


@pytest.fixture
def lab() -> Iterator[tuple[Lab, str]]:
    with Lab("sdn") as lab:
        host = lab.add_host("h")
        yield lab, host


def resolve(host: str, uri: str) -> tuple[ResolvedTarget, ...]:
    parsed = parse_uri(uri)
    assert isinstance(parsed, SipUri)
    resolver = dns_resolver([SERVER])
    return run_in(host, lambda: asyncio.run(resolver.resolve(parsed, random.Random(1))))


def test_the_configured_server_answers_and_is_asked(lab: tuple[Lab, str]) -> None:
    netns, host = lab
    server = netns.spawn(
        host,
        [sys.executable, "-m", "labs.dns_server", "--listen", SERVER,
         "--record", "provider.example=198.51.100.10",
         "--srv", "_sips._tcp.provider.example=10,5,5071,provider.example"],
    )  # fmt: skip
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    found = resolve(host, "sip:provider.example:5061;transport=tls")
    assert found == (ResolvedTarget("198.51.100.10", 5061, "tls", "provider.example"),)
    assert resolve(host, "sip:nowhere.example:5060") == ()
    # no port: the transport's SRV record gives it (RFC 3263 §4.2)
    by_srv = resolve(host, "sip:provider.example;transport=tls")
    assert by_srv == (ResolvedTarget("198.51.100.10", 5071, "tls", "provider.example"),)
    server.kill()
    asked = server.stdout.read()
    assert "query provider.example A" in asked and "query nowhere.example A" in asked
    assert "query _sips._tcp.provider.example SRV" in asked
