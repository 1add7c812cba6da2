"""`sipwall agent`: run the filter agent, check its configuration, make lab certificates.

    sipwall agent --config agent.toml            run (FCP server + nftables agent)
    sipwall agent check-config --config FILE     validate and print the effective config
    sipwall agent gen-certs --out DIR --server-name agent.lab --server-ip 10.77.0.1 \
        --client alg-1 [--client ctl ...]

Running: the agent must run in the network namespace whose forwarding it controls (the
gateway's); it creates/repairs the `inet sipwall` table, recovers its state from the
state database and the kernel (`filter_agent.recovery`), and serves FCP.

Stopping (SIGTERM or SIGINT): the agent emits AGENT_DRAINING to every watcher, refuses new
reservations, stops the server after a short grace, persists and exits — and deliberately
leaves its nftables table and every element in place, so calls in progress keep their
media. Elements close by themselves when their lifetime ends; a restarted agent picks
them up again with the same epoch. To remove everything, release the groups first or
delete the table (`nft delete table inet sipwall`). The original signal handlers are
restored on exit.

Exit status: 0 after a clean stop, 2 for a bad command line or configuration, 1 when the
agent cannot start (address in use, certificates unreadable, nftables unavailable).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from filter_agent.config import AgentConfig, ConfigError, load
from filter_agent.logconfig import configure
from filter_agent.wiring import ServiceSettings

log = logging.getLogger("sipwall.agent.main")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def settings_of(config: AgentConfig) -> ServiceSettings:
    return ServiceSettings(
        pool_name=config.pool.name,
        addresses=config.pool.addresses,
        port_min=config.pool.port_min,
        port_max=config.pool.port_max,
        quarantine=config.pool.quarantine,
        ports_per_owner=config.quotas.ports_per_owner,
        ports_per_group=config.quotas.ports_per_group,
        rules_per_binding=config.quotas.rules_per_binding,
        max_block=config.quotas.max_block,
        max_lifetime=config.max_lifetime,
        observe_interval=config.observe_interval,
        table_poll_interval=config.table_poll_interval,
        idempotency_ttl=config.idempotency_ttl,
    )


async def serve(config: AgentConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set; see the module docstring for what stopping keeps."""
    from fcp.server import FcpServer, ServerConfig, ServerTls
    from filter_agent.counter_worker import CounterProcess
    from filter_agent.drivers.libnftables import LibNftablesDriver
    from filter_agent.kernel_io import ConntrackFlush, TableProbe
    from filter_agent.latch_plan import LatchSpec, QueuePath
    from filter_agent.latching import AgentLatching, LatchSettings, choose
    from filter_agent.plan import TableSpec
    from filter_agent.recovery import read_boot_id
    from filter_agent.service import AgentService
    from filter_agent.store import open_store

    tls = None
    if config.tls is not None:
        tls = ServerTls.from_files(config.tls.cert, config.tls.key, config.tls.ca)
    # Before the table is set up: the probe decides whether it gets the latch chain.
    path, spec = choose(LatchSettings(config.latch, config.latch_queue), TableSpec())
    store, loaded, lost = open_store(config.state_db)
    counters = CounterProcess(spec)
    flusher = ConntrackFlush(mark=spec.mark, dump_interval=config.conntrack_dump_interval)
    probe = TableProbe(spec)
    service = AgentService.open(
        settings_of(config),
        LibNftablesDriver(element_writer=config.element_writer),
        store,
        loaded,
        lost,
        boot_id=read_boot_id(),
        flusher=flusher,
        spec=spec,
        reader=counters.read,
        table_probe=probe,
    )
    if path is not QueuePath.NONE:
        # After recovery (which set the table up or rebuilt it): write the queue verdict.
        latching = AgentLatching(
            service.engine, store, LatchSpec(config.latch_queue), path, service.clock
        )
        try:
            latching.install()
        except BaseException:
            store.close()
            raise
        service.latching = latching
    server = FcpServer(
        service,
        ServerConfig(
            config.listen,
            config.allowed,
            tls=tls,
            insecure_identity=config.insecure_identity,
            admin_identities=config.admin,
        ),
    )
    try:
        service.heap.install()  # after recovery: keep full GC passes off the request path
        await counters.start()
        await service.start()
        await server.start()
        log.info(
            "agent ready: epoch %d, %d bindings and %d rules recovered%s",
            service.epoch,
            service.recovery.bindings,
            service.recovery.rules,
            f" (state lost: {service.recovery.lost})" if service.recovery.lost else "",
        )
        await stop.wait()
        log.info("stopping: draining; the kernel keeps forwarding established media")
        await service.drain()
        await asyncio.sleep(0)  # let watchers receive AGENT_DRAINING before streams end
    finally:
        await server.stop()
        await service.close()
        await counters.close()
        flusher.close()
        probe.close()
        log.info("agent stopped; nftables state left in place")


def _run(config: AgentConfig) -> int:
    configure(config.log_level)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        loop.call_soon_threadsafe(stop.set)

    originals: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        originals[signum] = signal.signal(signum, on_signal)
    try:
        loop.run_until_complete(serve(config, stop))
        return EXIT_OK
    except OSError as exc:
        log.error("agent failed: %s", exc)  # noqa: TRY400 - message is enough
        return EXIT_FAILURE
    except RuntimeError as exc:  # grpc: "Failed to bind", unreadable certificates
        log.error("agent failed: %s", exc)  # noqa: TRY400
        return EXIT_FAILURE
    finally:
        for number, handler in originals.items():
            signal.signal(number, handler)
        loop.close()


def _load(path: Path) -> AgentConfig | None:
    try:
        return load(path)
    except ConfigError as exc:
        print(f"sipwall agent: config error: {exc}", file=sys.stderr)
        return None


def _check_config(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="sipwall agent check-config")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    print(f"{args.config}: OK")
    for name, value in sorted(vars(config).items()):
        print(f"  {name} = {value}")
    return EXIT_OK


def _gen_certs(argv: Sequence[str]) -> int:
    from fcp import certs

    parser = argparse.ArgumentParser(prog="sipwall agent gen-certs")
    parser.add_argument("--out", required=True, help="directory to write into")
    parser.add_argument("--server-name", action="append", default=[], help="DNS name (repeat)")
    parser.add_argument("--server-ip", action="append", default=[], help="IP address (repeat)")
    parser.add_argument("--client", action="append", default=[], help="client identity (repeat)")
    args = parser.parse_args(argv)
    forwarded = ["--out", args.out]
    for host in [*args.server_name, *args.server_ip]:
        forwarded += ["--server-host", host]
    for client in args.client:
        forwarded += ["--client", client]
    return certs.main(forwarded)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check-config":
        return _check_config(args[1:])
    if args and args[0] == "gen-certs":
        return _gen_certs(args[1:])
    parser = argparse.ArgumentParser(
        prog="sipwall agent",
        description="Run the sipwall filter agent (subcommands: check-config, gen-certs).",
    )
    parser.add_argument("--config", type=Path, required=True, help="agent TOML file")
    parsed = parser.parse_args(args)
    config = _load(parsed.config)
    if config is None:
        return EXIT_USAGE
    return _run(config)


if __name__ == "__main__":
    raise SystemExit(main())
