"""Issue #6: sipwall in front of a real SIP provider (Kamailio, labs/kamailio/provider.cfg).

alice (inside, baresip) registers `sip:alice@provider.example` through sipwall; the
provider challenges her and stores a Contact at sipwall's outside address. carol
(outside, baresip) is registered at the provider directly. Calls both ways go through
the provider and sipwall with media anchored by the real agent; each phone hears the
other's tone, and the agent holds nothing once the call is over.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from labs import build
from labs.baresip import Phone
from labs.demo import GW_OUTSIDE
from labs.provider_lab import (
    DOMAIN,
    TONES,
    ProviderLab,
    running_provider,
    wait_agent_empty,
    wait_for,
)
from labs.pytest_plugin import lab_fixture
from labs.tone import analyse

pytestmark = [pytest.mark.netns, pytest.mark.peers]

lab = lab_fixture("provider")
TALK_SECONDS = 1.5
TONE_TOLERANCE_HZ = 5.0


@pytest.fixture(scope="module")
def provider(
    lab: build.RunningLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProviderLab]:
    with running_provider(lab, lambda: tmp_path_factory.mktemp("provider-logs")) as pl:
        yield pl


def test_registration_through_sipwall_is_challenged_and_stores_our_outside_address(
    provider: ProviderLab,
) -> None:
    log = provider.provider_log()
    # Kamailio challenged the REGISTER that came from sipwall's outside address ...
    assert f"provider: challenge REGISTER sip:alice@{DOMAIN} from {GW_OUTSIDE}:5060" in log, log
    # ... and then saved it, with the Contact masked to sipwall's outside address
    saved = re.search(
        rf"provider: REGISTER sip:alice@{DOMAIN} from {GW_OUTSIDE}:5060 contact <([^>]+)>", log
    )
    assert saved is not None, log
    contacts = [r for r in provider.registered() if r.aor == "alice"]
    assert [c.contact for c in contacts] == [saved.group(1)], provider.registered()
    contact = contacts[0].contact
    assert re.fullmatch(rf"sip:sw-[a-z2-7]+@{re.escape(GW_OUTSIDE)}:5060", contact), contact
    # no inside address anywhere in what the provider's location service holds
    dump = provider.kamcmd("ul.dump") or ""
    assert "10.77.0." not in dump, dump
    assert "10.77.0." not in log, log


def _call(provider: ProviderLab, caller: Phone, callee: Phone, uri: str) -> None:
    caller.dial(uri)
    event = caller.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"), timeout=20)
    assert event.get("type") == "CALL_ESTABLISHED", event
    callee.wait_event("CALL_ESTABLISHED", timeout=20)
    for phone in (caller, callee):
        phone.wait_heard(TALK_SECONDS, timeout=20)
    # media is anchored: the agent holds the call's bindings and pinholes meanwhile
    bindings, rules = provider.agent("bindings"), provider.agent("rules")
    assert bindings and rules, (bindings, rules)
    assert all(b["external_address"] == GW_OUTSIDE for b in bindings), bindings
    caller.hangup()
    caller.wait_event("CALL_CLOSED", timeout=15)
    callee.wait_event("CALL_CLOSED", timeout=15)
    for phone, other in ((caller, callee), (callee, caller)):
        # the recording is closed at hangup; its size no longer changes
        path = wait_for(f"{phone.host}'s recording", 10, phone.heard)
        tone = analyse(path)
        expect = TONES[other.host]
        assert abs(tone.frequency - expect) < TONE_TOLERANCE_HZ, (phone.host, tone)
        assert tone.purity > 0.8 and tone.rms_dbfs > -30, (phone.host, tone)
    wait_agent_empty(provider)


def test_incoming_call_from_the_provider_reaches_the_inside_phone(provider: ProviderLab) -> None:
    alice, carol = provider.phone("alice"), provider.phone("carol")
    _call(provider, carol, alice, f"sip:alice@{DOMAIN}")
    log = provider.provider_log()
    # the provider routed carol's call by its location service to sipwall's outside
    # address (the masked Contact), after carol had authenticated
    assert re.search(
        rf"provider: INVITE sip:carol@{DOMAIN} -> sip:sw-[a-z2-7]+@{GW_OUTSIDE}:5060", log
    ), log


def test_outgoing_call_goes_through_the_provider(provider: ProviderLab) -> None:
    alice, carol = provider.phone("alice"), provider.phone("carol")
    _call(provider, alice, carol, f"sip:carol@{DOMAIN}")
    log = provider.provider_log()
    # the provider challenged alice's INVITE (407) as relayed by sipwall, and routed the
    # authenticated retry to carol's registered contact
    assert f"provider: challenge INVITE sip:alice@{DOMAIN} from {GW_OUTSIDE}:5060" in log, log
    carol_ip = provider.lab.address("carol")
    assert re.search(
        rf"provider: INVITE sip:alice@{DOMAIN} -> sip:carol-[^@]*@{carol_ip}:5060 "
        rf"via {GW_OUTSIDE}:5060",
        log,
    ), log
