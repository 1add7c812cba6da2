"""`sipwall alg --config alg.toml`: run the SIP proxy ALG until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from alg.aio import AlgShell
from alg.config import ConfigError, load_config
from alg.proxy import ProxyCore
from alg.static_router import StaticRouter

log = logging.getLogger("sipwall.alg")


async def serve(config_path: str, ready: asyncio.Event | None = None) -> None:
    config = load_config(config_path)
    logging.getLogger("sipwall").setLevel(config.log_level)
    core = ProxyCore(config.proxy_config(), StaticRouter(config))
    shell = AlgShell(config, core)
    await shell.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        loop.add_signal_handler(sig, stop.set)
    log.info("sipwall alg running (%s mode)", config.mode)
    if ready is not None:
        ready.set()
    print("sipwall alg: ready", flush=True)  # readiness line for supervisors and labs
    try:
        await stop.wait()
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)
        await shell.close()
        log.info("sipwall alg stopped; %s", dict(core.stats))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sipwall alg", description=__doc__)
    parser.add_argument("--config", required=True, help="path to alg.toml")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sipwall alg: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"sipwall alg: {args.config} is valid ({config.mode} mode)")
        return 0
    try:
        asyncio.run(serve(args.config))
    except OSError as exc:
        print(f"sipwall alg: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0
