"""The SIP proxy core (RFC 3261 §16), sans-I/O.

Theory of operation
-------------------
`ProxyCore.receive(data, source, now)` takes one message as received on a side and
returns the `Send`s it causes; `handle_timer(now)` fires what is due and `get_timer()`
says when to call it next. Nothing here touches a socket or a clock.

Stateful mode keeps, per request, a server transaction with its response context
(§16.7) and one client transaction per branch (§16.6), using the table-driven state
machines of `alg.transactions`:

* a new request is checked (§16.3: syntax, Max-Forwards → 483, loop → 482,
  Proxy-Require → 420), answered 100 Trying if it is an INVITE, pre-processed for Route
  (§16.4), routed (Route set, else the `Router`: location, prefixes, upstream), and
  forwarded to every target in parallel (forking);
* responses are matched to their branch; provisionals (but 100) and 2xx go upstream at
  once, other finals wait for the best one (§16.7 step 6); a 2xx or 6xx cancels the
  other branches (§16.7 step 10);
* CANCEL is answered 200 and sent down every branch that has seen a provisional; a branch
  without one is cancelled as soon as one arrives (§9.1, §16.10);
* ACK for a non-2xx is absorbed by the INVITE server transaction; ACK for a 2xx is
  end-to-end and forwarded statelessly along its Route set (§16.6, §13.2.2.4);
* Timer C (§16.6 step 11) cancels an INVITE branch that rings for too long.

Stateless mode (§16.11) forwards requests with a branch derived from the request and
responses by their Via, keeping no state at all.

The core is three layers, one module each: requests, routing and forking here;
responses and client timers in `alg.proxy_responses`; the transaction tables and
sending on them in `alg.proxy_plumbing`.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter

from alg.builders import build_response, new_tag, random_hex
from alg.call_events import CallEvents
from alg.cdr import CallRecorder, Cdr
from alg.errors import SipParseError
from alg.forwarding import (
    MAGIC_COOKIE,
    RoutePlan,
    build_forwarded,
    endpoint_for,
    is_loop,
    new_branch,
    plan_routes,
    stateless_branch,
)
from alg.hop_health import HopHealth
from alg.logsetup import call_context
from alg.media.actions import AgentResult
from alg.media.agents import GroupGone
from alg.media.core import MediaCore
from alg.media_gate import MediaGate
from alg.proxy_model import (
    Answer,
    Endpoint,
    ProxyConfig,
    Resolve,
    Routed,
    Router,
    Send,
    Target,
)
from alg.proxy_responses import ProxyResponses
from alg.proxy_state import ClientBranch, ServerSide, TimerHeap
from alg.ratelimit import Drop as RateDrop
from alg.ratelimit import RateLimiter
from alg.ratelimit import Reject as RateReject
from alg.sip import (
    SipMessage,
    SipUri,
    address_port,
    check_request,
    parse_message,
    parse_uri,
)
from alg.transaction_keys import ClientKey, LegacyServerKey, ServerKey, client_key, server_key
from alg.transactions import (
    Action,
    Event,
    Kind,
    State,
    Transaction,
)

log = logging.getLogger("sipwall.alg.proxy")


# Requests that create a dialog get our Record-Route (§16.6 step 4, RFC 6665 §4.3).
_DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


class ProxyCore(ProxyResponses):
    def __init__(
        self,
        config: ProxyConfig,
        router: Router,
        *,
        limiter: RateLimiter | None = None,
        recorder: CallRecorder | None = None,
        media: MediaCore | None = None,
        hops: HopHealth | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.limiter = limiter
        self.calls = (
            CallEvents(recorder, media.release_pending if media is not None else None)
            if recorder is not None
            else None
        )
        self.stats: Counter[str] = Counter()
        # next hops that left requests unanswered (alg.hop_health), shared with the
        # router that orders them; its counters are the core's
        self.hops = (
            hops if hops is not None else HopHealth(config.hop_hold_down, config.hop_probe_interval)
        )
        self.hops.stats = self.stats
        # media anchoring (alg.media): messages crossing sides go through the gate and
        # may wait there for the agent
        self.media = media
        self._gate = MediaGate(media, self.stats)
        self._servers: dict[ServerKey | LegacyServerKey, ServerSide] = {}
        self._clients: dict[ClientKey, ClientBranch] = {}
        self._timers = TimerHeap()
        # requests parked until DNS resolution of a URI (RFC 3263), and lookups the
        # shell has not been asked for yet
        self._parked: dict[str, list[ServerSide]] = {}
        self.lookups: list[str] = []
        self._branch_numbers = itertools.count()

    # --- public interface -----------------------------------------------------------

    @property
    def transaction_count(self) -> int:
        return len(self._servers) + len(self._clients)

    def receive(self, data: bytes, source: Endpoint, now: float) -> list[Send]:
        out: list[Send] = []
        if source.side == "outside":
            data = self._gate.inbound(data, now)  # restore what topology hiding masked
        try:
            msg = parse_message(data, datagram=source.transport == "UDP")
        except SipParseError as exc:
            self.stats["malformed"] += 1
            self.stats[f"malformed.{exc.status}"] += 1
            if self.limiter is not None:
                self.limiter.note_bad(
                    source.host, "oversize" if exc.status == 413 else "malformed", now
                )
            self._answer_unparsable(data, exc, source, out)
            return out
        if msg.is_request:
            self._on_request(msg, source, now, out)
        else:
            self._on_response(msg, now, out)
        self._send_media_requests(now, out)
        return out

    def get_timer(self) -> float | None:
        calls = self.calls.get_timer() if self.calls is not None else None
        media = self._gate.get_timer()
        if media is not None:
            calls = media if calls is None else min(calls, media)
        probe = self.hops.next_probe()
        if probe is not None:
            calls = probe if calls is None else min(calls, probe)
        deadline = self._timers.next_deadline()
        if deadline is None or calls is None:
            return calls if deadline is None else deadline
        return min(deadline, calls)

    @property
    def finished_calls(self) -> list[Cdr]:
        """Finished call records not yet taken (the shell writes them)."""
        return self.calls.finished if self.calls is not None else []

    def take_finished_calls(self) -> list[Cdr]:
        return self.calls.take() if self.calls is not None else []

    def handle_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        if self.calls is not None:
            self.calls.expire(now)
        self._gate.timers(now, out, self.calls.recorder if self.calls is not None else None)
        self._send_media_requests(now, out)
        for hop in self.hops.probes_due(now):
            self._probe(hop, now, out)
        for owner in self._timers.due(now):
            if isinstance(owner, ServerSide):
                self._server_actions(owner, owner.txn.handle_timer(now), out)
            else:
                self._client_timers(owner, now, out)
            self._schedule(owner)
        return out

    # --- requests -------------------------------------------------------------------

    def _on_request(self, msg: SipMessage, source: Endpoint, now: float, out: list[Send]) -> None:
        try:
            check_request(msg)
        except SipParseError as exc:
            self.stats["malformed"] += 1
            self.stats[f"malformed.{exc.status}"] += 1
            if self.limiter is not None:
                self.limiter.note_bad(source.host, "malformed", now)
            if msg.method != "ACK":  # §17.2.1 / §17: an ACK is never answered
                self._answer_statelessly(msg, source, exc.status, exc.reason, out)
            return
        self.stats[f"request.{msg.method}"] += 1
        if msg.method == "ACK":
            self._on_ack(msg, source, now, out)
            return
        key = server_key(msg)
        existing = self._servers.get(key) if self._servers else None
        if existing is not None:  # a retransmission (§17.2.1, §17.2.2)
            self.stats["retransmission"] += 1
            self._server_actions(existing, existing.txn.handle(Event.REQUEST, now), out)
            return
        if self.limiter is not None and msg.method != "CANCEL":
            verdict = self.limiter.check(source.host, msg.method, now)
            if isinstance(verdict, RateReject):
                self.stats["ratelimit.rejected"] += 1
                retry = (("Retry-After", str(verdict.retry_after).encode()),)
                self._answer_statelessly(msg, source, 503, None, out, retry)
                return
            if isinstance(verdict, RateDrop):
                self.stats["ratelimit.dropped"] += 1
                return
        if self.config.stateless:
            self._forward_stateless(msg, source, now, out)
            return
        if msg.method == "CANCEL":
            self._on_cancel(msg, source, key, now, out)
            return
        kind = Kind.INVITE_SERVER if msg.method == "INVITE" else Kind.NON_INVITE_SERVER
        server = ServerSide(
            key,
            Transaction.start(kind, reliable=source.reliable, now=now, settings=self.config.timers),
            msg,
            source,
            new_tag(),
        )
        self._servers[key] = server
        if self.calls is not None:
            self.calls.request(msg, source, now)
        if log.isEnabledFor(logging.DEBUG):
            with call_context(msg.call_id):
                log.debug(
                    "%s %s from %s %s:%d",
                    msg.method,
                    msg.start_line,
                    source.side,
                    source.host,
                    source.port,
                )
        if kind is Kind.INVITE_SERVER:
            self._respond(server, 100, now, out)  # §16.2: absorb retransmissions early
        screened = self._screen(msg)
        if screened is not None:
            status, reason, headers = screened
            self._respond(server, status, now, out, reason=reason, headers=headers)
            return
        self._route_server(server, now, out)

    def resume_lookup(self, uri: str, now: float) -> list[Send]:
        """DNS for `uri` is done (the router has the answer): route what waited for it."""
        out: list[Send] = []
        for server in self._parked.pop(uri, []):
            if not server.txn.terminated:
                self._route_server(server, now, out)
        return out

    def transport_failed(self, send: Send, now: float) -> list[Send]:
        """The shell could not deliver `send`: a TCP connection was refused, a TLS
        handshake or certificate check failed, or the side has no TLS. RFC 3261 §16.9: a
        proxy MUST behave as if the forwarded request got a 503, so the client
        transaction ends at once (§17.1.4) instead of after Timer B or F, the next
        target of a serial list is tried, and the caller gets the best answer (a 503
        becomes 500, §16.7 step 6). A response or an ACK has no transaction to fail."""
        out: list[Send] = []
        if self.config.stateless:
            return out
        try:
            msg = parse_message(send.data)
            key = client_key(msg)
        except SipParseError:
            return out  # not a request we forwarded (we built it, so it would parse)
        branch = self._clients.get(key)
        if branch is None or branch.destination != send.to or branch.data != send.data:
            return out
        self.stats["transport_failed"] += 1
        self.hops.failed(send.to, now)
        for action in branch.txn.handle(Event.TRANSPORT_ERROR, now):
            if action is Action.TRANSPORT_FAILED:
                failed = parse_message(build_response(branch.request, 503))
                branch.timer_c = None
                self._deliver(branch, failed, now, out)
            elif action is Action.TERMINATE:
                self._forget_client(branch)
        self._schedule(branch)
        return out

    def _probe(self, hop: Endpoint, now: float, out: list[Send]) -> None:
        """An OPTIONS to a next hop held down for not answering (alg.hop_health), from
        our interface on its side; its answer (`_on_response`) brings the hop back."""
        interface = self.config.interfaces[hop.side]
        sent_by = interface.sent_by(hop.transport)
        transport = "" if hop.transport == "UDP" else f";transport={hop.transport.lower()}"
        uri = f"sip:{address_port(hop.host, hop.port)}{transport}"
        branch_id = f"{MAGIC_COOKIE}{random_hex(8)}"
        data = (
            f"OPTIONS {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{hop.transport} {sent_by};branch={branch_id};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:sipwall@{sent_by}>;tag={new_tag()}\r\n"
            f"To: <{uri}>\r\n"
            f"Call-ID: {random_hex(12)}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        branch = ClientBranch(
            next(self._branch_numbers),
            ClientKey(branch_id, "OPTIONS"),
            Transaction.start(
                Kind.NON_INVITE_CLIENT, reliable=hop.reliable, now=now, settings=self.config.timers
            ),
            data,
            hop,
            None,  # no server transaction: the answer is ours (absorbed, as a CANCEL's)
        )
        self._clients[branch.key] = branch
        out.append(Send(hop, data))
        self._schedule(branch)

    def take_lookups(self) -> list[str]:
        lookups, self.lookups = self.lookups, []
        return lookups

    def media_result(self, result: AgentResult, now: float) -> list[Send]:
        """An agent answered one of the media core's actions (the shell performs them)."""
        recorder = self.calls.recorder if self.calls is not None else None
        out = self._gate.results(result, now, recorder)
        self._send_media_requests(now, out)
        return out

    def media_gone(self, gone: GroupGone, now: float) -> list[Send]:
        """The agent says (part of) a call's media is gone (FCP WatchEvents): the media
        core may end that call (`MediaCore.bindings_gone`); its BYEs go out here. The
        call's ending reaches the CDR with the answer to its release, which follows
        (`media_result`), as for an ending made while a message crossed."""
        out: list[Send] = []
        if self.media is not None:
            self.media.bindings_gone(gone, now)
            self._send_media_requests(now, out)
        return out

    def _send_media_requests(self, now: float, out: list[Send]) -> None:
        """The ACK/BYE the media core makes to end a dialog it cannot anchor
        (alg.media.teardown): the ACK of a 2xx goes once (§17.1.1.3 does not apply, no
        transaction); a BYE gets a client transaction of ours (retransmissions; its
        response is absorbed like that of our CANCEL)."""
        for request in self.media.take_requests() if self.media is not None else ():
            uri = parse_uri(request.next_hop)
            if not isinstance(uri, SipUri):
                continue
            destination = endpoint_for(uri, self.config)
            out.append(Send(destination, request.data))
            if request.method != "ACK":
                txn = Transaction.start(
                    Kind.NON_INVITE_CLIENT, reliable=destination.reliable, now=now,
                    settings=self.config.timers,
                )  # fmt: skip
                key = client_key(parse_message(request.data))
                branch = ClientBranch(
                    next(self._branch_numbers), key, txn, request.data, destination, None
                )
                self._clients[key] = branch
                self._schedule(branch)

    def _route_server(self, server: ServerSide, now: float, out: list[Send]) -> None:
        msg, source = server.request, server.source
        routes = plan_routes(msg, self.config)
        decided = self._targets(msg, source, routes, now)
        if isinstance(decided, Resolve):
            waiting = self._parked.setdefault(decided.uri, [])
            if not waiting:
                self.lookups.append(decided.uri)
            waiting.append(server)
            self.stats["dns.parked"] += 1
            return
        if isinstance(decided, Answer):
            self._respond(
                server, decided.status, now, out, reason=decided.reason, headers=decided.headers
            )
            return
        server.record_route = (
            self.config.record_route and msg.method in _DIALOG_CREATING and msg.to.tag is None
        )
        server.routes = routes
        if decided.parallel:
            for target in decided.targets:
                self._fork(server, target, routes, server.record_route, now, out)
        else:
            first, *rest = decided.targets
            server.serial = rest
            self._fork(server, first, routes, server.record_route, now, out)

    def _screen(
        self, msg: SipMessage
    ) -> tuple[int, str | None, tuple[tuple[str, bytes], ...]] | None:
        """§16.3 steps 3-5: Max-Forwards, loops, Proxy-Require."""
        if msg.max_forwards == 0:
            return 483, None, ()
        if is_loop(msg, self.config):
            return 482, None, ()
        required = msg.token_list("proxy-require", "Proxy-Require")
        unsupported = [tag for tag in required if tag not in self.config.supported_extensions]
        if unsupported:
            return 420, None, (("Unsupported", ", ".join(unsupported).encode()),)
        return None

    def _targets(
        self, msg: SipMessage, source: Endpoint, routes: RoutePlan, now: float
    ) -> Routed | Answer | Resolve:
        """Where a request goes, given its Route pre-processing (§16.4-16.6)."""
        if routes.next_route is not None:  # §16.6 step 6: loose routing to the top Route
            return Routed((Target(self._endpoint_for(routes.next_route)),))
        uri = msg.request_uri
        if routes.request_uri is not None or msg.to.tag is not None:
            # in-dialog without further Route: the Request-URI is the remote target
            target_uri = parse_uri(routes.request_uri) if routes.request_uri else uri
            if isinstance(target_uri, SipUri):
                return Routed((Target(self._endpoint_for(target_uri)),))
            return Answer(416)
        decided = self.router.route(msg, source, now)
        if isinstance(decided, Resolve):
            return decided
        if isinstance(decided, Answer | Routed):
            return decided if not isinstance(decided, Routed) or decided.targets else Answer(480)
        return Routed(tuple(decided)) if decided else Answer(480)

    def _endpoint_for(self, uri: SipUri) -> Endpoint:
        return endpoint_for(uri, self.config)

    def _fork(  # noqa: PLR0917
        self,
        server: ServerSide,
        target: Target,
        routes: RoutePlan,
        record_route: bool,
        now: float,
        out: list[Send],
    ) -> None:
        msg = server.request
        branch_id = new_branch(msg)
        data = build_forwarded(
            msg,
            source=server.source,
            target=target.next_hop,
            config=self.config,
            routes=routes,
            branch=branch_id,
            request_uri=target.request_uri,
            record_route=record_route,
            route_set=target.route_set,
        )

        def proceed(data: bytes, now: float, out: list[Send]) -> None:
            self._start_branch(server, target, branch_id, data, now, out)

        def refuse(status: int, reason: str | None, now: float, out: list[Send]) -> None:
            if not server.context.done and not server.context.pending:
                self._respond(server, status, now, out, reason=reason)

        self._gate.cross(
            data,
            server.source.side,
            target.next_hop.side,
            server.source.host,
            now,
            out,
            proceed,
            refuse,
        )

    def _start_branch(  # noqa: PLR0917
        self,
        server: ServerSide,
        target: Target,
        branch_id: str,
        data: bytes,
        now: float,
        out: list[Send],
    ) -> None:
        msg = server.request
        kind = Kind.INVITE_CLIENT if msg.method == "INVITE" else Kind.NON_INVITE_CLIENT
        branch = ClientBranch(
            next(self._branch_numbers),
            ClientKey(branch_id, msg.method),
            Transaction.start(
                kind, reliable=target.next_hop.reliable, now=now, settings=self.config.timers
            ),
            data,
            target.next_hop,
            server,
        )
        if kind is Kind.INVITE_CLIENT:
            branch.timer_c = now + self.config.timer_c
        if server.serial and self.config.failover_timeout > 0:
            branch.failover_at = now + self.config.failover_timeout
        server.branches.append(branch)
        server.context.add_branch(branch.number)
        self._clients[branch.key] = branch
        out.append(Send(target.next_hop, data))
        self.stats["forwarded"] += 1
        self._schedule(branch)

    def _on_ack(self, msg: SipMessage, source: Endpoint, now: float, out: list[Send]) -> None:
        server = self._servers.get(server_key(msg))
        if (
            server is not None
            and server.txn.kind is Kind.INVITE_SERVER
            and server.txn.state in (State.COMPLETED, State.CONFIRMED)
        ):
            # hop-by-hop ACK for our non-2xx (§17.2.1): absorbed here
            self._server_actions(server, server.txn.handle(Event.ACK, now), out)
            return
        if self.calls is not None:
            self.calls.ack(msg.call_id, now)
        # ACK for a 2xx is end-to-end (§13.2.2.4): forward along its route, no state
        self._forward_stateless(msg, source, now, out)

    def _on_cancel(
        self,
        msg: SipMessage,
        source: Endpoint,
        key: ServerKey | LegacyServerKey,
        now: float,
        out: list[Send],
    ) -> None:
        invite = self._servers.get(server_key(msg, for_method="INVITE"))
        if self.calls is not None:
            self.calls.cancel(msg.call_id, now)
        if invite is None:
            # §16.10: no response context: forward the CANCEL statelessly
            self._forward_stateless(msg, source, now, out)
            return
        cancel = ServerSide(
            key,
            Transaction.start(
                Kind.NON_INVITE_SERVER,
                reliable=source.reliable,
                now=now,
                settings=self.config.timers,
            ),
            msg,
            source,
            invite.to_tag,
        )
        self._servers[key] = cancel
        self._respond(cancel, 200, now, out)  # §16.10: 200 to the CANCEL at once
        invite.serial.clear()  # no failover after a CANCEL
        if invite.txn.state is State.PROCEEDING:
            for branch in invite.branches:
                self._cancel_branch(branch, now, out)

    def _forward_stateless(
        self, msg: SipMessage, source: Endpoint, now: float, out: list[Send]
    ) -> None:
        if msg.max_forwards == 0:
            if msg.method != "ACK":
                self._answer_statelessly(msg, source, 483, None, out)
            return
        routes = plan_routes(msg, self.config)
        decided = self._targets(msg, source, routes, now)
        if isinstance(decided, Resolve):
            # stateless: nothing to park; ask for the lookup, the retransmission of the
            # request will find the answer cached
            if decided.uri not in self._parked:
                self._parked[decided.uri] = []
                self.lookups.append(decided.uri)
            return
        if isinstance(decided, Answer):
            if msg.method != "ACK":
                self._answer_statelessly(msg, source, decided.status, decided.reason, out)
            return
        target = decided.targets[0]  # §16.11: a stateless proxy does not fork
        record_route = (
            self.config.record_route and msg.method in _DIALOG_CREATING and msg.to.tag is None
        )
        data = build_forwarded(
            msg,
            source=source,
            target=target.next_hop,
            config=self.config,
            routes=routes,
            branch=stateless_branch(msg),
            request_uri=target.request_uri,
            record_route=record_route,
            route_set=target.route_set,
        )

        def proceed(data: bytes, now: float, out: list[Send]) -> None:
            out.append(Send(target.next_hop, data))
            self.stats["forwarded.stateless"] += 1

        def refuse(status: int, reason: str | None, now: float, out: list[Send]) -> None:
            if msg.method != "ACK":
                self._answer_statelessly(msg, source, status, reason, out)

        self._gate.cross(
            data, source.side, target.next_hop.side, source.host, now, out, proceed, refuse
        )

    def _fail_over(self, server: ServerSide, now: float, out: list[Send]) -> None:
        """Serial forking: a failed target gives way to the next one (the new branch is
        pending before the failure is counted, so the context keeps waiting)."""
        if server.serial and server.routes is not None and not server.context.done:
            self.stats["failover"] += 1
            self._fork(server, server.serial.pop(0), server.routes, server.record_route, now, out)
