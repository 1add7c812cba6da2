"""ICE in SDP (RFC 8839, trickle RFC 8840): the attribute set, candidate lines, a summary view.

An ALG that anchors media on its own public binding cannot honour the endpoints' ICE
candidates (they name inside addresses and the connectivity checks would bypass the
pinholes), so it strips the whole set; the names below are that set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from alg.errors import SdpParseError
from alg.sdp.fields import parse_port

# RFC 8839 §5 defines all but end-of-candidates, which is RFC 8840 §8.2 (trickle ICE).
ICE_ATTRIBUTE_NAMES: frozenset[str] = frozenset(
    {
        "candidate",
        "remote-candidates",
        "ice-lite",
        "ice-mismatch",
        "ice-ufrag",
        "ice-pwd",
        "ice-pacing",
        "ice-options",
        "end-of-candidates",
    }
)

_MAX_COMPONENT_DIGITS = 3  # component-id = 1*3DIGIT (RFC 8839 §5.1)
_MAX_PRIORITY_DIGITS = 10  # priority = 1*10DIGIT
_MAX_FOUNDATION_LENGTH = 32  # foundation = 1*32ice-char


@dataclass(frozen=True, slots=True)
class Candidate:
    """One `a=candidate` line (RFC 8839 §5.1).

    `extensions` keeps any further name/value pairs (e.g. `tcptype active`, `generation 0`)
    in order.
    """

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    candidate_type: str
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class IceAttributes:
    """The ICE attributes found at one level (session or one media section)."""

    ufrag: str | None = None
    pwd: str | None = None
    options: tuple[str, ...] = ()
    lite: bool = False
    mismatch: bool = False
    candidates: tuple[Candidate, ...] = ()
    remote_candidates: str | None = None
    end_of_candidates: bool = False

    @property
    def present(self) -> bool:
        return self != _NO_ICE


_NO_ICE = IceAttributes()


def _is_ice_char_string(text: str) -> bool:
    # ice-char = ALPHA / DIGIT / "+" / "/"
    return text.isascii() and all(c.isalnum() or c in "+/" for c in text)


def parse_candidate(value: str, line_number: int) -> Candidate:
    """`value` is what follows `a=candidate:`."""
    fields = value.split()
    if len(fields) < 8 or fields[6] != "typ":
        raise SdpParseError("a=candidate needs 8 fields ending in 'typ <type>'", line_number)
    foundation, component, transport, priority, address, port = fields[:6]
    if not foundation or len(foundation) > _MAX_FOUNDATION_LENGTH:
        raise SdpParseError("bad candidate foundation", line_number)
    if not _is_ice_char_string(foundation):
        raise SdpParseError("bad candidate foundation", line_number)
    if not component.isdigit() or len(component) > _MAX_COMPONENT_DIGITS:
        raise SdpParseError("bad candidate component id", line_number)
    if not priority.isdigit() or len(priority) > _MAX_PRIORITY_DIGITS:
        raise SdpParseError("bad candidate priority", line_number)
    candidate_port = parse_port(port, "candidate port", line_number)
    rest = fields[8:]
    if len(rest) % 2:
        raise SdpParseError("candidate extensions must be name/value pairs", line_number)
    related_address: str | None = None
    related_port: int | None = None
    extensions: list[tuple[str, str]] = []
    for name, item in zip(rest[::2], rest[1::2], strict=True):
        if name == "raddr" and related_address is None and not extensions:
            related_address = item
        elif name == "rport" and related_port is None and not extensions:
            related_port = parse_port(item, "candidate rport", line_number)
        else:
            extensions.append((name, item))
    return Candidate(
        foundation,
        int(component),
        transport,
        int(priority),
        address,
        candidate_port,
        fields[7],
        related_address,
        related_port,
        tuple(extensions),
    )


def collect_ice_attributes(attributes: Iterable[tuple[int, str, str | None]]) -> IceAttributes:
    """Summarise `(line_number, name, value)` attributes of one level; parses candidates."""
    ufrag: str | None = None
    pwd: str | None = None
    options: tuple[str, ...] = ()
    lite = mismatch = end_of_candidates = False
    candidates: list[Candidate] = []
    remote_candidates: str | None = None
    for line_number, name, value in attributes:
        if name not in ICE_ATTRIBUTE_NAMES:
            continue
        if name == "candidate":
            candidates.append(parse_candidate(value or "", line_number))
        elif name == "ice-ufrag":
            ufrag = value
        elif name == "ice-pwd":
            pwd = value
        elif name == "ice-options":
            options = tuple((value or "").split())
        elif name == "ice-lite":
            lite = True
        elif name == "ice-mismatch":
            mismatch = True
        elif name == "remote-candidates":
            remote_candidates = value
        elif name == "end-of-candidates":
            end_of_candidates = True
    return IceAttributes(
        ufrag,
        pwd,
        options,
        lite,
        mismatch,
        tuple(candidates),
        remote_candidates,
        end_of_candidates,
    )
