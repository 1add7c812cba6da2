"""Responses in the stateful proxy core (RFC 3261 §16.7) and client-transaction timers.

`ProxyResponses` is the middle layer of `alg.proxy.ProxyCore`: a response is matched to
its branch (§17.1.3), fed to the branch's client transaction, and what the transaction
delivers goes through the response context (`alg.response_context`): provisionals but 100
and 2xx upstream at once, other finals held for the best one (§16.7 step 6), a 2xx or 6xx
cancelling the other branches (§16.7 step 10). A branch that times out (Timer B/F, or
Timer C, §16.6 step 11 and §16.8) counts as a 408. Responses without a transaction are
routed by their Via (§16.7, §16.11, §18.2.2).
"""

from __future__ import annotations

from alg.builders import build_ack, build_response
from alg.errors import SipParseError
from alg.forwarding import response_destination, strip_top_via
from alg.proxy_model import Send, Side
from alg.proxy_plumbing import ProxyPlumbing
from alg.proxy_state import ClientBranch, ServerSide
from alg.response_context import Verdict
from alg.sip import SipMessage, check_response
from alg.transaction_keys import client_key
from alg.transactions import Action, Event, Kind, event_for_status, tu_event_for_status

# A target answering these (or not at all) gives way to the next one in serial forking.
_FAILOVER_STATUSES = frozenset({408, 500, 503})


