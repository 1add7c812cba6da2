"""Feeding call detail records from what the proxy sees (alg.cdr does the bookkeeping).

The proxy reports the requests that start and end calls and the responses it sends
upstream for an initial INVITE (after choosing the best one, §16.7); `CallEvents` turns
them into `CallRecorder` events and collects the finished records for the shell to
write.

With media anchoring, a call's bindings and counters come from the agent after the call
ended (the release of its group is reported asynchronously, `alg.media.record`).
`media_pending(call_id)` — the media core's word that a release of that call is still to
be reported — makes a finished record wait for it (`CallRecorder.await_media`); a record
without anchored media (e.g. a call the proxy refused itself, 404 or 407) is written at
once.
"""

from __future__ import annotations

from collections.abc import Callable

from alg.cdr import CallRecorder, Cdr
from alg.errors import SipParseError
from alg.proxy_model import Endpoint
from alg.sip import SipMessage, parse_message


class CallEvents:
    def __init__(
        self, recorder: CallRecorder, media_pending: Callable[[str], bool] | None = None
    ) -> None:
        self.recorder = recorder
        self.media_pending = media_pending
        self._finished: list[Cdr] = []

    @property
    def finished(self) -> list[Cdr]:
        """Records ready to be written, including those whose media just arrived."""
        ready = self.recorder.take_ready()
        if ready:
            self._finished += ready
        return self._finished

    def request(self, msg: SipMessage, source: Endpoint, now: float) -> None:
        """A new request: an INVITE starting a call, a BYE ending one."""
        if msg.method == "INVITE" and msg.to.tag is None:
            caller, callee = str(msg.from_.uri), str(msg.to.uri)
            self.recorder.invite(msg.call_id, caller, callee, source.side, now)
        elif msg.method == "BYE":
            tags = tuple(tag for tag in (msg.from_.tag, msg.to.tag) if tag)
            self._finish(self.recorder.bye(msg.call_id, now, tags), now)

    def response(self, request: SipMessage, data: bytes, now: float) -> None:
        """A response we send upstream to an initial INVITE."""
        if request.to.tag is not None:
            return
        try:
            response = parse_message(data)
            cdr = self.recorder.response(request.call_id, response.status, now, response.to.tag)
        except SipParseError:
            return
        self._finish(cdr, now)

    def ack(self, call_id: str, now: float) -> None:
        self.recorder.ack(call_id, now)

    def cancel(self, call_id: str, now: float) -> None:
        self.recorder.cancel(call_id, now)

    def get_timer(self) -> float | None:
        return self.recorder.get_timer()

    def expire(self, now: float) -> None:
        self._finished += self.recorder.expire(now)

    def take(self) -> list[Cdr]:
        done = self.finished
        self._finished = []
        return done

    def close(self) -> list[Cdr]:
        """The shell stops: every record, those still waiting for media included."""
        self._finished += self.recorder.close()
        return self.take()

    def _finish(self, cdr: Cdr | None, now: float) -> None:
        if cdr is None:
            return
        if self.media_pending is not None and self.media_pending(cdr.call_id):
            self.recorder.await_media(cdr, now)
        else:
            self._finished.append(cdr)
