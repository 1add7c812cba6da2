"""UDP streams between lab namespaces, observed from the test process.

`Proc` wraps a `labs.udp` tool started inside a namespace and collects its output lines in
a reader thread; tests poll `packets()` / `sent_until()` with `labs.netns.wait_until`.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from labs.netns import Lab, wait_until


@dataclass
class Packet:
    t: float
    src: str
    sport: int
    tag: str
    seq: int


@dataclass
class Proc:
    """A traffic tool inside a namespace, its stdout collected by a thread."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.append(line.split("\n")[0])
        except ValueError:  # "I/O operation on closed file": the lab's teardown (Lab.close)
            return  # killed the tool and closed its pipe while this thread was reading

    def packets(self) -> list[Packet]:
        out = []
        for line in list(self.lines):
            parts = line.split()
            if parts[0] == "recv":
                tag, seq = parts[4].split(":")
                out.append(Packet(float(parts[1]), parts[2], int(parts[3]), tag, int(seq)))
        return out

    def sent_until(self) -> float:
        sent = [float(line.split()[2]) for line in list(self.lines) if line.startswith("sent")]
        return sent[-1] if sent else 0.0

    def wait(self, timeout: float = 30) -> None:
        self.proc.wait(timeout=timeout)


def recv(lab: Lab, ns: str, addr: str, port: int, duration: float = 15) -> Proc:
    proc = Proc(
        lab.spawn(ns, [sys.executable, "-m", "labs.udp", "recv", addr, str(port), str(duration)])
    )
    wait_until(lambda: "ready" in proc.lines, 10, what="receiver ready")
    return proc


def send(  # noqa: PLR0917 - source and destination endpoints
    lab: Lab,
    ns: str,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    *,
    tag: str,
    count: int = 50,
    interval: float = 0.01,
) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "labs.udp",
        "send",
        src,
        str(sport),
        dst,
        str(dport),
        str(interval),
        str(count),
        tag,
    ]
    return Proc(lab.spawn(ns, argv))


def now() -> float:
    """CLOCK_MONOTONIC: the clock the traffic tools stamp packets with."""
    return time.monotonic()
