"""REGISTER processing (RFC 3261 §10.3), sans-I/O: a request in, a decision out.

Theory of operation
-------------------
`process_register()` is a pure function of the parsed REGISTER, the authenticated
identity (or None), where the request came from, the local domains, the policy, the
AOR's current live bindings and `now`. It returns a `RegisterDecision`: the response to
send (status, reason, and the header fields the registrar owns — Contact list, Date,
Min-Expires, Path, Unsupported — as data) and the store changes that produce the new
binding set. `Registrar.handle()` wraps it around a `LocationStore`: it reads the
bindings, decides, and commits the changes atomically; a failed commit becomes a 500
with no changes (§10.3 step 7: tentative updates are all discarded).

The steps follow §10.3 in order, each one either answering or falling through:

==========================================  =====================================
step                                        answer when it fails
==========================================  =====================================
0 parse the fields the registrar reads      400 (the parse error's own status)
1 Request-URI names a domain of ours        403 (the proxy core forwards first)
2 Require lists only what we support        420 + Unsupported
5a To is a sip:/sips: URI                   400 (RFC 4475 §3.3.4, unksm2)
3 the request is authenticated              401, `needs_challenge` (see alg.auth)
5b the AOR's domain is ours                 404
4 the identity may register this AOR        403
6 Contact `*` only alone with Expires: 0    400
7 expiry, q and URI of every contact        423 + Min-Expires, 400
7 Call-ID/CSeq ordering per binding         500, nothing changed
- max contacts per AOR                      403
8 success                                   200 + Contact (all bindings) + Date
==========================================  =====================================

Authentication comes after the To check so that RFC 4475's unksm2 gets its 400 even
from a registrar that requires authentication, and before the AOR domain check so an
unauthenticated client cannot probe which domains or users exist.

The shell builds the actual response (Via, From, To with a tag, Call-ID, CSeq copied
per §8.2.6) and adds these headers; a 401 needs the challenge from `alg.auth`.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from alg.auth import Identity
from alg.errors import LocationStoreError, SipParseError
from alg.location import (
    MAX_UINT32,
    Binding,
    Change,
    LocationStore,
    Put,
    Remove,
    Source,
    canonical_aor,
    order_bindings,
)
from alg.sip.headers import NameAddress, parse_name_address, split_commas
from alg.sip.message import SipMessage
from alg.sip.uri import SipUri, Uri, parse_uri

Headers = tuple[tuple[str, bytes], ...]

# RFC 3261 §20.19 / §10.2.1.1: a malformed expiration value counts as 3600 seconds.
MALFORMED_EXPIRES: Final = 3600
# §10.3 step 7: 423 is allowed only for a request shorter than one hour.
ONE_HOUR: Final = 3600
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )   (§25.1)
_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# URI parameters that make two URIs differ when only one has them (§19.1.4). The RFC
# lists user, ttl, method and maddr; transport is added because the same section says a
# URI omitting transport does not match one that states it.
_SIGNIFICANT_PARAMS: Final = frozenset({"user", "ttl", "method", "maddr", "transport"})
# Contact parameters the registrar computes itself rather than echoing.
_OWN_PARAMS: Final = frozenset({"expires", "q"})


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    """Local configuration of the registrar (all durations in seconds)."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10
    require_auth: bool = True
    supported: frozenset[str] = frozenset({"path"})
    # Who may register which AOR; default: the digest user and realm are the AOR's user
    # and domain (no third-party registration, §10.3 step 4).
    authorize: Callable[[Identity, SipUri], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_expires <= self.default_expires <= self.max_expires <= MAX_UINT32:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        if self.max_contacts < 1:
            raise ValueError("max_contacts must be at least 1")


@dataclass(frozen=True, slots=True)
class RegisterResponse:
    """What to answer. `needs_challenge`: a 401 that must carry the WWW-Authenticate
    challenge of `alg.auth` (the registrar does not own nonces)."""

    status: int
    reason: str
    headers: Headers = ()
    needs_challenge: bool = False

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 699:
            raise ValueError(f"a registrar answers finally, not {self.status}")


@dataclass(frozen=True, slots=True)
class RegisterDecision:
    response: RegisterResponse
    aor: str | None = None
    changes: tuple[Change, ...] = ()
    bindings: tuple[Binding, ...] = ()  # the AOR's bindings after the changes


def _reject(
    status: int, reason: str, headers: Headers = (), aor: str | None = None
) -> RegisterDecision:
    return RegisterDecision(RegisterResponse(status, reason, headers), aor)


# --- URI helpers ----------------------------------------------------------------------


def _param_map(params: Sequence[tuple[str, str | None]]) -> dict[str, str | None]:
    return {k.lower(): None if v is None else unquote(v).lower() for k, v in params}


def _header_set(headers: str | None) -> frozenset[tuple[str, str]]:
    if not headers:
        return frozenset()
    pairs = (part.partition("=") for part in headers.split("&"))
    return frozenset((unquote(k).lower(), unquote(v)) for k, _, v in pairs)


def uri_equivalent(a: Uri, b: Uri) -> bool:
    """URI equality per RFC 3261 §19.1.4 (the registrar's "URI comparison rules")."""
    if not (isinstance(a, SipUri) and isinstance(b, SipUri)):
        return str(a) == str(b)
    if a.scheme != b.scheme or a.port != b.port:
        return False
    # userinfo is case-sensitive, other components are not; escapes equal their octets
    if (a.user is None) != (b.user is None) or (a.password is None) != (b.password is None):
        return False
    if unquote(a.user or "") != unquote(b.user or ""):
        return False
    if unquote(a.password or "") != unquote(b.password or ""):
        return False
    if a.host.lower() != b.host.lower():
        return False
    pa, pb = _param_map(a.params), _param_map(b.params)
    for name in pa.keys() | pb.keys():
        if name in pa and name in pb:
            if pa[name] != pb[name]:
                return False
        elif name in _SIGNIFICANT_PARAMS:
            return False
    return _header_set(a.headers) == _header_set(b.headers)


# --- reading the request --------------------------------------------------------------


def _parse_expires(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        return MALFORMED_EXPIRES
    return min(int(text), MAX_UINT32)


def _parse_q(text: str | None) -> float | None:
    if text is None:
        return None
    if not _QVALUE.fullmatch(text):
        raise SipParseError(400, "Invalid q-value in Contact")
    return float(text)


def _unquoted(value: str | None) -> str | None:
    if value is not None and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@dataclass(frozen=True, slots=True)
class _ContactRequest:
    uri: SipUri
    expires: int
    q: float | None
    params: tuple[tuple[str, str | None], ...]
    instance_id: str | None
    reg_id: int | None


def _read_contact(
    contact: NameAddress, header_expires: int | None, default: int
) -> _ContactRequest:
    uri = contact.uri
    if not isinstance(uri, SipUri):
        raise SipParseError(400, "Contact must be a sip: or sips: URI")
    expires = _parse_expires(contact.param("expires"))
    if expires is None:
        expires = header_expires if header_expires is not None else default
    reg_id_text = contact.param("reg-id")
    reg_id = None
    if reg_id_text is not None:
        if not reg_id_text.isdigit() or not 1 <= int(reg_id_text) <= MAX_UINT32:
            raise SipParseError(400, "Invalid reg-id in Contact")  # RFC 5626 §4.2
        reg_id = int(reg_id_text)
    return _ContactRequest(
        uri=uri,
        expires=expires,
        q=_parse_q(contact.param("q")),
        params=tuple((k, v) for k, v in contact.params if k.lower() not in _OWN_PARAMS),
        instance_id=_unquoted(contact.param("+sip.instance")),
        reg_id=reg_id,
    )


def _read_path(msg: SipMessage) -> tuple[str, ...]:
    values: list[str] = []
    for value in msg.header_values("path"):
        for part in split_commas(value):
            parse_name_address(part, "Path")  # RFC 3327 §4: Path = name-addr list
            values.append(part)
    return tuple(values)


# --- the decision ---------------------------------------------------------------------


def process_register(
    msg: SipMessage,
    *,
    identity: Identity | None,
    source: Source,
    domains: Collection[str],
    policy: RegistrarPolicy,
    current: Sequence[Binding],
    now: float,
) -> RegisterDecision:
    """Decide the answer to a REGISTER and the binding changes (module docstring).

    `domains` are the lower-case host names (or addresses) this registrar serves;
    `current` the live bindings of the request's AOR (the caller looks them up with
    `aor_of(msg)`; `Registrar.handle` does both)."""
    try:
        return _process(msg, identity, source, domains, policy, current, now)
    except SipParseError as exc:
        return _reject(exc.status, exc.reason)


def aor_of(msg: SipMessage) -> str | None:
    """The canonical AOR of a REGISTER's To, or None if To is unusable."""
    try:
        uri = msg.to.uri
    except SipParseError:
        return None
    return canonical_aor(uri) if isinstance(uri, SipUri) else None


def _process(  # noqa: PLR0917
    msg: SipMessage,
    identity: Identity | None,
    source: Source,
    domains: Collection[str],
    policy: RegistrarPolicy,
    current: Sequence[Binding],
    now: float,
) -> RegisterDecision:
    # Step 0: everything the later steps read, parsed up front (errors → 400).
    if not msg.is_request or msg.method != "REGISTER":
        raise SipParseError(400, "Not a REGISTER request")
    if msg.cseq.method != "REGISTER":
        raise SipParseError(400, "CSeq method does not match request method")
    request_uri = msg.request_uri
    to_uri = msg.to.uri
    call_id = msg.call_id
    cseq = msg.cseq.number
    required = msg.token_list("require", "Require")
    ua_supported = msg.token_list("supported", "Supported")
    contacts = msg.contact
    header_expires = _parse_expires(msg.header("expires"))
    path = _read_path(msg)

    # Step 1: the Request-URI names the domain whose location service is asked.
    if not isinstance(request_uri, SipUri):
        raise SipParseError(400, "REGISTER Request-URI must be a SIP URI")
    if request_uri.host.lower() not in domains:
        return _reject(403, "Domain Not Served Here")
    # Step 2: Require (§8.2.2.3): answer 420 listing what we do not support.
    unsupported = [tag for tag in required if tag not in policy.supported]
    if unsupported:
        return _reject(420, "Bad Extension", (("Unsupported", ", ".join(unsupported).encode()),))
    # Step 5a: an AOR is a SIP or SIPS URI (§10.3 step 5; RFC 4475 §3.3.4).
    if not isinstance(to_uri, SipUri):
        raise SipParseError(400, "To must be a sip: or sips: URI")
    aor = canonical_aor(to_uri)
    # Step 3: authentication is alg.auth's business; here only its outcome.
    if identity is None and policy.require_auth:
        return RegisterDecision(RegisterResponse(401, "Unauthorized", needs_challenge=True), aor)
    # Step 5b: the AOR must belong to a domain this registrar serves.
    if to_uri.host.lower() not in domains:
        return _reject(404, "Not Found", aor=aor)
    # Step 4: may this identity change this AOR's bindings?
    if identity is not None and not _authorized(policy, identity, to_uri):
        return _reject(403, "Forbidden", aor=aor)

    live = [b for b in current if b.aor == aor and b.is_live(now)]
    if contacts.wildcard:
        # Step 6: "*" only alone and only with Expires: 0 (§10.2.2).
        if header_expires != 0 or len(msg.index.get("contact", ())) != 1:
            raise SipParseError(400, "Invalid wildcard Contact")
        return _commit(aor, live, _remove_all(live, call_id, cseq), path, ua_supported, now)
    if not contacts.contacts:
        # Fetch (§10.2.3): no Contact, bindings unchanged.
        return _commit(aor, live, (), path, ua_supported, now)

    requests = [_read_contact(c, header_expires, policy.default_expires) for c in contacts.contacts]
    if len(requests) > policy.max_contacts:
        return _reject(403, "Too Many Contacts", aor=aor)
    # Step 7, expiry: 423 only for 0 < requested < min and < one hour; checked for all
    # contacts before any change, since a 423 "skips the remaining steps".
    if any(0 < r.expires < min(policy.min_expires, ONE_HOUR) for r in requests):
        return _reject(
            423, "Interval Too Brief", (("Min-Expires", str(policy.min_expires).encode()),), aor
        )
    changes = _update(msg, aor, live, requests, source, path, policy, now)
    if changes is None:
        return _reject(500, "Out of Order Request", aor=aor)
    after = _after(live, changes)
    if len(after) > policy.max_contacts:
        return _reject(403, "Too Many Contacts", aor=aor)
    return _commit(aor, live, changes, path, ua_supported, now)


def _authorized(policy: RegistrarPolicy, identity: Identity, aor: SipUri) -> bool:
    if policy.authorize is not None:
        return policy.authorize(identity, aor)
    user = None if aor.user is None else unquote(aor.user)
    return identity.username == user and identity.realm.lower() == aor.host.lower()


def _remove_all(live: Sequence[Binding], call_id: str, cseq: int) -> tuple[Change, ...] | None:
    """Step 6 with "*": a binding from the same Call-ID goes only if our CSeq is newer."""
    changes: list[Change] = []
    for binding in live:
        if binding.call_id == call_id and cseq <= binding.cseq:
            return None
        changes.append(Remove(binding.aor, binding.contact))
    return tuple(changes)


def _update(  # noqa: PLR0917
    msg: SipMessage,
    aor: str,
    live: Sequence[Binding],
    requests: Sequence[_ContactRequest],
    source: Source,
    path: tuple[str, ...],
    policy: RegistrarPolicy,
    now: float,
) -> tuple[Change, ...] | None:
    """Step 7 for every contact; None when an ordering rule aborts the whole update."""
    call_id, cseq = msg.call_id, msg.cseq.number
    user_agent = msg.header("user-agent")
    # A contact listed twice in one request: the last occurrence wins, compared only
    # with stored bindings (a tentative binding has our own CSeq and would abort).
    unique: list[_ContactRequest] = []
    for request in requests:
        unique = [u for u in unique if not uri_equivalent(u.uri, request.uri)]
        unique.append(request)
    changes: list[Change] = []
    for request in unique:
        existing = next((b for b in live if uri_equivalent(_uri(b), request.uri)), None)
        if existing is not None:
            if existing.call_id == call_id and cseq <= existing.cseq:
                return None  # "the update MUST be aborted and the request fails"
            changes.append(Remove(aor, existing.contact))
        if request.expires == 0:
            continue
        granted = min(request.expires, policy.max_expires)
        binding = Binding(
            aor=aor,
            contact=str(request.uri),
            expires_at=now + granted,
            call_id=call_id,
            cseq=cseq,
            registered_at=now,
            q=request.q,
            path=path,
            source=source,
            instance_id=request.instance_id,
            reg_id=request.reg_id,
            user_agent=user_agent,
            params=request.params,
        )
        if existing is not None and existing.contact == binding.contact:
            changes.pop()  # a Put with the same key replaces; no Remove needed
        changes.append(Put(binding))
    return tuple(changes)


def _uri(binding: Binding) -> Uri:
    return parse_uri(binding.contact)


def _after(live: Sequence[Binding], changes: Sequence[Change]) -> tuple[Binding, ...]:
    table = {b.contact: b for b in live}
    for change in changes:
        if isinstance(change, Put):
            table[change.binding.contact] = change.binding
        else:
            table.pop(change.contact, None)
    return order_bindings(list(table.values()))


def _commit(  # noqa: PLR0917
    aor: str,
    live: Sequence[Binding],
    changes: tuple[Change, ...] | None,
    path: tuple[str, ...],
    ua_supported: Sequence[str],
    now: float,
) -> RegisterDecision:
    if changes is None:
        return _reject(500, "Out of Order Request", aor=aor)
    after = tuple(b for b in _after(live, changes) if b.is_live(now))
    headers: list[tuple[str, bytes]] = [("Contact", _contact_value(b, now)) for b in after]
    # RFC 3327 §5.3: a registrar supporting Path returns the Path values it stored to a
    # UA that said it supports path.
    if path and "path" in ua_supported:
        headers.extend(("Path", value.encode()) for value in path)
    # §10.3 step 8: the 200 SHOULD carry a Date (UAs without a clock use it).
    headers.append(("Date", email.utils.formatdate(now, usegmt=True).encode()))
    return RegisterDecision(RegisterResponse(200, "OK", tuple(headers)), aor, changes, after)


def _contact_value(binding: Binding, now: float) -> bytes:
    out = [f"<{binding.contact}>"]
    out.extend(f";{k}" if v is None else f";{k}={v}" for k, v in binding.params)
    if binding.q is not None:
        out.append(f";q={_format_q(binding.q)}")
    out.append(f";expires={binding.remaining(now)}")
    return "".join(out).encode()


def _format_q(q: float) -> str:
    text = f"{q:.3f}".rstrip("0").rstrip(".")
    return text or "0"


# --- the stateful wrapper -------------------------------------------------------------


log = logging.getLogger("sipwall.alg.registrar")

PURGE_INTERVAL: Final = 60.0  # s between deletions of expired bindings (one indexed DELETE)


class Registrar:
    """`process_register` over a `LocationStore`: read, decide, commit atomically; expired
    bindings are deleted at most once per `PURGE_INTERVAL`, on a REGISTER."""

    def __init__(
        self,
        store: LocationStore,
        domains: Collection[str],
        policy: RegistrarPolicy,
        *,
        wall_offset: float = 0.0,
    ) -> None:
        self.store = store
        self.domains = frozenset(d.lower() for d in domains)
        self.policy = policy
        # `handle` gets the proxy core's monotonic `now`; the store keeps POSIX times
        # (alg.location.OnCoreClock says why)
        self.wall_offset = wall_offset
        self._next_purge = -math.inf

    def handle(
        self, msg: SipMessage, identity: Identity | None, source: Source, now: float
    ) -> RegisterDecision:
        now += self.wall_offset
        aor = aor_of(msg)
        if now >= self._next_purge:
            # lookups skip dead bindings, but their rows would stay in the database;
            # housekeeping: a failure here must not cost this REGISTER its answer
            self._next_purge = now + PURGE_INTERVAL
            try:
                self.store.purge(now)
            except LocationStoreError as exc:
                log.warning("purging expired registrations failed: %s", exc)
        try:
            current = self.store.lookup(aor, now) if aor is not None else ()
            decision = process_register(
                msg,
                identity=identity,
                source=source,
                domains=self.domains,
                policy=self.policy,
                current=current,
                now=now,
            )
            if decision.changes:
                self.store.apply(decision.changes)
        except LocationStoreError:
            return _reject(500, "Server Internal Error", aor=aor)
        return decision
