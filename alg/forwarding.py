"""Building the request a proxy forwards (RFC 3261 §16.4, §16.6; RFC 3581; RFC 5658).

Every change is a span edit over the received bytes (alg.sip.edit), so all the header
fields the proxy does not own pass through byte-identical:

* §16.4 Route pre-processing: drop the Route entries that name us (two of them with
  double Record-Route), and undo a strict router's Request-URI swap;
* §18.2.1 + RFC 3581: stamp `received` and `rport` on the top Via of a request;
* §16.6: new Request-URI, Max-Forwards minus one (70 if absent), Record-Route, our Via.

Branch parameters carry a loop-detection hash (§16.6 step 8, §16.3 step 4) so that a
request that comes back to us unchanged is answered 482 while a spiral (a request that
returns with a new Request-URI) is allowed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from alg.auth import parse_credentials
from alg.builders import random_hex
from alg.errors import SipParseError
from alg.proxy_model import Endpoint, Interface, ProxyConfig
from alg.sip import MessageEditor, SipMessage, SipUri
from alg.sip.headers import split_commas

MAGIC_COOKIE = "z9hG4bK"


def loop_hash(msg: SipMessage) -> str:
    """Hash of what identifies a request independently of the hops it took (§16.6 step
    8): R-URI, tags, Call-ID, CSeq number and Proxy-Require. The previous hop's Via is
    left out on purpose: a looping request comes back through a different hop. Computed
    once per message: the loop check and every branch of the request need it."""
    return msg.derived("loop_hash", _loop_hash)


def _loop_hash(msg: SipMessage) -> str:
    parts = [
        getattr(msg.start_line, "uri_text", ""),
        msg.from_.tag or "",
        msg.to.tag or "",
        msg.call_id,
        str(msg.cseq.number),
        ",".join(msg.header_values("proxy-require")),
    ]
    return hashlib.blake2s(
        "\n".join(parts).encode("utf-8", "surrogateescape"), digest_size=6
    ).hexdigest()


def new_branch(msg: SipMessage) -> str:
    return f"{MAGIC_COOKIE}{loop_hash(msg)}.{random_hex(4)}"


def stateless_branch(msg: SipMessage) -> str:
    """§16.11: a stateless proxy derives the branch from the request so that
    retransmissions (and the CANCEL of an INVITE) get the same one."""
    top = msg.top_via
    mark = loop_hash(msg)
    material = f"{top.branch}|{top.sent_by}|{mark}"
    digest = hashlib.blake2s(material.encode("utf-8", "surrogateescape"), digest_size=8)
    return f"{MAGIC_COOKIE}{mark}.{digest.hexdigest()}"


def is_loop(msg: SipMessage, config: ProxyConfig) -> bool:
    """§16.3 step 4: one of our Vias carries the hash this request would get now."""
    mark = MAGIC_COOKIE + loop_hash(msg) + "."
    for via in msg.vias:
        if config.is_ours(via.host, via.port) and (via.branch or "").startswith(mark):
            return True
    return False


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Result of Route pre-processing: our own Route entries to remove (count from the
    top), the Request-URI to use if a strict router swapped it, and the remaining top
    Route (the next hop of a loose-routed request)."""

    ours_on_top: int
    request_uri: str | None
    next_route: SipUri | None


def plan_routes(msg: SipMessage, config: ProxyConfig) -> RoutePlan:
    routes = msg.routes
    request_uri: str | None = None
    uri = msg.request_uri
    if (
        isinstance(uri, SipUri)
        and uri.user is None
        and config.is_ours(uri.host, uri.port)
        and routes
    ):
        # §16.4: a strict router put our Record-Route value in the R-URI and the real
        # target in the last Route; restore it. Our Record-Route values have no user
        # part, so sip:alice@<our address> (a user at our domain) is not one of them.
        request_uri = str(routes[-1].uri)
        routes = routes[:-1]
    ours = 0
    for route in routes:
        route_uri = route.uri
        if isinstance(route_uri, SipUri) and config.is_ours(route_uri.host, route_uri.port):
            ours += 1
        else:
            break
    remaining = routes[ours:]
    next_route = remaining[0].uri if remaining and isinstance(remaining[0].uri, SipUri) else None
    return RoutePlan(ours, request_uri, next_route)


def stamp_received(edit: MessageEditor, source: Endpoint) -> None:
    """§18.2.1 and RFC 3581 §4: record where the request really came from."""
    msg = edit.message
    via = msg.top_via
    needs_received = via.host != source.host
    needs_rport = via.has_rport and via.rport is None
    if not (needs_received or needs_rport):
        return
    field = msg.fields_named("via")[0]
    values = split_commas(msg.field_value(field).decode("utf-8", "surrogateescape"))
    top = values[0]
    if needs_rport:
        top = _set_param(top, "rport", str(source.port))
    if needs_received or needs_rport:
        # RFC 3581: with rport, received is added even if sent-by matches
        top = _set_param(top, "received", source.host)
    values[0] = top
    edit.replace_value(field, ", ".join(values).encode("utf-8", "surrogateescape"))


