"""Counter dumps in a child process, so that the agent's loop never waits for them.

Why a process: reading every pinhole's counters means libnftables formatting the counted
sets as JSON (~16 µs per element, outside the GIL) and Python parsing it: `json.loads` of
a 2.5 MB dump (16,000 elements) is one C call that holds the GIL for ~30 ms, and the
per-element parse after it holds it in 5 ms slices. In a worker thread that stalled the
loop for tens of milliseconds once a second (the p99 of every RPC). The child does all of
it, at the lowest CPU priority (nice 19: on a busy machine the RPCs come first and the
counters wait), and sends back only the elements whose packet counter is non-zero --
idle pinholes (most of them, and every one in the latency bench) cost the agent nothing.

Protocol on the child's stdin/stdout: the agent writes one byte per request; the child
answers with a 4-byte little-endian length and a `marshal`ed list of
`(set, key, packets, bytes)`. EOF on stdin (the agent exited, even by SIGKILL) ends the
child. It runs in the agent's network namespace because it is the agent's child.

    python -m filter_agent.counter_worker FAMILY TABLE      (started by `CounterProcess`)
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import struct
import sys
from collections.abc import Sequence

from filter_agent.plan import Element, TableSpec

log = logging.getLogger("sipwall.agent.counters")

_LENGTH = struct.Struct("<I")
Row = tuple[str, tuple[str | int, ...], int, int]


def encode(elements: Sequence[Element]) -> bytes:
    rows: list[Row] = [
        (e.set, e.key, e.packets, e.bytes or 0)
        for e in elements
        if e.packets  # non-zero only
    ]
    data = marshal.dumps(rows)
    return _LENGTH.pack(len(data)) + data


def decode(data: bytes) -> list[Element]:
    rows: list[Row] = marshal.loads(data)  # noqa: S302 - our own child, over a pipe
    return [Element(s, tuple(key), packets=p, bytes=b) for s, key, p, b in rows]


def serve(family: str, table: str) -> int:
    from filter_agent.kernel_io import element_reader

    os.nice(19)  # the dump is background work: the agent and its clients come first
    read = element_reader(TableSpec(family, table))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while stdin.read(1):
        stdout.write(encode(read()))
        stdout.flush()
    return 0


class CounterProcess:
    """The agent's side: `await read()` returns the counted elements with traffic."""

    def __init__(self, spec: TableSpec, timeout: float = 30.0) -> None:
        self.spec = spec
        self.timeout = timeout
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the child now (its start-up costs CPU) rather than at the first read."""
        if self._proc is None:
            await self._start()

    async def _start(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "filter_agent.counter_worker",
            self.spec.family,
            self.spec.name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._proc = proc
        return proc

    async def read(self) -> list[Element]:
        proc = self._proc if self._proc is not None else await self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(b"d")
            await proc.stdin.drain()
            header = await asyncio.wait_for(proc.stdout.readexactly(4), self.timeout)
            (length,) = _LENGTH.unpack(header)
            data = await asyncio.wait_for(proc.stdout.readexactly(length), self.timeout)
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await self.close()  # restarted at the next read
            raise OSError(f"counter worker failed: {exc!r}") from exc
        return decode(data)

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


if __name__ == "__main__":
    raise SystemExit(serve(sys.argv[1], sys.argv[2]))
