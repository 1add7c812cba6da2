"""Lossless SDP (RFC 8866, formerly RFC 4566) and the rewrites a SIP ALG needs. Sans-I/O.

Reading::

    sdp = parse_sdp(body)            # SessionDescription; raises only SdpParseError
    sdp.to_bytes() == body           # always, until edited: every line is kept raw
    sdp.origin                       # Origin (o=)
    sdp.session                      # SessionSection: connection, direction, attributes, ice
    sdp.media[i]                     # MediaSection: media_line (m=), connection(s), rtcp,
                                     #   rtcp_mux, direction, attributes, ice (candidates)
    sdp.stream(i) / sdp.streams      # MediaStream: effective address, ports, RTCP, hold...
    sdp.effective_connection(i), sdp.effective_direction(i), sdp.is_on_hold(i),
    sdp.is_disabled(i), sdp.effective_rtcp_port(i)

Rewriting (each returns a new SessionDescription; untouched lines stay byte-exact, m-line
count and order never change; impossible requests raise SdpRewriteError)::

    anchor(sdp, AnchorPlan(media={0: MediaAnchor(ip, rtp_port, rtcp_port)},
                           origin_address=ip, strip_ice=True))     # what the ALG calls
    set_media_transport(sdp, i, ip, rtp_port, rtcp_port=None, port_count=None)
    set_rtcp(sdp, i, port, address=None)
    set_origin_address(sdp, ip)
    set_session_connection(sdp, ip)
    strip_ice(sdp)

Addresses passed in are `ipaddress.IPv4Address`/`IPv6Address`; strings read out are as
written in the SDP. Errors come from `alg.errors`.
"""

from alg.sdp.fields import (
    Attribute,
    Connection,
    Direction,
    MediaLine,
    Origin,
    RtcpAttribute,
    is_unspecified_address,
)
from alg.sdp.ice import ICE_ATTRIBUTE_NAMES, Candidate, IceAttributes, parse_candidate
from alg.sdp.model import MediaSection, MediaStream, SessionDescription, SessionSection
from alg.sdp.parse import parse_sdp
from alg.sdp.rewrite import (
    AnchorPlan,
    IPAddress,
    MediaAnchor,
    anchor,
    set_media_transport,
    set_origin_address,
    set_rtcp,
    set_session_connection,
    strip_ice,
)

__all__ = [
    "ICE_ATTRIBUTE_NAMES",
    "AnchorPlan",
    "Attribute",
    "Candidate",
    "Connection",
    "Direction",
    "IPAddress",
    "IceAttributes",
    "MediaAnchor",
    "MediaLine",
    "MediaSection",
    "MediaStream",
    "Origin",
    "RtcpAttribute",
    "SessionDescription",
    "SessionSection",
    "anchor",
    "is_unspecified_address",
    "parse_candidate",
    "parse_sdp",
    "set_media_transport",
    "set_origin_address",
    "set_rtcp",
    "set_session_connection",
    "strip_ice",
]
