"""Feeding call detail records from what the proxy sees (alg.cdr does the bookkeeping).

The proxy reports the requests that start and end calls and the responses it sends
upstream for an initial INVITE (after choosing the best one, §16.7); `CallEvents` turns
them into `CallRecorder` events and collects the finished records for the shell to
write.
"""

from __future__ import annotations

from alg.cdr import CallRecorder, Cdr
from alg.errors import SipParseError
from alg.proxy_model import Endpoint
from alg.sip import SipMessage, parse_message


class CallEvents:
    def __init__(self, recorder: CallRecorder) -> None:
        self.recorder = recorder
        self.finished: list[Cdr] = []

    def request(self, msg: SipMessage, source: Endpoint, now: float) -> None:
        """A new request: an INVITE starting a call, a BYE ending one."""
        if msg.method == "INVITE" and msg.to.tag is None:
            caller, callee = str(msg.from_.uri), str(msg.to.uri)
            self.recorder.invite(msg.call_id, caller, callee, source.side, now)
        elif msg.method == "BYE":
            tags = tuple(tag for tag in (msg.from_.tag, msg.to.tag) if tag)
            self._finish(self.recorder.bye(msg.call_id, now, tags))

    def response(self, request: SipMessage, data: bytes, now: float) -> None:
        """A response we send upstream to an initial INVITE."""
        if request.to.tag is not None:
            return
        try:
            response = parse_message(data)
            cdr = self.recorder.response(request.call_id, response.status, now, response.to.tag)
        except SipParseError:
            return
        self._finish(cdr)

    def ack(self, call_id: str, now: float) -> None:
        self.recorder.ack(call_id, now)

    def cancel(self, call_id: str, now: float) -> None:
        self.recorder.cancel(call_id, now)

    def get_timer(self) -> float | None:
        return self.recorder.get_timer()

    def expire(self, now: float) -> None:
        self.finished += self.recorder.expire(now)

    def take(self) -> list[Cdr]:
        done, self.finished = self.finished, []
        return done

    def _finish(self, cdr: Cdr | None) -> None:
        if cdr is not None:
            self.finished.append(cdr)
