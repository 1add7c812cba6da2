"""Topology-hiding tokens survive an ALG restart, against a real provider (Kamailio).

Tokens are the masked texts sealed with AES-SIV under a key from the media secret the
ALG keeps in its state directory (alg/media/masking.py): no table has to survive. So

* the Contact the provider holds for alice (registered through sipwall before the
  restart, `sip:sw-<token>@<our outside address>`) still reaches her afterwards;
* a call alice made that was up across the restart can still be hung up from the
  outside: carol's BYE comes to the dialog's masked Contact and must be restored to
  reach alice.

Both tests fail with the LRU of tokens this replaced: carol's INVITE after the restart is
never restored (the call is closed), and alice never gets carol's BYE.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from labs import build
from labs.demo import GW_OUTSIDE
from labs.provider_lab import (
    DOMAIN,
    ProviderLab,
    running_provider,
    wait_agent_empty,
)
from labs.pytest_plugin import lab_fixture

pytestmark = [pytest.mark.netns, pytest.mark.peers]

lab = lab_fixture("provider")


@pytest.fixture(scope="module")
def provider(
    lab: build.RunningLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProviderLab]:
    with running_provider(lab, lambda: tmp_path_factory.mktemp("restart-logs")) as pl:
        yield pl


def _alice_contact(provider: ProviderLab) -> str:
    [contact] = [r.contact for r in provider.registered() if r.aor == "alice"]
    assert re.fullmatch(rf"sip:sw-[a-z2-7]+@{re.escape(GW_OUTSIDE)}:5060", contact), contact
    return contact


def _established(provider: ProviderLab, caller: str, callee: str) -> None:
    calling, called = provider.phone(caller), provider.phone(callee)
    calling.dial(f"sip:{callee}@{DOMAIN}")
    event = calling.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"), timeout=30)
    assert event.get("type") == "CALL_ESTABLISHED", event
    called.wait_event("CALL_ESTABLISHED", timeout=20)


def _hung_up_by_carol(provider: ProviderLab) -> None:
    alice, carol = provider.phone("alice"), provider.phone("carol")
    carol.hangup()
    carol.wait_event("CALL_CLOSED", timeout=15)
    alice.wait_event("CALL_CLOSED", timeout=15)  # the BYE reached her through us


def test_the_contact_registered_before_a_restart_still_reaches_the_phone(
    provider: ProviderLab,
) -> None:
    contact = _alice_contact(provider)
    registers = provider.provider_log().count(f"provider: REGISTER sip:alice@{DOMAIN}")
    provider.restart_alg()
    _established(provider, "carol", "alice")
    # the provider routed by what it held from before the restart: no new REGISTER
    log = provider.provider_log()
    assert log.count(f"provider: REGISTER sip:alice@{DOMAIN}") == registers, log
    assert f"-> {contact} " in log, log
    assert _alice_contact(provider) == contact
    _hung_up_by_carol(provider)
    wait_agent_empty(provider)


def test_a_call_up_across_a_restart_is_hung_up_from_the_outside(provider: ProviderLab) -> None:
    # alice calls out: carol's BYE goes to the Contact of this dialog (RFC 3261 §12.2.1.1),
    # masked by the ALG before its restart
    _established(provider, "alice", "carol")
    provider.restart_alg()
    _hung_up_by_carol(provider)
    # Not checked here: the agent's bindings of that call. The restarted ALG does not know
    # the call (its media state is not kept), so they are left to their lifetime.
