"""A firewall reload mid-call, heard by real phones: the agent repairs it and audio resumes.

On the `basic` lab, with the demo's agent and ALG (labs.demo), alice (inside, 440 Hz)
calls carol (outside, 660 Hz) with baresip. Mid-call the gateway's operator reloads the
firewall the harsh way: `nft flush ruleset` (every table goes, the agent's `inet sipwall`
with it), the operator's own rules come back (the lab's table, forward policy drop), and
the connection-tracking table is flushed too — so no established flow survives on a
NAT decision taken before the reload, and media can only come back through the bindings
the agent rebuilds. Each phone must then hear the other's tone again: the audio recorded
after the rebuild is analysed on its own.
"""

from __future__ import annotations

import array
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.baresip import Phone
from labs.demo import ALICE_HZ, CAROL_HZ, MIN_PURITY, TONE_TOLERANCE_HZ, Demo
from labs.netns import poll_until
from labs.pytest_plugin import unique_lab_name
from labs.tone import analyse, read_wav

pytestmark = [pytest.mark.netns, pytest.mark.kernel, pytest.mark.peers]

RESUMED_SECONDS = 1.5  # audio each phone must hear after the rebuild


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    d = Demo(tmp_path / "out", unique_lab_name(), say=lambda _: None)
    try:
        d.build()
        d.start_agent_and_alg()
        yield d
    finally:
        if d.lab is not None:
            try:
                d.stop_daemons()
            finally:
                d.lab.close()


def _samples(phone: Phone) -> int:
    heard = phone.heard()
    if heard is None:
        return 0
    return max(heard.stat().st_size - 44, 0) // 2  # 16-bit mono after the WAV header


def _tail(phone: Phone, first_sample: int, out: Path) -> Path:
    """The part of `phone`'s recording from `first_sample` on, as a WAV file of its own."""
    heard = phone.heard()
    assert heard is not None
    rate, samples = read_wav(heard)
    tail = array.array("h", samples[first_sample:])
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tail.tobytes())
    return out


def _table_holds_the_call(demo: Demo) -> bool:
    lab = demo.lab
    assert lab is not None
    done = lab.run("gw", ["nft", "-j", "list", "map", "inet", "sipwall", "dnat4"], check=False)
    return done.returncode == 0 and '"elem"' in done.stdout


def test_audio_resumes_after_a_firewall_reload_that_also_clears_conntrack(
    demo: Demo, tmp_path: Path
) -> None:
    lab = demo.lab
    assert lab is not None
    alice, carol = demo.phones()
    with alice, carol:
        poll_until("alice registered", 15, alice.registered)
        alice.dial(f"sip:carol@{lab.address('carol')}")
        assert alice.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"), 15)["type"] == (
            "CALL_ESTABLISHED"
        )
        carol.wait_event("CALL_ESTABLISHED", 15)
        for phone in (alice, carol):
            phone.wait_heard(1.0, timeout=15)

        # the operator's reload: everything flushed, their own rules back, conntrack empty
        assert lab.run("gw", ["nft", "flush", "ruleset"], check=False).returncode == 0
        firewall = lab.topology.host("gw").firewall
        assert firewall is not None
        rules = tmp_path / "operator.nft"
        rules.write_text(firewall.ruleset())
        lab.run("gw", ["nft", "-f", str(rules)])
        lab.run("gw", ["conntrack", "-F"], check=False)  # exit 1 when already empty
        flushed = time.monotonic()
        poll_until(
            "the agent's table rebuilt with the call", 5, lambda: _table_holds_the_call(demo)
        )
        rebuilt = time.monotonic()
        marks = {p.host: _samples(p) for p in (alice, carol)}

        need = int(RESUMED_SECONDS * 8000)
        for phone in (alice, carol):
            poll_until(
                f"{phone.host} hearing audio again",
                15,
                lambda p=phone: _samples(p) - marks[p.host] >= need,  # type: ignore[misc]
            )
        alice.hangup()
        alice.wait_event("CALL_CLOSED", 10)
        carol.wait_event("CALL_CLOSED", 10)

        for phone, expect in ((alice, CAROL_HZ), (carol, ALICE_HZ)):
            tone = analyse(_tail(phone, marks[phone.host], tmp_path / f"{phone.host}-after.wav"))
            assert abs(tone.frequency - expect) <= TONE_TOLERANCE_HZ, (phone.host, tone)
            assert tone.purity >= MIN_PURITY, (phone.host, tone)

    took = rebuilt - flushed
    assert took <= 2.0, f"the agent took {took:.2f} s to rebuild its table"
    poll_until("the agent empty after the hangup", 10, lambda: not demo.ctl("bindings"))