def _set_param(via_value: str, name: str, value: str) -> str:
    parts = via_value.split(";")
    for index, part in enumerate(parts[1:], start=1):
        if part.strip().split("=", 1)[0].strip().lower() == name:
            parts[index] = f"{name}={value}"
            return ";".join(parts)
    return f"{via_value};{name}={value}"


def build_forwarded(
    msg: SipMessage,
    *,
    source: Endpoint,
    target: Endpoint,
    config: ProxyConfig,
    routes: RoutePlan,
    branch: str,
    request_uri: str | None,
    record_route: bool,
    route_set: tuple[str, ...] = (),
) -> bytes:
    """The bytes of `msg` as forwarded to `target` (§16.6 steps 1-8). `route_set` (a
    registered Path, RFC 3327 §5.3) goes in front of whatever Route remains."""
    edit = MessageEditor(msg)
    stamp_received(edit, source)
    new_uri = request_uri or routes.request_uri
    if new_uri is not None:
        edit.set_request_uri(new_uri)
    if routes.ours_on_top or routes.request_uri is not None or route_set:
        _drop_routes(edit, msg, routes, route_set)
    if config.auth_realm is not None:
        _drop_our_credentials(edit, msg, config.auth_realm)
    max_forwards = msg.max_forwards
    if max_forwards is None:
        edit.append("max-forwards", b"70")
    else:
        edit.replace_value(msg.fields_named("max-forwards")[0], str(max_forwards - 1).encode())
    outgoing: Interface = config.interfaces[target.side]
    if record_route:
        # RFC 5658 §4: when the request changes sides, record both interfaces so each
        # side routes in-dialog requests to the address it can reach. The top entry faces
        # the next hop.
        entries = [outgoing.uri(target.transport)]
        if source.side != target.side:
            entries.append(config.interfaces[source.side].uri(source.transport))
        edit.prepend("record-route", ", ".join(f"<{e}>" for e in entries).encode())
    via = f"SIP/2.0/{target.transport} {outgoing.sent_by(target.transport)};branch={branch};rport"
    edit.prepend("via", via.encode())
    return edit.apply()


def _drop_routes(
    edit: MessageEditor, msg: SipMessage, routes: RoutePlan, route_set: tuple[str, ...]
) -> None:
    """Remove our leading Route entries (and the last one a strict router left), and
    put `route_set` in front of the rest."""
    remaining = list(msg.routes)
    if routes.request_uri is not None:
        remaining = remaining[:-1]
    remaining = remaining[routes.ours_on_top :]
    for field in msg.fields_named("route"):
        edit.delete_field(field)
    values = [f"<{uri}>" for uri in route_set] + [route.serialize() for route in remaining]
    if values:
        edit.prepend("route", ", ".join(values).encode("utf-8", "surrogateescape"))


def _drop_our_credentials(edit: MessageEditor, msg: SipMessage, realm: str) -> None:
    """RFC 3261 §22.3: a proxy removes the Proxy-Authorization it has consumed (its own
    realm) and forwards those for other realms."""
    for field in msg.fields_named("proxy-authorization"):
        try:
            credentials = parse_credentials(msg.field_value(field))
        except SipParseError:
            continue
        if credentials is not None and credentials.realm == realm:
            edit.delete_field(field)


def strip_top_via(response: SipMessage) -> bytes:
    """A response as forwarded upstream: without our Via (§16.7 step 9)."""
    edit = MessageEditor(response)
    edit.remove_first_value("via")
    return edit.apply()


def response_destination(response: SipMessage, config: ProxyConfig) -> Endpoint | None:
    """Where a response goes when no transaction remembers it (§18.2.2, RFC 3581 §4):
    the second Via's received/rport or sent-by. None if there is no second Via."""
    vias = response.vias
    if len(vias) < 2:
        return None
    via = vias[1]
    host = via.received or via.host
    port = via.rport or via.port or 5060
    return Endpoint(config.side_of(host), via.transport, host, port)


def endpoint_for(uri: SipUri, config: ProxyConfig) -> Endpoint:
    """The next hop a SIP URI names (maddr, transport and port parameters; RFC 3263 §4
    defaults: 5060, or 5061 for TLS/sips), on the side its address belongs to."""
    transport = (uri.param("transport") or ("tls" if uri.is_sips else "udp")).upper()
    port = uri.port or (5061 if transport == "TLS" else 5060)
    host = uri.param("maddr") or uri.host
    return Endpoint(config.side_of(host), transport, host, port)


def with_challenges(best: SipMessage, collected: list[SipMessage]) -> bytes:
    """A response forwarded upstream; a 401/407 carries the challenges of every branch
    (§16.7 step 7)."""
    if best.status not in (401, 407):
        return strip_top_via(best)
    edit = MessageEditor(best)
    edit.remove_first_value("via")
    for other in collected:
        if other is best:
            continue
        for name in ("www-authenticate", "proxy-authenticate"):
            for field in other.fields_named(name):
                edit.append(name, other.field_value(field))
    return edit.apply()
