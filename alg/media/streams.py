"""What a session description means for the firewall: the bindings an inside party's
streams need, the peers an outside party's streams name, and the anchor plan. Pure.

* An inside stream needs (RFC 3264 §5, RFC 3550 §11, RFC 5761, RFC 8866 §5.14):
  - an RTP/RTCP pair (even RTP port, RTCP = RTP + 1) by default;
  - one port when rtcp-mux is already agreed (an answer with `a=rtcp-mux`), or the offer
    says `a=rtcp-mux-only` (RFC 8858);
  - in an *offer* with `a=rtcp-mux`: one port for RTP plus one for the RTCP fallback
    (RFC 5761 §5.1.3 lets the answerer refuse mux); the fallback is freed once the answer
    accepts mux;
  - a block of `count` ports (twice that without mux) for `m=<media> <port>/<count>`;
  - an RTCP port of its own (`a=rtcp:`, RFC 3605) that is not RTP + 1: two singles.
  A disabled stream (port 0, RFC 3264 §6) needs nothing; a stream on the hold address
  (`c=0.0.0.0`, RFC 3264 §8.4) has no endpoint of its own and keeps what it had.
* An outside stream names its peer: the address of its effective `c=` (RFC 8866 §5.7).
  A disabled stream or one on the hold address names none (nothing new is opened).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from alg.sdp import AnchorPlan, MediaAnchor, SessionDescription
from alg.sip.memo import Memo
from fcp.types import Binding, BindingKind, Endpoint, IPAddress


@dataclass(frozen=True, slots=True)
class Need:
    """One binding an inside stream needs: its inside endpoint and its shape."""

    address: IPAddress
    port: int
    kind: BindingKind
    block_size: int = 0

    @property
    def internal(self) -> Endpoint:
        return Endpoint(self.address, self.port)

    def __hash__(self) -> int:
        # Needs key the call's bindings and rules, hashed dozens of times per call; the
        # generated hash would call ipaddress's and Enum's __hash__, both interpreted
        # Python. Equal needs have equal ports, so this is consistent with __eq__; needs
        # that differ only in address or kind just share a bucket (a call has a few).
        return hash((self.port, self.block_size))


StreamNeeds = tuple[Need, ...]  # (), (pair|single|block,), or (rtp single, rtcp single)


def _parse_ip_literal(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None  # a name (RFC 8866 allows FQDNs): nothing to bind or restrict to


# ipaddress parses in interpreted Python (~3 us), several times per anchored call, and the
# phones' addresses recur: a bounded memo (alg.sip.memo; a name is not remembered).
_IP_LITERALS: Final = Memo(_parse_ip_literal)


def ip_literal(text: str | None) -> IPAddress | None:
    return None if text is None else _IP_LITERALS(text)


def has_attribute(sdp: SessionDescription, index: int, name: str) -> bool:
    return sdp.media[index].attribute(name) is not None


def needs_of(sdp: SessionDescription, index: int, *, offer: bool, mux_agreed: bool) -> StreamNeeds:
    """The bindings inside stream `index` needs (see the module docstring). `offer`: the
    description is an offer (mux not agreed yet); `mux_agreed`: both sides said rtcp-mux."""
    stream = sdp.stream(index)
    if stream.disabled or stream.connection is None:
        return ()
    if stream.connection.is_hold_address:
        return ()
    address = ip_literal(stream.connection.address)
    if address is None:
        return ()
    port, count = stream.rtp_port, stream.port_count
    mux_only = has_attribute(sdp, index, "rtcp-mux-only")
    # an offer keeps a fallback RTCP port until the answer accepts mux; an answer with
    # a=rtcp-mux has accepted it (RFC 5761 §5.1.1, §5.1.3; RFC 8858 for mux-only)
    single = stream.rtcp_mux and (mux_agreed or mux_only) if offer else stream.rtcp_mux
    if count > 1:
        size = count if single else 2 * count
        if port + size - 1 > 0xFFFF:
            return ()
        return (Need(address, port, BindingKind.BLOCK, size),)
    if single:
        return (Need(address, port, BindingKind.SINGLE),)
    rtcp_port = stream.rtcp_port
    if stream.rtcp_mux or (rtcp_port is not None and rtcp_port != port + 1):
        # mux offered (fallback RTCP port, RFC 5761 §5.1.3) or RTCP elsewhere (RFC 3605)
        fallback = rtcp_port if rtcp_port not in (None, port) else port + 1
        if fallback is None or fallback > 0xFFFF:
            return (Need(address, port, BindingKind.SINGLE),)
        return (
            Need(address, port, BindingKind.SINGLE),
            Need(address, fallback, BindingKind.SINGLE),
        )
    if port % 2 or port >= 0xFFFF:
        # an odd RTP port cannot be paired with parity kept: RTP and RTCP separately
        return (Need(address, port, BindingKind.SINGLE),) + (
            (Need(address, port + 1, BindingKind.SINGLE),) if port < 0xFFFF else ()
        )
    return (Need(address, port, BindingKind.RTP_PAIR),)


def mux_agreed(inside: SessionDescription, outside: SessionDescription, index: int) -> bool:
    """Both descriptions carry `a=rtcp-mux` on stream `index` (RFC 5761 §5.1.1)."""
    if index >= len(inside.media) or index >= len(outside.media):
        return False
    return inside.media[index].rtcp_mux and outside.media[index].rtcp_mux


def all_needs(
    sdp: SessionDescription, *, offer: bool, agreed_with: SessionDescription | None = None
) -> dict[int, StreamNeeds]:
    """Needs of every stream of an inside description (`offer`: it is the offer);
    `agreed_with`: the outside description of the same exchange, when known (mux)."""
    out: dict[int, StreamNeeds] = {}
    for index in range(len(sdp.media)):
        mux = agreed_with is not None and mux_agreed(sdp, agreed_with, index)
        needs = needs_of(sdp, index, offer=offer, mux_agreed=mux)
        if needs:
            out[index] = needs
    return out


def peer_of(sdp: SessionDescription, index: int) -> IPAddress | None:
    """Where an outside stream sends from / wants media: None if disabled or on hold."""
    if index >= len(sdp.media):
        return None
    stream = sdp.stream(index)
    if stream.disabled or stream.connection is None or stream.connection.is_hold_address:
        return None
    return ip_literal(stream.connection.address)


def media_anchor(needs: StreamNeeds, bindings: Sequence[Binding], count: int) -> MediaAnchor:
    first = bindings[0]
    rtcp = bindings[1].external_ports[0] if len(bindings) > 1 else None
    if needs[0].kind is BindingKind.SINGLE and rtcp is None:
        rtcp = None  # muxed: RTCP on the RTP port
    return MediaAnchor(
        first.external_address,
        first.external_ports[0],
        rtcp,
        port_count=count if count > 1 else None,
    )


def anchor_plan(
    sdp: SessionDescription,
    bound: Mapping[int, tuple[StreamNeeds, Sequence[Binding]]],
    public: IPAddress,
    *,
    strip_ice: bool,
) -> AnchorPlan:
    """The `alg.sdp.anchor` plan that moves every bound stream to its public binding and
    `o=` to the public address (RFC 8866 §5.2 names the originator's address)."""
    media = {
        index: media_anchor(needs, bindings, sdp.stream(index).port_count)
        for index, (needs, bindings) in bound.items()
    }
    return AnchorPlan(media=media, origin_address=public, strip_ice=strip_ice)
