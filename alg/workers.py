"""`[proxy] workers = N`: N proxy processes serving the same UDP ports.

One Python process uses one core; a stateless proxy keeps no state between messages, so
several processes can share its ports, and a stateful one keeps state per call only, so
each worker can own the calls whose Call-ID hashes to it (alg.affinity). Each worker is
`sipwall alg --config X --worker I` and binds its UDP sockets with SO_REUSEPORT
(socket(7)): the kernel then gives every datagram to one socket of the group. Its
default choice hashes the 4-tuple, which would pin a trunk or a load generator (one
address and port for all its calls) to one worker. A stateful proxy's supervisor
therefore creates, per side, an eBPF program that delivers each datagram to the worker
owning its Call-ID (alg.call_steering), and hands it to the workers, which join it. A
stateless worker (or a stateful one on a kernel that refuses the program) attaches a
classic BPF program to the group (SO_ATTACH_REUSEPORT_CBPF) that picks a socket at
random: `ld rand; mod N; ret a` (an index past the sockets that exist, while a worker
restarts, falls back to the hash). `alg.config.check_workers` refuses what would need
state shared beyond a call (TCP connections, media, nonces, CDRs, an in-memory location
service); per-source rate limits are divided among the workers, since each sees 1/N of
every source's requests (or calls).

The supervisor (`supervise`) is the process `sipwall alg` started: it starts the workers,
prints the readiness line when each has said it is ready, writes the pid file, forwards
SIGHUP (route reload) and SIGUSR1 (counters) to every worker, and stops them all on
SIGTERM or SIGINT (SIGKILL after `STOP_SECONDS`). A worker that dies is started again, at
most `RESTARTS` times within `RESTART_WINDOW` seconds; past that the supervisor stops the
others and exits 1, so that its own supervisor (systemd) sees the failure.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from alg.call_steering import GroupSteering, SteeringError
from alg.config import AlgConfig
from alg.proxy_model import SIDES, Side

log = logging.getLogger("sipwall.alg.workers")

SO_ATTACH_REUSEPORT_CBPF: Final = 51  # <asm-generic/socket.h>
_SKF_AD_RANDOM: Final = -0x1000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM, <linux/filter.h>
_BPF_LD_W_ABS, _BPF_ALU_MOD_K, _BPF_RET_A = 0x20, 0x94, 0x16

READY_SECONDS = 30.0
STOP_SECONDS = 10.0
RESTARTS = 5
RESTART_WINDOW = 60.0
FORWARDED = (signal.SIGHUP, signal.SIGUSR1)
HANDLED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, *FORWARDED})


def spread_at_random(sock: socket.socket, workers: int) -> None:
    """Make the kernel give each datagram of `sock`'s reuseport group to a random one of
    its `workers` sockets (see the module docstring)."""
    program = b"".join(
        struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)
        for code, k in ((_BPF_LD_W_ABS, _SKF_AD_RANDOM), (_BPF_ALU_MOD_K, workers), (_BPF_RET_A, 0))
    )
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def steering_groups(config: AlgConfig) -> dict[Side, GroupSteering]:
    """A stateful proxy's Call-ID steering program for each side's UDP group
    (alg.call_steering); none for a stateless one, whose datagrams any worker may take.
    A kernel that refuses leaves the workers on random spreading, and is named once."""
    if config.mode != "stateful" or config.workers < 2:
        return {}
    groups: dict[Side, GroupSteering] = {}
    for side in SIDES:
        if "udp" not in getattr(config, side).transports:
            continue
        try:
            groups[side] = GroupSteering.create(config.workers)
        except SteeringError as exc:
            log.warning("%s; datagrams are spread at random and handed over", exc)
            for group in groups.values():
                group.close()
            return {}
    return groups


def steering_arguments(groups: dict[Side, GroupSteering]) -> list[str]:
    """`--steering SIDE=MAP,PROGRAM` for each group (descriptors the worker inherits)."""
    return [
        argument
        for side, group in groups.items()
        for argument in ("--steering", f"{side}={','.join(map(str, group.descriptors()))}")
    ]


def parse_steering(values: list[str], workers: int) -> dict[Side, GroupSteering]:
    """The worker's side of `steering_arguments`."""
    groups: dict[Side, GroupSteering] = {}
    for value in values:
        side, _, fds = value.partition("=")
        map_fd, _, program_fd = fds.partition(",")
        if side not in SIDES:
            raise ValueError(f"--steering: no side {side!r}")
        groups[side] = GroupSteering(int(map_fd), int(program_fd), workers)
    return groups


