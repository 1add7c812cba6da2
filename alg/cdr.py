"""Call detail records (sans-I/O recorder + a small JSON-lines writer).

Theory of operation
-------------------
`CallRecorder` is fed the events of each call as the proxy forwards them and produces
one `Cdr` when the call is over. Events are keyed by Call-ID and carry `now`, the wall
clock (seconds since the epoch, UTC) because a CDR is a billing record.

* `invite`   - initial INVITE (no To tag): start time, caller, callee, side of origin.
* `response` - responses to it as forwarded upstream, i.e. after the proxy's response
  selection (RFC 3261 §16.7), so one non-2xx final answer at most. A 1xx with a To tag
  opens an early dialog; several tags mean the call forked (§16.7 step 5). The first 2xx
  answers the call; a 2xx from another fork is a second dialog that the caller must
  tear down (§13.2.2.4) and does not change the record.
* `ack`      - the 2xx was acknowledged (the dialog is confirmed).
* `cancel`   - the caller gave up; the call ends at the 487 (§9.1), or stays answered
  if a 2xx crossed the CANCEL.
* `bye`      - ends an answered call; a BYE of a losing fork's dialog (other tag) is not
  the end of the call.
* `timeout`  - transaction timeout (408), session-timer expiry (RFC 4028 §10) or any
  other abnormal end the proxy detects.
* `alg_ended` - the ALG itself ended an answered call (`alg.media.teardown`: no pinhole
  could be opened for it, or a re-INVITE's answer could not be anchored): it sent the
  BYEs, so no party sends one the proxy sees. The record ends then, `ended_by` "alg",
  `status` and `reason` as in the Reason header of those BYEs (RFC 3326 §2); it is
  still ANSWERED — the parties were connected until then, and that is what is billed.
  An unanswered call is left alone: its caller gets a failure final instead of the
  2xx, and that ends its record.
* `expire(now)` ends calls that never end cleanly: unanswered after `max_setup`,
  answered after `max_duration` (the call is billed up to that limit). `get_timer()`
  says when to call it next.

The media anchoring adds its bindings and packet/byte counters with `set_media`; they
are copied into the record as a free-form mapping. They are only known once the agent
has answered the release of the call's group (RFC 5189 §2.3.11 GLC with lifetime 0: it
reports the counters just before), i.e. *after* the BYE or final response closed the
record. So a finished record whose media is on its way is not handed out at once:
`await_media(cdr, now)` keeps it *closing* until `set_media` brings the media (the record
is then ready, `take_ready()`), or until `media_wait` seconds passed (`expire`), when it
is written without counters and its media says why (`{"error": ...}`), as it does when
the shell stops first (`close`). Several closing records of one Call-ID (a call retried
after a 401/407 reuses it, RFC 3261 §22.2) take their media first in, first out, the
order of their releases. A closing record lives `media_wait` seconds at most: nothing
grows without bound.

Dispositions (one per call): ANSWERED once a 2xx arrived; otherwise by the final
status: 486/600 BUSY, 408/480 or no final answer NO_ANSWER, 487 or a CANCEL seen
CANCELLED, anything else FAILED with its code.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import json
import logging
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Final, Literal

log = logging.getLogger("sipwall.alg.cdr")

EndedBy = Literal["final", "bye", "timeout", "expired", "alg"]
FsyncPolicy = Literal["never", "always", "interval"]

# How long a finished record waits for its media. An agent action is tried up to 3
# times with a 2 s deadline and 0.2 s, 0.4 s between (alg.media.agents.AgentSettings):
# 6.6 s before the media core gives up on a release; some slack on top.
MEDIA_WAIT: Final = 15.0


class Disposition(enum.Enum):
    ANSWERED = "ANSWERED"
    BUSY = "BUSY"
    NO_ANSWER = "NO_ANSWER"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


_BY_STATUS: Final = {
    486: Disposition.BUSY,  # Busy Here
    600: Disposition.BUSY,  # Busy Everywhere
    408: Disposition.NO_ANSWER,  # Request Timeout (no final answer in time)
    480: Disposition.NO_ANSWER,  # Temporarily Unavailable
    487: Disposition.CANCELLED,  # Request Terminated
}


@dataclass(frozen=True, slots=True)
class Cdr:
    call_id: str
    caller: str
    callee: str
    side: str  # side of origin: "inside" | "outside"
    start: float
    answer: float | None
    end: float
    disposition: Disposition
    status: int | None  # final status that decided the call; None if none arrived
    ended_by: EndedBy
    early_dialogs: int = 0  # distinct To tags seen in provisional responses
    confirmed: bool = False  # the 2xx was ACKed
    media: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    reason: str | None = None  # why the ALG ended the call itself (ended_by "alg")

    @property
    def duration(self) -> float:
        """Billable seconds: from answer to end, 0 for unanswered calls."""
        return max(0.0, self.end - self.answer) if self.answer is not None else 0.0

    def to_json(self) -> str:
        """One JSON line (no newline); keys sorted so records diff and grep well."""
        data = {
            "call_id": self.call_id,
            "caller": self.caller,
            "callee": self.callee,
            "side": self.side,
            "start": _iso(self.start),
            "answer": None if self.answer is None else _iso(self.answer),
            "end": _iso(self.end),
            "duration": round(self.duration, 3),
            "disposition": self.disposition.value,
            "status": self.status,
            "ended_by": self.ended_by,
            "early_dialogs": self.early_dialogs,
            "confirmed": self.confirmed,
            "media": dict(self.media),
            "reason": self.reason,
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class _Call:
    call_id: str
    caller: str
    callee: str
    side: str
    start: float
    deadline: float
    answer: float | None = None
    answered_tag: str | None = None
    early_tags: set[str] = field(default_factory=set)
    cancelled: bool = False
    confirmed: bool = False
    media: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Closing:
    """A finished record waiting for its media until `until`; `done` once it left (by
    its media) while still queued in the deadline order."""

    cdr: Cdr
    until: float
    done: bool = False


class CallRecorder:
    def __init__(
        self,
        *,
        max_setup: float = 300.0,
        max_duration: float = 4 * 3600.0,
        media_wait: float = MEDIA_WAIT,
    ) -> None:
        if max_setup <= 0 or max_duration <= 0 or media_wait <= 0:
            raise ValueError("max_setup, max_duration and media_wait must be positive")
        self.max_setup = max_setup
        self.max_duration = max_duration
        self.media_wait = media_wait
        self._calls: dict[str, _Call] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap; stale entries skipped
        # records waiting for their media: by Call-ID (oldest first) and, since every
        # one waits `media_wait`, in deadline order too (a plain FIFO)
        self._closing: dict[str, deque[_Closing]] = {}
        self._closing_order: deque[_Closing] = deque()
        self._ready: list[Cdr] = []

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def closing_count(self) -> int:
        """Finished records still waiting for their media."""
        return sum(len(waiting) for waiting in self._closing.values())

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def invite(self, call_id: str, caller: str, callee: str, side: str, now: float) -> None:
        if call_id in self._calls:
            return  # retransmission (or a re-INVITE fed by mistake): the call exists
        deadline = now + self.max_setup
        self._calls[call_id] = _Call(call_id, caller, callee, side, now, deadline)
        heapq.heappush(self._deadlines, (deadline, call_id))

    def response(
        self, call_id: str, status: int, now: float, to_tag: str | None = None
    ) -> Cdr | None:
        """A response to the initial INVITE; a Cdr if it ended the call."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        if status < 200:
            if to_tag and call.answer is None:
                call.early_tags.add(to_tag)
            return None
        if status < 300:
            if call.answer is None:
                call.answer, call.answered_tag = now, to_tag
                call.deadline = now + self.max_duration
                heapq.heappush(self._deadlines, (call.deadline, call_id))
            return None
        if call.answer is not None:
            return None  # a late failure of another fork; the call is up
        if call.cancelled:
            disposition = Disposition.CANCELLED
        else:
            disposition = _BY_STATUS.get(status, Disposition.FAILED)
        return self._finish(call, now, disposition, status, "final")

    def ack(self, call_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.answer is not None:
            call.confirmed = True

    def cancel(self, call_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.answer is None:
            call.cancelled = True

    def bye(self, call_id: str, now: float, tags: tuple[str, ...] = ()) -> Cdr | None:
        """BYE of the call; `tags` are its From and To tags, to tell a losing fork's
        dialog from the answered one. A BYE before any answer is ignored (§15)."""
        call = self._calls.get(call_id)
        if call is None or call.answer is None:
            return None
        if tags and call.answered_tag is not None and call.answered_tag not in tags:
            return None
        return self._finish(call, now, Disposition.ANSWERED, 200, "bye")

    def timeout(self, call_id: str, now: float) -> Cdr | None:
        call = self._calls.get(call_id)
        if call is None:
            return None
        if call.answer is not None:
            return self._finish(call, now, Disposition.ANSWERED, 200, "timeout")
        disposition = Disposition.CANCELLED if call.cancelled else Disposition.NO_ANSWER
        return self._finish(call, now, disposition, 408, "timeout")

    def alg_ended(self, call_id: str, now: float, status: int, reason: str) -> None:
        """The ALG ended the answered call `call_id` itself at `now` (see the module
        notes); the record waits for the media of the release that follows, and comes
        out of `take_ready`. Nothing for a call already over or never answered."""
        call = self._calls.get(call_id)
        if call is None or call.answer is None:
            return
        cdr = self._finish(call, now, Disposition.ANSWERED, status, "alg", reason)
        self.await_media(cdr, now)

    def await_media(self, cdr: Cdr, now: float) -> None:
        """Keep the finished `cdr` until its media arrives (`set_media`) or for
        `media_wait` seconds (`expire`)."""
        closing = _Closing(cdr, now + self.media_wait)
        self._closing.setdefault(cdr.call_id, deque()).append(closing)
        self._closing_order.append(closing)

    def set_media(self, call_id: str, media: Mapping[str, Any]) -> None:
        """The media of a call: completes its oldest closing record, else goes into the
        call in progress (a group released before the call's end reached us); else it
        came too late and is dropped."""
        waiting = self._closing.get(call_id)
        if waiting:
            closing = waiting.popleft()
            if not waiting:
                del self._closing[call_id]
            closing.done = True
            self._ready.append(_with_media(closing.cdr, media))
            return
        call = self._calls.get(call_id)
        if call is not None:
            call.media = dict(media)
        else:
            log.info("call %s: media record arrived after its CDR was written", call_id)

    def take_ready(self) -> list[Cdr]:
        """Closing records that got their media since the last call."""
        ready, self._ready = self._ready, []
        return ready

    def close(self) -> list[Cdr]:
        """The shell stops: every closing record, without the media it waited for."""
        done = [
            _with_media(closing.cdr, {"error": "the ALG stopped before the release was reported"})
            for closing in self._closing_order
            if not closing.done
        ]
        self._closing.clear()
        self._closing_order.clear()
        return done

    def get_timer(self) -> float | None:
        """When `expire` next has something to do (None: no call in progress and no
        record waiting for its media)."""
        self._drop_stale()
        order = self._closing_order
        while order and order[0].done:
            order.popleft()
        times = [self._deadlines[0][0]] if self._deadlines else []
        if order:
            times.append(order[0].until)
        return min(times, default=None)

    def expire(self, now: float) -> list[Cdr]:
        """Calls that never ended cleanly, and records whose media did not come in time."""
        done = self._expire_closing(now)
        while True:
            self._drop_stale()
            if not self._deadlines or self._deadlines[0][0] > now:
                return done
            deadline, call_id = heapq.heappop(self._deadlines)
            call = self._calls[call_id]
            log.warning("call %s never ended cleanly; closing its record", call_id)
            if call.answer is not None:
                done.append(self._finish(call, deadline, Disposition.ANSWERED, 200, "expired"))
            else:
                disposition = Disposition.CANCELLED if call.cancelled else Disposition.NO_ANSWER
                done.append(self._finish(call, deadline, disposition, None, "expired"))

    def _expire_closing(self, now: float) -> list[Cdr]:
        done: list[Cdr] = []
        order = self._closing_order
        while order and (order[0].done or order[0].until <= now):
            closing = order.popleft()
            if closing.done:
                continue
            call_id = closing.cdr.call_id
            waiting = self._closing[call_id]
            waiting.popleft()  # both queues are oldest first: it is the front of its Call-ID
            if not waiting:
                del self._closing[call_id]
            log.warning("call %s: no media report within %gs of its end", call_id, self.media_wait)
            error = f"no release report from the agent within {self.media_wait:g} s"
            done.append(_with_media(closing.cdr, {"error": error}))
        return done

    def _drop_stale(self) -> None:
        heap = self._deadlines
        while heap:
            deadline, call_id = heap[0]
            call = self._calls.get(call_id)
            if call is not None and call.deadline == deadline:
                return
            heapq.heappop(heap)

    def _finish(  # noqa: PLR0917
        self,
        call: _Call,
        end: float,
        disposition: Disposition,
        status: int | None,
        by: EndedBy,
        reason: str | None = None,
    ) -> Cdr:
        del self._calls[call.call_id]
        return Cdr(
            call_id=call.call_id,
            caller=call.caller,
            callee=call.callee,
            side=call.side,
            start=call.start,
            answer=call.answer,
            end=end,
            disposition=disposition,
            status=status,
            ended_by=by,
            early_dialogs=len(call.early_tags),
            confirmed=call.confirmed,
            media=MappingProxyType(dict(call.media)),
            reason=reason,
        )


def _with_media(cdr: Cdr, media: Mapping[str, Any]) -> Cdr:
    return dataclasses.replace(cdr, media=MappingProxyType(dict(media)))


class CdrWriter:
    """Appends CDRs as JSON lines. `fsync`: "never" (the OS decides), "always" (each
    record is on disk before `write` returns) or "interval" (at most one fsync per
    `fsync_interval` seconds of `now`; `sync(now)` from the shell's timer flushes the
    rest). Blocking file I/O: the asyncio shell calls it from a worker thread."""

    def __init__(
        self, path: str | Path, *, fsync: FsyncPolicy = "interval", fsync_interval: float = 1.0
    ) -> None:
        if fsync not in {"never", "always", "interval"}:
            raise ValueError(f"unknown fsync policy {fsync!r}")
        self.path = Path(path)
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._file: IO[str] = self._open()
        self._last_sync: float | None = None
        self._dirty = False

    def _open(self) -> IO[str]:
        # O_APPEND: every line lands at the end even if a rotation tool truncates.
        return self.path.open("a", encoding="utf-8")

    def write(self, cdr: Cdr, now: float) -> None:
        self._file.write(cdr.to_json() + "\n")
        self._file.flush()
        self._dirty = True
        last = self._last_sync
        interval_due = last is None or now - last >= self.fsync_interval
        if self.fsync == "always" or (self.fsync == "interval" and interval_due):
            self._sync(now)

    def sync(self, now: float) -> None:
        if self._dirty and self.fsync != "never":
            self._sync(now)

    def _sync(self, now: float) -> None:
        os.fsync(self._file.fileno())
        self._last_sync = now
        self._dirty = False

    def reopen(self) -> None:
        """After log rotation (rename) the shell reopens: new records go to a new file."""
        self._file.close()
        self._file = self._open()

    def close(self) -> None:
        if not self._file.closed:
            if self._dirty and self.fsync != "never":
                os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> CdrWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
