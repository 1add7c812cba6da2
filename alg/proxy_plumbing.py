"""Transaction plumbing of the proxy core: sending responses on server transactions,
forgetting finished transactions, CANCEL branches, stateless answers (RFC 3261 §16-17).

`ProxyPlumbing` is the bottom layer of `alg.proxy.ProxyCore` (which sets the state it
declares): `alg.proxy_responses` handles responses on top of it, `alg.proxy` requests.
Nothing here decides anything about routing; it moves messages through the transaction
state machines of `alg.transactions` and the media gate.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator

from alg.builders import build_cancel, build_response, stand_in_request
from alg.call_events import CallEvents
from alg.errors import SipParseError
from alg.forwarding import with_challenges
from alg.hop_health import HopHealth
from alg.logsetup import call_context
from alg.media.core import MediaCore
from alg.media.teardown import reason_header
from alg.media_gate import MediaGate
from alg.proxy_model import Endpoint, ProxyConfig, Send, Side
from alg.proxy_state import ClientBranch, ServerSide, TimerHeap
from alg.sip import SipMessage
from alg.transaction_keys import ClientKey, LegacyServerKey, ServerKey
from alg.transactions import Action, Event, Kind, State, Transaction, tu_event_for_status

log = logging.getLogger("sipwall.alg.proxy")


class ProxyPlumbing:
    """The proxy core's transaction tables and what every layer does with them."""

    config: ProxyConfig
    media: MediaCore | None
    calls: CallEvents | None
    stats: Counter[str]
    _gate: MediaGate
    _servers: dict[ServerKey | LegacyServerKey, ServerSide]
    _clients: dict[ClientKey, ClientBranch]
    _timers: TimerHeap
    _branch_numbers: Iterator[int]
    hops: HopHealth

    def _send_upstream(  # noqa: PLR0917
        self,
        server: ServerSide,
        event: Event,
        data: bytes,
        from_side: Side,
        now: float,
        out: list[Send],
        sender_host: str | None = None,
    ) -> None:
        """A response on its way to the request's sender, through the media core."""

        def proceed(data: bytes, now: float, out: list[Send]) -> None:
            self._server_send(server, event, data, now, out)

        def refuse(status: int, reason: str | None, now: float, out: list[Send]) -> None:
            # the response cannot be anchored: its sender gets `status` instead
            if server.txn.state in (State.TRYING, State.PROCEEDING):
                why = (reason_header(status, reason or ""),)  # RFC 3326
                data = build_response(
                    server.request, status, reason, to_tag=server.to_tag, extra_headers=why
                )
                self._server_send(server, tu_event_for_status(status), data, now, out)

        self._gate.cross(
            data,
            from_side,
            server.source.side,
            sender_host or server.source.host,
            now,
            out,
            proceed,
            refuse,
        )

    def _with_challenges(self, server: ServerSide, best: SipMessage) -> bytes:
        return with_challenges(best, server.context.challenges())

    def _respond(
        self,
        server: ServerSide,
        status: int,
        now: float,
        out: list[Send],
        *,
        reason: str | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        data = build_response(
            server.request, status, reason, to_tag=server.to_tag, extra_headers=headers
        )
        if status >= 300 and log.isEnabledFor(logging.DEBUG):
            with call_context(server.request.call_id):
                log.debug("answered %d %s to %s", status, reason or "", server.source.host)
        if status < 200 or self.media is None:
            self._server_send(server, tu_event_for_status(status), data, now, out)
        else:  # our own final still tells the media core the call is over
            self._send_upstream(
                server, tu_event_for_status(status), data, server.source.side, now, out
            )

    def _server_send(
        self, server: ServerSide, event: Event, data: bytes, now: float, out: list[Send]
    ) -> None:
        if self.calls is not None and server.txn.kind is Kind.INVITE_SERVER:
            self.calls.response(server.request, data, now)
        server.last_response = data
        self._server_actions(server, server.txn.handle(event, now), out)
        self._schedule(server)

    def _server_actions(
        self, server: ServerSide, actions: tuple[Action, ...], out: list[Send]
    ) -> None:
        for action in actions:
            if action is Action.SEND_RESPONSE and server.last_response is not None:
                out.append(Send(server.source, server.last_response))
            elif action is Action.TERMINATE:
                self._forget_server(server)

    def _forget_server(self, server: ServerSide) -> None:
        """The server transaction is over. Its branches keep a reference to it while they
        still run; it drops its references to them so that nothing forms a cycle (a
        cycle would wait for a full garbage collection, a pause of hundreds of ms)."""
        if self._servers.get(server.key) is server:
            del self._servers[server.key]
        server.branches = []

    def _forget_client(self, branch: ClientBranch) -> None:
        if self._clients.get(branch.key) is branch:
            del self._clients[branch.key]
        server = branch.server
        if server is not None:
            branch.server = None
            if branch in server.branches:
                server.branches.remove(branch)

    def _cancel_branch(self, branch: ClientBranch, now: float, out: list[Send]) -> None:
        """§9.1: CANCEL a pending INVITE branch, waiting for a provisional if needed."""
        if branch.cancelled or branch.txn.kind is not Kind.INVITE_CLIENT:
            return
        if branch.txn.state is not State.PROCEEDING:
            if branch.txn.state is State.CALLING:
                branch.cancel_wanted = True  # no provisional yet: CANCEL must wait
            return
        branch.cancelled = True
        data = build_cancel(branch.request)
        cancel = ClientBranch(
            next(self._branch_numbers),
            ClientKey(branch.key.branch, "CANCEL"),
            Transaction.start(
                Kind.NON_INVITE_CLIENT,
                reliable=branch.destination.reliable,
                now=now,
                settings=self.config.timers,
            ),
            data,
            branch.destination,
            None,
        )
        self._clients[cancel.key] = cancel
        out.append(Send(branch.destination, data))
        self.stats["cancel.sent"] += 1
        self._schedule(cancel)

    def _answer_unparsable(
        self, data: bytes, error: SipParseError, source: Endpoint, out: list[Send]
    ) -> None:
        stand_in = stand_in_request(data)
        if stand_in is not None:
            self._answer_statelessly(stand_in, source, error.status, error.reason, out)

    def _answer_statelessly(  # noqa: PLR0917
        self,
        msg: SipMessage,
        source: Endpoint,
        status: int,
        reason: str | None,
        out: list[Send],
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        try:
            out.append(Send(source, build_response(msg, status, reason, extra_headers=headers)))
        except SipParseError:
            self.stats["dropped.unanswerable"] += 1  # no usable Via/To/...: drop

    def _schedule(self, owner: ServerSide | ClientBranch) -> None:
        self._timers.schedule(owner)
