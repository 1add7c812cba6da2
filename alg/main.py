"""`sipwall alg --config alg.toml`: run the SIP proxy ALG until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from alg.aio import AlgShell
from alg.assemble import agent_clients, assemble
from alg.call_steering import GroupSteering
from alg.config import AlgConfig, ConfigError, load_config
from alg.errors import AlgError
from alg.logsetup import LogSettings, configure_logging
from alg.proxy_model import Side
from alg.workers import parse_steering, supervise, worker_config
from fcp.errors import FcpError
from sipwall.heap import HeapPolicy

log = logging.getLogger("sipwall.alg")


def log_settings(config: AlgConfig) -> LogSettings:
    """Console logging with the Call-ID of each record, plus RFC 5424 syslog over UDP to
    the collector of `[log] syslog` if one is set."""
    host, port = None, 514
    if config.syslog:
        host, _, port_text = (
            config.syslog.rpartition(":") if ":" in config.syslog else (config.syslog, "", "514")
        )
        port = int(port_text or 514)
    return LogSettings(
        level=config.log_level,
        syslog_host=host,
        syslog_port=port,
        facility=config.syslog_facility,
    )


# How often the running ALG collects its young garbage and freezes the survivors
# (sipwall.heap). The total work is the same at any period (each object is walked about
# once), but a tick's pause grows with the objects made since the last one: at 3,200
# calls/s the 99th-percentile pause was 26 ms with 0.25 s ticks and 3 ms with 0.05 s
# (bench/proxy_core_cpu.py --gc-pauses; set-up aside), and the lab's UDP drops at an
# overloading step halved (bench/proxy_cps.py at 3,805 calls/s, two runs each).
HEAP_TICK_SECONDS = 0.05


def collector_policy() -> HeapPolicy:
    """The ALG's garbage collection (sipwall.heap): each transaction keeps its request for
    up to 32 s (RFC 3261 Timers J and L, 64*T1), so at a few thousand calls/sec some 10^6
    objects are alive. With CPython's own thresholds a full collection walked them all
    every second or two; with (10,000, 10, 100) still now and then, and at 4,000 calls/s
    in steady state one took 3.2 s (bench/proxy_core_cpu.py --calls 200000 --rate 4000):
    far more than the 4 MiB socket buffers hold. Here: a young pass every 10,000
    allocations (CPython: 700), the policy's ticks, and full passes only while they are
    short. Per-call objects are freed by refcount
    (test_finished_calls_leave_no_reference_cycles)."""
    return HeapPolicy(young=10_000)


async def serve(
    config_path: str,
    ready: asyncio.Event | None = None,
    *,
    worker: int | None = None,
    ready_fd: int | None = None,
    steering: dict[Side, GroupSteering] | None = None,
) -> None:
    """Run the ALG until SIGTERM/SIGINT. `worker`: this is worker `worker` of a
    supervisor (alg.workers), which learns of readiness from `ready_fd` and steers
    datagrams to workers with `steering` (alg.call_steering)."""
    config = load_config(config_path)
    if worker is not None:
        config = worker_config(config, worker)
    configure_logging(log_settings(config))
    services = assemble(config)
    core = services.core
    loop = asyncio.get_running_loop()
    wall_offset = time.time() - loop.time()
    clients = agent_clients(config) if config.media.enabled else {}
    for name, client in clients.items():
        try:
            session = await client.open_session()
            log.info("agent %s: epoch %s", name, session.epoch)
        except FcpError as exc:  # not fatal: the breaker keeps new calls off it
            log.warning("agent %s not reachable yet: %s", name, exc)
    shell = AlgShell(
        config,
        core,
        on_calls=lambda calls: services.write_calls(calls, wall_offset),
        lookup=lambda uri: services.resolve(uri, loop.time),
        agents=clients,
        # the supervisor is our parent: its pid names our group's hand-off sockets
        worker=None if worker is None else (os.getppid(), worker),
        steering=steering,
    )
    await shell.start()
    heap = services.heap = collector_policy()
    collecting: asyncio.TimerHandle | None = None

    def collect() -> None:
        nonlocal collecting
        heap.tick(loop.time())
        collecting = loop.call_later(HEAP_TICK_SECONDS, collect)

    stop = asyncio.Event()

    def reload() -> None:
        try:
            services.reload()
            log.info("route table reloaded")
        except AlgError as exc:
            log.error("reload failed, keeping the running table: %s", exc)  # noqa: TRY400

    def dump_counters() -> None:
        try:
            services.write_counters()
        except OSError as exc:
            log.error("cannot write counters: %s", exc)  # noqa: TRY400

    previous = {
        sig: signal.getsignal(sig)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    }
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, dump_counters)
    if config.pid_file:
        Path(config.pid_file).write_text(f"{os.getpid()}\n")
    log.info("sipwall alg running (%s mode)", config.mode)
    if ready is not None:
        ready.set()
    if worker is None:
        print("sipwall alg: ready", flush=True)  # readiness line for supervisors and labs
    else:
        log.info("worker %d (pid %d) ready", worker, os.getpid())
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    try:
        heap.install()  # once set up: what is alive now lives as long as the process
        collecting = loop.call_later(HEAP_TICK_SECONDS, collect)
        await stop.wait()
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)
        if collecting is not None:
            collecting.cancel()
        heap.uninstall()
        await shell.close()
        for client in clients.values():
            await client.close()
        # records still waiting for their media are written too, saying so (alg.cdr)
        finished = core.calls.close() if core.calls is not None else []
        services.write_calls(finished, wall_offset)
        dump_counters()
        services.close()
        if config.pid_file:
            Path(config.pid_file).unlink(missing_ok=True)
        log.info("sipwall alg stopped; %s", dict(core.stats))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sipwall alg", description=__doc__)
    parser.add_argument("--config", required=True, help="path to alg.toml")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    # set by the supervisor of [proxy] workers (alg.workers), not by hand
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steering", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        if args.check:
            assemble(config).close()  # opens the stores and the route table once
    except (ConfigError, AlgError) as exc:
        print(f"sipwall alg: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"sipwall alg: {args.config} is valid ({config.mode} mode)")
        return 0
    if config.workers > 1 and args.worker is None:
        return supervise(args.config, config)
    try:
        steering = parse_steering(args.steering, config.workers)
        asyncio.run(
            serve(args.config, worker=args.worker, ready_fd=args.ready_fd, steering=steering)
        )
    except OSError as exc:
        print(f"sipwall alg: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0
