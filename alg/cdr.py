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
* `expire(now)` ends calls that never end cleanly: unanswered after `max_setup`,
  answered after `max_duration` (the call is billed up to that limit). `get_timer()`
  says when to call it next.

The media anchoring adds its bindings and packet/byte counters with `set_media`; they
are copied into the record as a free-form mapping.

Dispositions (one per call): ANSWERED once a 2xx arrived; otherwise by the final
status: 486/600 BUSY, 408/480 or no final answer NO_ANSWER, 487 or a CANCEL seen
CANCELLED, anything else FAILED with its code.
"""

from __future__ import annotations

import enum
import heapq
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Final, Literal

log = logging.getLogger("sipwall.alg.cdr")

EndedBy = Literal["final", "bye", "timeout", "expired"]
FsyncPolicy = Literal["never", "always", "interval"]


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


class CallRecorder:
    def __init__(self, *, max_setup: float = 300.0, max_duration: float = 4 * 3600.0) -> None:
        if max_setup <= 0 or max_duration <= 0:
            raise ValueError("max_setup and max_duration must be positive")
        self.max_setup = max_setup
        self.max_duration = max_duration
        self._calls: dict[str, _Call] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap; stale entries skipped

    def __len__(self) -> int:
        return len(self._calls)

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

    def set_media(self, call_id: str, media: Mapping[str, Any]) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            call.media = dict(media)

    def get_timer(self) -> float | None:
        """When `expire` next has something to do (None: no call in progress)."""
        self._drop_stale()
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> list[Cdr]:
        done: list[Cdr] = []
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

    def _drop_stale(self) -> None:
        heap = self._deadlines
        while heap:
            deadline, call_id = heap[0]
            call = self._calls.get(call_id)
            if call is not None and call.deadline == deadline:
                return
            heapq.heappop(heap)

    def _finish(
        self, call: _Call, end: float, disposition: Disposition, status: int | None, by: EndedBy
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
        )


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