def worker_config(config: AlgConfig, index: int) -> AlgConfig:
    """What worker `index` runs: its own counters file, no pid file (the supervisor's),
    and its share of every per-source rate limit."""
    stats = config.stats_file
    if stats is not None:
        path = Path(stats)
        stats = str(path.with_name(f"{path.stem}.worker{index}{path.suffix}"))
    limits = config.ratelimit

    def share(limit: tuple[float, float]) -> tuple[float, float]:
        rate, burst = limit
        return rate / config.workers, max(1.0, burst / config.workers)

    return replace(
        config,
        stats_file=stats,
        pid_file=None,
        ratelimit=replace(
            limits,
            invite=share(limits.invite),
            register=share(limits.register),
            other=share(limits.other),
        ),
    )


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    ready: int  # read end of the pipe the worker writes "ready" to


class Supervisor:
    def __init__(self, config_path: str, config: AlgConfig) -> None:
        self.config_path = config_path
        self.config = config
        self.workers: dict[int, _Worker] = {}
        self.restarts: deque[float] = deque()
        # created once, before the workers: a restarted worker joins the same groups
        self.steering: dict[Side, GroupSteering] = {}

    def _start(self, index: int) -> _Worker:
        read, write = os.pipe()
        argv = [
            sys.executable, "-m", "sipwall", "alg", "--config", self.config_path,
            "--worker", str(index), "--ready-fd", str(write),
            *steering_arguments(self.steering),
        ]  # fmt: skip
        inherited = [fd for group in self.steering.values() for fd in group.descriptors()]
        process = subprocess.Popen(
            argv,
            pass_fds=(write, *inherited),
            stdin=subprocess.DEVNULL,
            # the signals the supervisor waits for synchronously are blocked in it; a
            # worker must get them the normal way
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED),  # noqa: PLW1509
        )
        os.close(write)
        return _Worker(index, process, read)

    def _wait_ready(self, workers: list[_Worker]) -> bool:
        deadline = time.monotonic() + READY_SECONDS
        waiting = {w.ready: w for w in workers}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select(list(waiting), [], [], left)
            for fd in readable:
                worker = waiting.pop(fd)
                said = os.read(fd, 16)
                os.close(fd)
                if said != b"ready\n":
                    log.error("worker %d exited before it was ready", worker.index)
                    return False
        return True

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        self.steering = steering_groups(self.config)
        try:
            return self._run()
        finally:
            for group in self.steering.values():
                group.close()

    def _run(self) -> int:
        started = [self._start(i) for i in range(self.config.workers)]
        self.workers = {w.index: w for w in started}
        if not self._wait_ready(started):
            self._stop()
            return 1
        if self.config.pid_file:
            Path(self.config.pid_file).write_text(f"{os.getpid()}\n")
        pids = ", ".join(str(w.process.pid) for w in started)
        steered = f", steered by Call-ID on {', '.join(self.steering)}" if self.steering else ""
        log.info(
            "sipwall alg: %d %s workers (pids %s%s)",
            len(started), self.config.mode, pids, steered,
        )  # fmt: skip
        print("sipwall alg: ready", flush=True)  # readiness line for supervisors and labs
        try:
            return self._serve()
        finally:
            self._stop()
            if self.config.pid_file:
                Path(self.config.pid_file).unlink(missing_ok=True)

    def _serve(self) -> int:
        while True:
            signum = signal.sigwait(HANDLED)
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("sipwall alg: stopping %d workers", len(self.workers))
                return 0
            if signum in FORWARDED:
                for worker in self.workers.values():
                    worker.process.send_signal(signum)
                continue
            if not self._reap_and_restart():
                return 1

    def _reap_and_restart(self) -> bool:
        """SIGCHLD: start again every worker that died; False when they die too often."""
        for worker in list(self.workers.values()):
            code = worker.process.poll()
            if code is None:
                continue
            now = time.monotonic()
            self.restarts.append(now)
            while self.restarts and self.restarts[0] < now - RESTART_WINDOW:
                self.restarts.popleft()
            if len(self.restarts) > RESTARTS:
                log.error(
                    "worker %d exited (%s); %d restarts within %.0f s: giving up",
                    worker.index, code, RESTARTS, RESTART_WINDOW,
                )  # fmt: skip
                return False
            log.error("worker %d exited (%s); starting it again", worker.index, code)
            replacement = self._start(worker.index)
            self.workers[worker.index] = replacement
            if not self._wait_ready([replacement]):
                return False
            log.info("worker %d is back (pid %d)", worker.index, replacement.process.pid)
        return True

    def _stop(self) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self.workers.values():
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop: killing it", worker.index)  # noqa: TRY400
                worker.process.kill()
                worker.process.wait()


def supervise(config_path: str, config: AlgConfig) -> int:
    return Supervisor(config_path, config).run()
