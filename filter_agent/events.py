"""FCP event streams of the agent (WatchEvents): numbering, fan-out, slow consumers.

Every event gets the next sequence number of this agent process and the agent's epoch.
An event goes to its owner's watchers and to every admin watcher; owner None (e.g.
AGENT_DRAINING) goes to everyone. A watcher whose queue is full (a consumer that fell
`WATCH_QUEUE` events behind) has lost track anyway: its stream is ended and it re-lists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from fcp import types as f
from fcp.backend import ADMIN_OWNER

log = logging.getLogger("sipwall.agent.events")

WATCH_QUEUE = 10_000  # events buffered per watcher before it is cut off


class EventHub:
    def __init__(self, epoch: int, wall: Callable[[], float]) -> None:
        self.epoch = epoch
        self._wall = wall
        self._watchers: list[tuple[str, asyncio.Queue[f.Event | None]]] = []
        self._sequence = 0

    async def watch(self, owner: str) -> AsyncIterator[f.Event]:
        queue: asyncio.Queue[f.Event | None] = asyncio.Queue(WATCH_QUEUE)
        entry = (owner, queue)
        self._watchers.append(entry)
        try:
            yield self.event(f.EventKind.WATCH_STARTED)
            while (event := await queue.get()) is not None:
                yield event
        finally:
            if entry in self._watchers:
                self._watchers.remove(entry)

    def event(self, kind: f.EventKind, **fields: object) -> f.Event:
        self._sequence += 1
        return f.Event(self._sequence, kind, self._wall(), self.epoch, **fields)  # type: ignore[arg-type]

    def publish(self, owner: str | None, kind: f.EventKind, **fields: object) -> None:
        """To the owner's watchers and the admins'; owner None: to everyone."""
        event = self.event(kind, **fields)
        for entry in list(self._watchers):
            watcher, queue = entry
            if owner is not None and watcher not in (owner, ADMIN_OWNER):
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("event watcher of %s is too slow; closing its stream", watcher)
                self._watchers.remove(entry)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def close(self) -> None:
        """End every stream."""
        for _, queue in self._watchers:
            queue.put_nowait(None)
