"""A router from configuration alone: static users, then the default upstream.

It serves until the location service and prefix table are wired in (see alg.routing);
it already follows RFC 3261 §16.5: a request for one of our users forks to all of that
user's contacts; anything else goes to the upstream proxy if one is configured, and is
otherwise answered 404 (our domain) or 403 (relaying for others is not offered).
"""

from __future__ import annotations

from collections.abc import Sequence

from alg.config import AlgConfig
from alg.proxy_model import Endpoint, ProxyConfig, Reject, Target
from alg.sip import SipMessage, SipUri, parse_uri


def _endpoint(uri: SipUri, proxy: ProxyConfig) -> Endpoint:
    transport = (uri.param("transport") or "udp").upper()
    return Endpoint(proxy.side_of(uri.host), transport, uri.host, uri.port or 5060)


class StaticRouter:
    def __init__(self, config: AlgConfig) -> None:
        self._proxy = config.proxy_config()
        self._domains = {domain.lower() for domain in config.domains}
        self._users: dict[str, tuple[SipUri, ...]] = {}
        for user in config.static_users:
            uris = tuple(parse_uri(contact) for contact in user.contacts)
            self._users[user.user] = tuple(u for u in uris if isinstance(u, SipUri))
        upstream = parse_uri(f"sip:{config.upstream}") if config.upstream else None
        self._upstream = upstream if isinstance(upstream, SipUri) else None

    def route(self, request: SipMessage, source: Endpoint, now: float) -> Sequence[Target] | Reject:
        uri = request.request_uri
        user = uri.user if isinstance(uri, SipUri) else None
        contacts = self._users.get(user or "")
        if contacts:
            return [Target(_endpoint(c, self._proxy), str(c)) for c in contacts]
        is_local = isinstance(uri, SipUri) and (
            uri.host.lower() in self._domains or self._proxy.is_ours(uri.host, uri.port)
        )
        if is_local:
            return Reject(404)
        if self._upstream is not None and source.side == "inside":
            return [Target(_endpoint(self._upstream, self._proxy))]
        if isinstance(uri, SipUri) and source.side == "inside":
            return [Target(_endpoint(uri, self._proxy))]
        return Reject(403, "Forbidden (not our user)")
