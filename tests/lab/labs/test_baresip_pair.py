"""Real peers before sipwall sits between them: two baresip phones in two namespaces call
each other directly by IP; each one's recording holds the *other* phone's tone."""

from __future__ import annotations

from pathlib import Path

import pytest

from labs.baresip import Phone, PhoneConfig
from labs.pytest_plugin import lab_fixture
from labs.tone import analyse

pytestmark = [pytest.mark.netns, pytest.mark.peers]

lab = lab_fixture(Path(__file__).with_name("pair.toml"))


def test_two_phones_hear_each_others_tone(lab, tmp_path: Path) -> None:
    alice_cfg = PhoneConfig("alice", lab.address("alice"), tone_hz=440)
    bob_cfg = PhoneConfig("bob", lab.address("bob"), tone_hz=660)
    with (
        Phone(lab, "alice", alice_cfg, tmp_path / "alice") as alice,
        Phone(lab, "bob", bob_cfg, tmp_path / "bob") as bob,
    ):
        alice.dial(bob_cfg.aor)
        bob.wait_event("CALL_ESTABLISHED")
        alice.wait_event("CALL_ESTABLISHED")
        # 1.5 s of decoded audio on both sides, then hang up (closing the WAV files)
        alice.wait_heard(1.5)
        bob.wait_heard(1.5)
        alice.hangup()
        alice.wait_event("CALL_CLOSED")
        bob.wait_event("CALL_CLOSED")
        heard_by_alice, heard_by_bob = alice.heard(), bob.heard()
    assert heard_by_alice is not None and heard_by_bob is not None
    a, b = analyse(heard_by_alice), analyse(heard_by_bob)
    assert abs(a.frequency - 660) < 5, a
    assert abs(b.frequency - 440) < 5, b
    assert a.purity > 0.8 and b.purity > 0.8, (a, b)
    assert a.rms_dbfs > -30 and b.rms_dbfs > -30, (a, b)
    # the phones are gone from the lab's books once stopped
    assert lab.state().processes == ()
