"""The leak scan (alg.media.masking.InsideNetworks.find_in) finds every inside literal the
families of the inside networks can hold, whatever is remembered between scans."""

from __future__ import annotations

from alg.media import masking
from alg.media.masking import InsideNetworks

OUTBOUND = (
    b"INVITE sip:bob@203.0.113.20 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.1;branch=z9hG4bK1\r\n"
    b"Call-ID: 1@203.0.113.1\r\nContent-Length: 0\r\n\r\n"
)


def test_an_inside_literal_is_found_after_outside_ones_were_remembered() -> None:
    inside = InsideNetworks.of("10.77.0.0/24")
    assert inside.find_in(OUTBOUND) is None
    assert inside.find_in(OUTBOUND) is None  # now from remembered verdicts
    leaked = OUTBOUND.replace(b"Call-ID: 1@203.0.113.1", b"Call-ID: 1@10.77.0.10")
    assert inside.find_in(leaked) == "10.77.0.10"


def test_an_ipv4_inside_is_found_inside_an_ipv4_mapped_ipv6_literal() -> None:
    inside = InsideNetworks.of("10.77.0.0/24")
    assert inside.find_in(b"Contact: <sip:a@[::ffff:10.77.0.10]>") == "10.77.0.10"


def test_ipv6_literals_are_searched_when_the_inside_has_ipv6() -> None:
    inside = InsideNetworks.of("10.77.0.0/24", "fd00:77::/64")
    assert inside.find_in(b"c=IN IP6 fd00:77::10\r\n") == "fd00:77::10"
    assert inside.find_in(b"c=IN IP6 2001:db8::10\r\n") is None


def test_remembered_verdicts_stay_bounded() -> None:
    inside = InsideNetworks.of("10.77.0.0/24")
    for n in range(masking._VERDICTS_LIMIT + 10):
        inside.contains(f"198.51.{n // 256 % 256}.{n % 256}")
    assert len(inside._verdicts) <= masking._VERDICTS_LIMIT
    assert inside.contains("10.77.0.99") and not inside.contains("198.51.0.1")
