from __future__ import annotations

from typing import Any

import pytest

from filter_agent.drivers.fake import FakeNftDriver
from filter_agent.errors import DriverError
from filter_agent.model import Binding, BindingKind, Direction, Protocol, Rule
from filter_agent.plan import (
    Change,
    TableSpec,
    plan_change,
    plan_setup,
    plan_teardown,
)

SPEC = TableSpec()
B = Binding(
    "b1",
    "alg",
    "call1",
    Protocol.UDP,
    "10.77.0.10",
    4000,
    "203.0.113.1",
    (20000, 20001),
    BindingKind.RTP_PAIR,
    60.0,
)
R = Rule("r1", "alg", "b1", "call1", Direction.BOTH, "203.0.113.20", 5000, None, 30.0)
R_ANY = Rule("r2", "alg", "b1", "call1", Direction.INBOUND, "203.0.113.30", None, None, 30.0)


def fresh() -> FakeNftDriver:
    fake = FakeNftDriver()
    fake.apply(plan_setup(SPEC))
    return fake


def test_setup_script_golden(golden: Any) -> None:
    golden("setup.nft", plan_setup(SPEC).text)


def test_setup_is_idempotent_and_keeps_elements(golden: Any) -> None:
    fake = fresh()
    fake.apply(plan_change(SPEC, Change(put_bindings=(B,)), now=0))
    before = fake.dump()
    fake.apply(plan_setup(SPEC))
    assert fake.dump() == before
    golden("dump_binding.txt", before)


def test_reserve_and_rule_transaction_golden(golden: Any) -> None:
    tx = plan_change(SPEC, Change(put_bindings=(B,), put_rules=((R, B), (R_ANY, B))), now=0)
    golden("tx_binding_rules.json", tx)
    fake = fresh()
    fake.apply(tx)
    golden("dump_binding_rules.txt", fake.dump())


def test_release_transaction_golden_and_guard(golden: Any) -> None:
    fake = fresh()
    fake.apply(plan_change(SPEC, Change(put_bindings=(B,), put_rules=((R, B),)), now=0))
    release = plan_change(SPEC, Change(delete_bindings=(B,), delete_rules=((R, B),)), now=5)
    golden("tx_release.json", release)
    fake.apply(release)
    assert fake.elements() == ()
    # Releasing again (or after the kernel timed the elements out) is not an error.
    fake.apply(release)


def test_plain_delete_of_missing_element_fails_like_the_kernel() -> None:
    fake = fresh()
    doc = {
        "nftables": [
            {
                "delete": {
                    "element": {
                        "family": "inet",
                        "table": "sipwall",
                        "name": "in4",
                        "elem": [{"concat": ["udp", "10.77.0.10", 1, "203.0.113.20", 2]}],
                    }
                }
            }
        ]
    }
    with pytest.raises(DriverError):
        fake.apply(doc)


def test_lifetime_refresh_keeps_counters() -> None:
    fake = fresh()
    fake.apply(plan_change(SPEC, Change(put_bindings=(B,), put_rules=((R, B),)), now=0))
    key = ("udp", "10.77.0.10", 4000, "203.0.113.20", 5000)
    fake.count("in4", key, 3, 300)
    longer = Rule(**{**R.__dict__, "expires_at": 50.0})
    fake.now = 10
    fake.apply(plan_change(SPEC, Change(put_rules=((longer, B),)), now=10))
    (elem,) = [e for e in fake.elements() if e.set == "in4" and e.key == key]
    assert (elem.packets, elem.timeout, elem.expires) == (3, 40, 40)


def test_elements_time_out_in_the_fake() -> None:
    fake = fresh()
    fake.apply(plan_change(SPEC, Change(put_bindings=(B,), put_rules=((R, B),)), now=0))
    fake.now = 29.9
    assert any(e.set == "in4" for e in fake.elements())
    fake.now = 30
    assert not any(e.set.startswith(("in", "out")) for e in fake.elements())
    fake.now = 60
    assert fake.elements() == ()


def test_failed_transaction_changes_nothing() -> None:
    fake = fresh()
    good = plan_change(SPEC, Change(put_bindings=(B,)), now=0)
    bad = {
        "nftables": good["nftables"]
        + [
            {
                "add": {
                    "element": {
                        "family": "inet",
                        "table": "sipwall",
                        "name": "in4",
                        "elem": [{"concat": ["udp", "10.77.0.999"]}],
                    }
                }
            }
        ]
    }
    with pytest.raises(DriverError):
        fake.apply(bad)
    assert fake.elements() == ()


def test_remapping_a_key_to_other_data_is_refused() -> None:
    fake = fresh()
    fake.apply(plan_change(SPEC, Change(put_bindings=(B,)), now=0))
    other = Binding(**{**B.__dict__, "internal_port": 6000})
    with pytest.raises(DriverError):
        fake.apply(plan_change(SPEC, Change(put_bindings=(other,)), now=0))


def test_teardown_is_idempotent() -> None:
    fake = fresh()
    fake.apply(plan_teardown(SPEC))
    assert not fake.table_exists()
    fake.apply(plan_teardown(SPEC))


def test_timeouts_are_whole_positive_seconds() -> None:
    almost = Rule(**{**R.__dict__, "expires_at": 0.2})
    tx = plan_change(SPEC, Change(put_rules=((almost, B),)), now=0)
    elems = tx["nftables"][0]["add"]["element"]["elem"]
    assert {e["elem"]["timeout"] for e in elems} == {1}


def test_mark_must_be_one_bit() -> None:
    with pytest.raises(ValueError, match="single bit"):
        TableSpec(mark=3)
