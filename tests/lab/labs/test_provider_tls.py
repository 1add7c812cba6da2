"""The provider scenario over SIP over TLS, both sides of sipwall.

As tests/lab/labs/test_provider_lab.py, but alice (baresip) speaks TLS to sipwall's
inside (10.77.0.1:5061, checking its certificate against the lab CA), the ALG reaches
Kamailio over TLS by name (its upstream is `provider.example;transport=tls`: the SRV
record `_sips._tcp.provider.example` and then the A record, from the provider's DNS
server at 198.51.100.10; the provider's certificate names only that domain, RFC 5922),
and the
provider reaches alice's registration at sipwall's outside TLS port (checking sipwall's
certificate): the masked Contact it stores names that port and transport=tls. Media is
anchored by the real agent as on UDP; each phone hears the other's tone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from test_provider_lab import _call  # the call with tones, anchoring and release checks

from labs import build
from labs.demo import GW_INSIDE, GW_OUTSIDE
from labs.provider_lab import DOMAIN, ProviderLab, running_provider
from labs.pytest_plugin import lab_fixture

pytestmark = [pytest.mark.netns, pytest.mark.peers]

lab = lab_fixture("provider")
CONTACT = rf"sip:sw-[a-z2-7]+@{re.escape(GW_OUTSIDE)}:5061;transport=tls"


@pytest.fixture(scope="module")
def provider(
    lab: build.RunningLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProviderLab]:
    keep = lambda: tmp_path_factory.mktemp("provider-tls-logs")  # noqa: E731
    with running_provider(lab, keep, tls=True) as pl:
        yield pl


def test_alice_registers_over_tls_with_a_contact_reachable_over_tls(
    provider: ProviderLab,
) -> None:
    log = provider.provider_log()
    saved = re.search(
        rf"provider: REGISTER sip:alice@{DOMAIN} from {re.escape(GW_OUTSIDE)}:\d+ "
        r"contact <([^>]+)>\S* over (\w+)",
        log,
    )
    assert saved is not None, log
    assert saved.group(2) == "tls", log
    assert re.fullmatch(CONTACT, saved.group(1)), saved.group(1)
    assert [r.contact for r in provider.registered() if r.aor == "alice"] == [saved.group(1)]
    assert "10.77.0." not in log, log


def test_incoming_call_reaches_alice_over_tls(provider: ProviderLab) -> None:
    alice, carol = provider.phone("alice"), provider.phone("carol")
    _call(provider, carol, alice, f"sip:alice@{DOMAIN}")
    log = provider.provider_log()
    # the provider sent carol's call to the masked Contact: sipwall's TLS port
    assert re.search(rf"provider: INVITE sip:carol@{DOMAIN} -> {CONTACT} via ", log), log


def test_outgoing_call_leaves_over_tls(provider: ProviderLab) -> None:
    alice, carol = provider.phone("alice"), provider.phone("carol")
    _call(provider, alice, carol, f"sip:carol@{DOMAIN}")
    log = provider.provider_log()
    # alice's INVITE reached the provider from sipwall over TLS (challenged, then routed)
    assert re.search(
        rf"provider: challenge INVITE sip:alice@{DOMAIN} from {re.escape(GW_OUTSIDE)}:\d+ "
        "over tls",
        log,
    ), log
    assert re.search(
        rf"provider: INVITE sip:alice@{DOMAIN} -> \S+ via {re.escape(GW_OUTSIDE)}:\d+ over tls",
        log,
    ), log


def test_alice_holds_a_tls_connection_to_sipwalls_inside(provider: ProviderLab) -> None:
    # what the kernel of the gateway sees: alice's connection to the TLS port, kept open
    # for her registration (and used by the calls above)
    alice = provider.lab.address("alice")
    done = provider.lab.run("gw", ["ss", "-Htn", "state", "established", "( sport = :5061 )"])
    peers = [line.split()[-1] for line in done.stdout.splitlines() if line.strip()]
    assert any(peer.startswith(f"{alice}:") for peer in peers), done.stdout
    assert all(
        f"{GW_INSIDE}:5061" in line or f"{GW_OUTSIDE}:5061" in line
        for line in done.stdout.splitlines()
        if line.strip()
    ), done.stdout


def test_sipwall_found_the_trunk_by_name(provider: ProviderLab) -> None:
    # the registration and the calls above crossed TLS to an address sipwall learnt
    # from the lab's DNS; the certificate it accepted names provider.example, no address
    asked = provider.dns_queries()
    assert f"_sips._tcp.{DOMAIN} SRV" in asked and f"{DOMAIN} A" in asked, asked
    alg_toml = (provider.work / "alg.toml").read_text()
    assert f'upstream = "{DOMAIN};transport=tls"' in alg_toml
