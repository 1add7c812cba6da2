"""Signal handling for lab owners: turn SIGINT/SIGTERM/SIGHUP into an exception that unwinds
into cleanup, and keep cleanup itself from being interrupted. Original handlers are always
restored (the uvicorn pattern); off the main thread both helpers do nothing; in a process
forked while they are installed, the handlers just exit.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A terminating signal arrived; a BaseException so `except Exception` cannot eat it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_if_forked(installer: int, signum: int) -> None:
    """Handlers are inherited across fork(). pyroute2 forks helper children (netns.create,
    IPRoute(netns=...)) and stops them with SIGTERM; a child must then just die, never
    unwind into the parent's cleanup code with an exception."""
    if os.getpid() != installer:
        os._exit(128 + signum)


class Latch:
    """Remembers the signals received, so that one whose exception was swallowed (raised
    inside an at-fork hook, a __del__ or a weakref callback, which only print it — os.fork
    runs logging's at-fork hooks, and pyroute2 forks) still stops us at the next check()."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def check(self) -> None:
        if self.received:
            raise Interrupted(self.received[0])


@contextmanager
def raising_on_signals(signums: tuple[int, ...] = TERMINATING) -> Iterator[Latch]:
    """Within the block, a terminating signal raises Interrupted at the next bytecode;
    call the latch's check() at safe points to catch one that was swallowed."""
    latch = Latch()
    if not _main_thread():
        yield latch
        return

    installer = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        _exit_if_forked(installer, signum)
        latch.received.append(signum)
        raise Interrupted(signum)

    originals = {s: signal.signal(s, handler) for s in signums}
    try:
        yield latch
    finally:
        for s, original in originals.items():
            signal.signal(s, original)


@contextmanager
def deferred_signals(signums: tuple[int, ...] = TERMINATING) -> Iterator[list[int]]:
    """Within the block, terminating signals are recorded, not acted on; after it, the
    first one recorded is raised as Interrupted (cleanup finishes, then we still stop)."""
    received: list[int] = []
    if not _main_thread():
        yield received
        return

    installer = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        _exit_if_forked(installer, signum)
        received.append(signum)

    originals = {s: signal.signal(s, handler) for s in signums}
    try:
        yield received
    finally:
        for s, original in originals.items():
            signal.signal(s, original)
    if received:
        raise Interrupted(received[0])


def terminate_like_ctrl_c() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does.
    For a test runner: pytest finalises its fixtures on KeyboardInterrupt, so a run that is
    stopped with `kill` (a CI timeout, an impatient engineer) still tears down its labs,
    agents and peers; the default action would end the process at once and leave them.
    Off the main thread this does nothing; a forked child just exits."""
    if not _main_thread():
        return
    installer = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        _exit_if_forked(installer, signum)
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
