"""Where the proxy core meets the media core (alg.media): one gate, no waiting inside.

A message crossing from one side to the other is handed to the media core with two
continuations: what to do with the bytes it lets through, and what to do if it refuses.
Either runs at once, or later — the message is parked until the agent's answers to the
media core's FCP actions come back (`results`) or its timers fire (`timers`). With no
media core the gate lets everything through unchanged.

Every parked message is resolved exactly once, whichever of the three ends it: a crossing
can end its call too (a BYE, CANCEL or failure), refusing what of it was still parked, so
`cross` collects the core's resolutions as well. After `results` and `timers` the core's
news for the CDRs goes to the recorder: the calls the ALG ended itself (their records end
then, `CallRecorder.alg_ended`) and the media of released groups (`set_media`) — a
release that failed by timeout as much as one the agent refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from alg.cdr import CallRecorder
from alg.media.actions import AgentResult, Ready, Resolution
from alg.media.actions import Forward as MediaForward
from alg.media.actions import Parked as MediaParked
from alg.media.core import MediaCore
from alg.proxy_model import Send, Side

# What to do with a message once the media core lets it go (bytes to send), or refuses it.
Proceed = Callable[[bytes, float, list[Send]], None]
Refuse = Callable[[int, str | None, float, list[Send]], None]


class MediaGate:
    def __init__(self, media: MediaCore | None, stats: Counter[str]) -> None:
        self.media = media
        self.stats = stats
        self._waiting: dict[int, tuple[Proceed, Refuse]] = {}

    def inbound(self, data: bytes, now: float) -> bytes:
        """A message from the outside, with what topology hiding masked restored."""
        return data if self.media is None else self.media.inbound(data, now)

    def cross(  # noqa: PLR0917
        self,
        data: bytes,
        from_side: Side,
        to_side: Side,
        source_host: str,
        now: float,
        out: list[Send],
        proceed: Proceed,
        refuse: Refuse,
    ) -> None:
        if self.media is None:
            proceed(data, now, out)
            return
        outcome = self.media.crossing(
            data, from_side=from_side, to_side=to_side, source_host=source_host, now=now
        )
        if isinstance(outcome, MediaForward):
            proceed(outcome.data, now, out)
        elif isinstance(outcome, MediaParked):
            self.stats["media.parked"] += 1
            self._waiting[outcome.ticket] = (proceed, refuse)
        else:
            self.stats[f"media.refused.{outcome.status}"] += 1
            refuse(outcome.status, outcome.reason, now, out)
        self._resolve(self.media.take_resolutions(), now, out)

    def results(self, result: AgentResult, now: float, recorder: CallRecorder | None) -> list[Send]:
        """An agent answered one of the media core's actions (the shell performs them)."""
        out: list[Send] = []
        if self.media is not None:
            self._resolve(self.media.on_result(result, now), now, out)
            self._report(self.media, recorder)
        return out

    def get_timer(self) -> float | None:
        return None if self.media is None else self.media.get_timer()

    def timers(self, now: float, out: list[Send], recorder: CallRecorder | None) -> None:
        if self.media is not None:
            self._resolve(self.media.handle_timer(now), now, out)
            self._report(self.media, recorder)

    @property
    def waiting_count(self) -> int:
        """Parked messages waiting for the media core."""
        return len(self._waiting)

    @staticmethod
    def _report(media: MediaCore, recorder: CallRecorder | None) -> None:
        """The calls the ALG ended first: each one's record then waits for its media,
        which may come in the same batch. An ending made while a message crossed stays
        in the core until then: its release is pending, so `results` or `timers` follow."""
        endings, records = media.take_endings(), media.take_records()
        if recorder is None:
            return
        for ended in endings:
            recorder.alg_ended(ended.call_id, ended.at, ended.status, ended.reason)
        for record in records:
            recorder.set_media(record.call_id, record.media)

    def _resolve(self, resolutions: list[Resolution], now: float, out: list[Send]) -> None:
        for resolution in resolutions:
            waiting = self._waiting.pop(resolution.ticket, None)
            if waiting is None:
                continue
            proceed, refuse = waiting
            if isinstance(resolution, Ready):
                proceed(resolution.data, now, out)
            else:
                refuse(resolution.status, resolution.reason, now, out)
