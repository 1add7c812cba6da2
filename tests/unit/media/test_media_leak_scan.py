"""The leak scan (alg.media.masking.InsideNetworks.find_in) finds every inside literal the
families of the inside networks can hold, whatever is remembered between scans."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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


def _every_literal_scan(inside: InsideNetworks, data: bytes) -> str | None:
    """The reference: every IPv4 literal the pattern finds, in order, then IPv6 ones."""
    for pattern in (masking._IPV4_RE, masking._IPV6_RE):
        for match in pattern.finditer(data):
            text = match.group(0).decode("ascii", "replace")
            if inside.contains(text):
                return text
    return None


NETWORKS = st.sampled_from(
    [
        ("10.0.0.0/8",),
        ("10.77.0.0/24",),
        ("172.16.0.0/12", "192.168.0.0/16"),
        ("100.64.0.0/10", "10.0.0.0/8"),
        ("0.0.0.0/0",),  # too many first octets: the pattern scan
        ("16.0.0.0/4",),  # exactly 16 first octets: the texts
    ]
)
# Bytes rich in what confuses a literal search: digits, dots, colons, octets of ours.
PIECES = st.lists(
    st.sampled_from(
        [
            b"10.",
            b"172.",
            b"192.",
            b"168.",
            b"16.",
            b"31.",
            b"64.",
            b"1",
            b"0",
            b"7",
            b"9",
            b"25",
            b"255",
            b"256",
            b"110.",
            b"010.",
            b".",
            b":",
            b"::ffff:",
            b"@",
            b" ",
            b"a",
            b"\r\n",
            b"sip:",
            b"c=IN IP4 ",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(networks=NETWORKS, data=PIECES)
def test_the_first_octet_search_finds_what_a_scan_of_every_literal_finds(
    networks: tuple[str, ...], data: bytes
) -> None:
    inside = InsideNetworks.of(*networks)
    assert inside.find_in(data) == _every_literal_scan(inside, data)


def test_octet_texts_are_the_first_octets_of_the_ipv4_networks() -> None:
    assert InsideNetworks.of("10.0.0.0/8")._ipv4_starts == (b"10.",)
    assert InsideNetworks.of("172.16.0.0/12", "192.168.0.0/16")._ipv4_starts == (
        b"172.",
        b"192.",
    )
    assert len(InsideNetworks.of("16.0.0.0/4")._ipv4_starts) == 16
    assert InsideNetworks.of("0.0.0.0/3")._ipv4_starts == ()  # 32 first octets: the pattern
    assert InsideNetworks.of("fd00::/8")._ipv4_starts == ()


def test_a_literal_is_found_at_either_end_and_never_inside_a_longer_number() -> None:
    inside = InsideNetworks.of("10.0.0.0/8")
    assert inside.find_in(b"10.1.2.3") == "10.1.2.3"
    assert inside.find_in(b"x 10.1.2.3") == "10.1.2.3"
    assert inside.find_in(b"110.1.2.3 5.10.1.2.3 10.1.2.3456 010.1.2.3") is None
    assert inside.find_in(b"a=x 110.1.2.3 then 10.9.9.9 and 10.1.1.1") == "10.9.9.9"
