"""An inside party may only open pinholes to itself (ARCHITECTURE §3 step 2).

The media address in an inside offer or answer must be the address the message was
signalled from (its source), or the address its contact registered from (the location
service's `Source`, RFC 3261 §10 + the NAT note in `alg.location`). An IP-PBX or SBC on the
inside legitimately signals for its phones: it is configured as a trusted peer with the
subnets it may name. Anything else is forged — an inside host trying to make the gateway
forward public traffic to another inside host — and is answered 488 Not Acceptable Here
(RFC 3261 §21.4.26) with nothing opened.

Checked per enabled stream (RFC 3264 §6: port 0 names no transport) on its effective
`c=` (RFC 8866 §5.7) and its `a=rtcp` address (RFC 3605 §2.1); the hold address
(`c=0.0.0.0`, RFC 3264 §8.4) names no host and always passes. ICE candidates are
stripped before forwarding (RFC 8839 would need the ALG to honour them), so they open
nothing and are not checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from alg.errors import SipParseError
from alg.location import canonical_aor
from alg.sdp import SessionDescription, is_unspecified_address
from alg.sip import SipMessage, SipUri, parse_uri
from fcp.types import IPAddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RegisteredSource(Protocol):
    @property
    def address(self) -> str: ...


class RegisteredContact(Protocol):
    """What anti-forgery reads of a location binding (`alg.location.Binding`)."""

    @property
    def contact(self) -> str: ...
    @property
    def source(self) -> RegisteredSource | None: ...


class Registrations(Protocol):
    """The location service, read only (`alg.location.LocationStore` fits): the live
    bindings of a canonical AOR."""

    def lookup(self, aor: str, now: float) -> Sequence[RegisteredContact]: ...


def registered_sources(registrations: Registrations, msg: SipMessage, now: float) -> set[str]:
    """The addresses the sender's Contact registered from (RFC 3261 §10.3: the binding
    of its AOR with that contact; the source is where the REGISTER came from, the NAT
    binding of a phone behind a NAT, `alg.location`). The sender's AOR is the From of a
    request and the To of a response (§8.1.1.3, §8.2.6.2). Contacts compare as URIs
    (§19.1.4: user, host case-insensitively, port)."""
    try:
        aor_uri = (msg.from_ if msg.is_request else msg.to).sip_uri
        contacts = [c.uri for c in msg.contact.contacts]
    except SipParseError:
        return set()
    if aor_uri is None:
        return set()
    keys = {_contact_key(uri) for uri in contacts if isinstance(uri, SipUri)}
    found = set()
    for binding in registrations.lookup(canonical_aor(aor_uri), now):
        source = binding.source
        if source is None:
            continue
        try:
            uri = parse_uri(binding.contact)
        except SipParseError:
            continue
        if isinstance(uri, SipUri) and _contact_key(uri) in keys:
            found.add(source.address)
    return found


def _contact_key(uri: SipUri) -> tuple[str, str | None, str, int]:
    return (uri.scheme, uri.user, uri.host.lower(), uri.port or 5060)


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """An inside signalling peer (IP-PBX) allowed to name media in `subnets`."""

    address: IPAddress
    subnets: tuple[Network, ...]

    @classmethod
    def of(cls, address: str, *subnets: str) -> TrustedPeer:
        return cls(
            ipaddress.ip_address(address),
            tuple(ipaddress.ip_network(net, strict=False) for net in subnets),
        )


@dataclass(frozen=True, slots=True)
class Forged:
    """Why an SDP was refused: the stream and the address it named."""

    index: int
    address: str

    @property
    def reason(self) -> str:
        return "Not Acceptable Here (media address is not the sender)"


def media_addresses(sdp: SessionDescription) -> list[tuple[int, str]]:
    """(stream index, address) of every transport an SDP names, holds excluded."""
    out: list[tuple[int, str]] = []
    for index, media in enumerate(sdp.media):
        if sdp.is_disabled(index):
            continue
        connection = sdp.effective_connection(index)
        if connection is not None and not connection.is_hold_address:
            out.append((index, connection.address))
        rtcp = media.rtcp
        if rtcp is not None and rtcp.address and not is_unspecified_address(rtcp.address):
            out.append((index, rtcp.address))
    return out


def check_media_source(
    sdp: SessionDescription,
    source_host: str,
    *,
    trusted: tuple[TrustedPeer, ...] = (),
    registered: Callable[[], Iterable[str]] | None = None,
) -> Forged | None:
    """None if every media address of an inside SDP is allowed for this sender.
    `registered` gives the addresses its contact registered from; it is a location
    lookup, made only for an address that is neither the source nor a trusted subnet's
    (most offers name their source)."""
    try:
        source = ipaddress.ip_address(source_host.strip("[]"))
    except ValueError:
        return Forged(-1, source_host)
    allowed = {source}
    lookup = registered  # made once, at the first address that needs it
    subnets = [net for peer in trusted if peer.address == source for net in peer.subnets]
    for index, text in media_addresses(sdp):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return Forged(index, text)  # a name: cannot be checked, cannot be bound
        if address in allowed or any(address in net for net in subnets):
            continue
        if lookup is not None:
            allowed.update(_addresses(lookup()))
            lookup = None
            if address in allowed:
                continue
        return Forged(index, text)
    return None


def _addresses(texts: Iterable[str]) -> set[IPAddress]:
    out: set[IPAddress] = set()
    for text in texts:
        try:
            out.add(ipaddress.ip_address(text.strip("[]")))
        except ValueError:
            continue
    return out