class ProxyResponses(ProxyPlumbing):
    def _fail_over(self, server: ServerSide, now: float, out: list[Send]) -> None:
        """Serial forking: try the next target (`alg.proxy.ProxyCore` forks)."""
        raise NotImplementedError

    def _on_response(self, msg: SipMessage, now: float, out: list[Send]) -> None:
        try:
            check_response(msg)
        except SipParseError:
            self.stats["dropped.malformed_response"] += 1
            return
        top = msg.top_via
        if not self.config.is_ours(top.host, top.port):
            self.stats["dropped.not_our_via"] += 1  # §16.7 step 1 precondition
            return
        branch = self._clients.get(client_key(msg)) if self._clients else None
        if branch is None:  # always so in stateless mode
            self._forward_response_statelessly(msg, out)
            return
        branch.failover_at = None  # it answers: no failover for want of an answer
        self.hops.answered(branch.destination.host, branch.destination.port)
        actions = branch.txn.handle(event_for_status(msg.status), now)
        for action in actions:
            if action is Action.DELIVER:
                self._deliver(branch, msg, now, out)
            elif action is Action.SEND_ACK:
                out.append(Send(branch.destination, build_ack(branch.request, msg)))
            elif action is Action.TERMINATE:
                self._forget_client(branch)
        self._schedule(branch)

    def _forward_response_statelessly(self, msg: SipMessage, out: list[Send]) -> None:
        # §16.7/§16.11: no transaction (stateless mode, or a 2xx retransmission after
        # the INVITE transaction ended): route by the next Via.
        if not self.config.stateless and not (
            200 <= msg.status < 300 and msg.cseq.method == "INVITE"
        ):
            self.stats["dropped.stray_response"] += 1
            return
        destination = response_destination(msg, self.config)
        if destination is None:
            self.stats["dropped.stray_response"] += 1
            return
        if destination.host == "255.255.255.255":
            self.stats["dropped.broadcast_via"] += 1  # RFC 4475 §3.3.10 (bcast)
            return
        out.append(Send(destination, strip_top_via(msg)))

    def _deliver(self, branch: ClientBranch, msg: SipMessage, now: float, out: list[Send]) -> None:
        server = branch.server
        if server is None:
            return  # a response to a CANCEL we sent: hop-by-hop, absorbed
        status = msg.status
        if status < 200:
            branch.provisional = True
            if branch.txn.kind is Kind.INVITE_CLIENT and status > 100:
                branch.timer_c = now + self.config.timer_c  # §16.7 step 2: reset Timer C
            if branch.cancel_wanted:
                self._cancel_branch(branch, now, out)
            if server.context.provisional(status) is Verdict.FORWARD:
                self._send_upstream(
                    server,
                    Event.SEND_PROVISIONAL,
                    strip_top_via(msg),
                    branch.destination.side,
                    now,
                    out,
                    sender_host=branch.destination.host,
                )
            return
        branch.timer_c = None
        if status in _FAILOVER_STATUSES:
            self._fail_over(server, now, out)
        decision = server.context.final(branch.number, status, msg)
        self._apply_decision(
            branch.destination.side,
            server,
            decision.verdict,
            msg,
            decision.final,
            decision.final_status,
            now,
            out,
            sender_host=branch.destination.host,
        )

    def _apply_decision(  # noqa: PLR0917
        self,
        from_side: Side,
        server: ServerSide,
        verdict: Verdict,
        response: SipMessage,
        best: SipMessage | None,
        best_status: int | None,
        now: float,
        out: list[Send],
        sender_host: str | None = None,
    ) -> None:
        if verdict in (Verdict.HOLD, Verdict.ABSORB):
            return
        if verdict is Verdict.FORWARD_AND_CANCEL_OTHERS:
            for other in server.branches:
                self._cancel_branch(other, now, out)
        if 200 <= response.status < 300:
            self._send_upstream(
                server,
                Event.SEND_SUCCESS,
                strip_top_via(response),
                from_side,
                now,
                out,
                sender_host=sender_host,
            )
            return
        if best is None:
            status = best_status or 500
            data = build_response(server.request, status, to_tag=server.to_tag)
            from_side = server.source.side  # ours: the media core only updates its state
        else:
            data = self._with_challenges(server, best)
        self._send_upstream(
            server, tu_event_for_status(best_status or 500), data, from_side, now, out
        )

    def _branch_failed(self, branch: ClientBranch, now: float, out: list[Send]) -> None:
        server = branch.server
        if server is None:
            return
        self._fail_over(server, now, out)
        decision = server.context.branch_failed(branch.number)
        if decision.verdict is Verdict.FORWARD:
            status = decision.final_status or 408
            if status == 408 and decision.final is None and server.request.method != "INVITE":
                # RFC 4320 §4.1: never 408 to a non-INVITE request; by now the client
                # has given up anyway. The server transaction ends silently.
                server.txn.abandon()
                self._forget_server(server)
                self.stats["timeout.non_invite"] += 1
                return
            data = (
                build_response(server.request, status, to_tag=server.to_tag)
                if decision.final is None
                else self._with_challenges(server, decision.final)
            )
            self._send_upstream(
                server, tu_event_for_status(status), data, server.source.side, now, out
            )

    def _client_timers(self, branch: ClientBranch, now: float, out: list[Send]) -> None:
        if branch.failover_at is not None and branch.failover_at <= now:
            branch.failover_at = None
            server = branch.server
            if server is not None and server.serial and not server.context.done:
                # serial forking: not even a 100 Trying from this target; the next one is
                # tried now rather than after Timer B/F, and this one is held down
                self.stats["failover.no_answer"] += 1
                self.hops.failed(branch.destination, now)
                branch.txn.abandon()
                self._branch_failed(branch, now, out)
                self._forget_client(branch)
                return
        if branch.timer_c is not None and branch.timer_c <= now:
            branch.timer_c = None
            self.stats["timer_c"] += 1
            if branch.provisional and not branch.cancelled:
                self._cancel_branch(branch, now, out)  # §16.6 step 11: ringing too long
                # §16.8 lets the proxy end the client transaction: if no final response
                # (the 487) comes within 64*T1 of the CANCEL, give up on the branch
                branch.timer_c = now + 64 * self.config.timers.t1
            else:
                # §16.8: as if a 408 had arrived on this branch
                branch.txn.abandon()
                self._branch_failed(branch, now, out)
                self._forget_client(branch)
                return
        for action in branch.txn.handle_timer(now):
            if action is Action.SEND_REQUEST:
                out.append(Send(branch.destination, branch.data))
                self.stats["retransmitted"] += 1
            elif action in (Action.TIMEOUT, Action.TRANSPORT_FAILED):
                if not branch.provisional:  # never answered at all: held down
                    self.hops.failed(branch.destination, now)
                self._branch_failed(branch, now, out)
            elif action is Action.TERMINATE:
                self._forget_client(branch)
