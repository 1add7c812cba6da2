"""Anti-forgery with the location service: an inside offer's media address may be the
address its contact registered from (alg.media.antiforgery, ARCHITECTURE §3 step 2)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from media_testing import BOB, START, Alg, request, sdp

from alg.location import Binding, MemoryLocationStore, Put, Source
from alg.media.actions import Reject
from alg.media.core import MediaConfig, MediaCore
from alg.proxy_model import Endpoint

# alice's phone registered itself from 10.77.0.10; her calls reach us relayed by an
# inside proxy at 10.77.0.2, so the signalling source is not her media address
RELAY = Endpoint("inside", "UDP", "10.77.0.2", 5060)
CONTACT = "sip:alice@10.77.0.10:5060"


def registered(contact: str = CONTACT, source: str = "10.77.0.10") -> MemoryLocationStore:
    store = MemoryLocationStore()
    store.apply([
        Put(
            Binding(
                aor="sip:alice@example.com",
                contact=contact,
                expires_at=START + 3600,
                call_id="reg-1",
                cseq=1,
                registered_at=START,
                source=Source(source, 5060, "UDP"),
            )
        )
    ])  # fmt: skip
    return store


@pytest.fixture
def with_store() -> Iterator[tuple[Alg, MemoryLocationStore]]:
    alg = Alg()
    store = registered()
    config = alg.core.config
    alg.core = MediaCore(
        MediaConfig(config.hiding, config.secret, registrations=store), alg.core.pool
    )
    yield alg, store
    alg.assert_no_leak()
    alg.close()


def relayed_invite(
    media: str, *, from_: str = "<sip:alice@example.com>;tag=a1", **kw: str
) -> bytes:
    return request(
        "INVITE",
        via="SIP/2.0/UDP 10.77.0.2:5060;branch=z9hG4bKr1",
        from_=from_,
        contact=kw.get("contact", f"<{CONTACT}>"),
        call_id=kw.get("call_id", "c1@example.com"),
        body=sdp(media),
    )


def test_media_at_the_registered_source_is_accepted(
    with_store: tuple[Alg, MemoryLocationStore],
) -> None:
    alg, _ = with_store
    out = alg.forward_request(relayed_invite("10.77.0.10"), RELAY, BOB)
    assert not isinstance(out, Reject), out
    assert str(alg.bindings()[0].internal) == "10.77.0.10:40000"  # type: ignore[attr-defined]


def test_media_elsewhere_is_488(with_store: tuple[Alg, MemoryLocationStore]) -> None:
    alg, _ = with_store
    out = alg.forward_request(relayed_invite("10.77.0.99"), RELAY, BOB)
    assert isinstance(out, Reject) and out.status == 488
    assert alg.bindings() == [] and alg.performed == []


def test_another_contact_of_the_aor_does_not_count(
    with_store: tuple[Alg, MemoryLocationStore],
) -> None:
    alg, _ = with_store
    out = alg.forward_request(
        relayed_invite("10.77.0.10", contact="<sip:alice@10.77.0.33:5060>"), RELAY, BOB
    )
    assert isinstance(out, Reject) and out.status == 488


def test_another_aor_claiming_the_contact_is_488(
    with_store: tuple[Alg, MemoryLocationStore],
) -> None:
    alg, _ = with_store
    out = alg.forward_request(
        relayed_invite("10.77.0.10", from_="<sip:mallory@example.com>;tag=m1"), RELAY, BOB
    )
    assert isinstance(out, Reject) and out.status == 488


def test_an_expired_registration_does_not_count(
    with_store: tuple[Alg, MemoryLocationStore],
) -> None:
    alg, _ = with_store
    alg.clock.now = START + 3601
    out = alg.forward_request(relayed_invite("10.77.0.10"), RELAY, BOB)
    assert isinstance(out, Reject) and out.status == 488


def test_without_the_location_service_the_relay_is_refused() -> None:
    alg = Alg()  # registrations not wired: only the signalling source counts
    out = alg.forward_request(relayed_invite("10.77.0.10"), RELAY, BOB)
    assert isinstance(out, Reject) and out.status == 488
    alg.close()
