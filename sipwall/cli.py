"""The `sipwall` console command: one entry point, one subcommand per component.

Each subcommand lives in its component's package as a `main(argv) -> int` function and is
imported only when chosen, so `sipwall ctl ...` does not pay for loading the ALG.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Final

from fcp import grpc_runtime
from sipwall import __version__, compiled

# subcommand -> (module, summary). The module must define `main(argv: list[str]) -> int`.
SUBCOMMANDS: Final[dict[str, tuple[str, str]]] = {
    "alg": ("alg.main", "run the SIP proxy ALG"),
    "agent": ("filter_agent.main", "run the filter agent (FCP server) or generate certificates"),
    "ctl": ("fcp.ctl", "inspect and control a running agent or ALG"),
    "lab": ("labs.main", "build, inspect and tear down namespace labs; run the demo"),
}


def _usage() -> str:
    lines = ["usage: sipwall [--version] <command> [args...]", "", "commands:"]
    lines += [f"  {name:<7}{summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"sipwall {__version__}")
        return 0
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        print(f"sipwall: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    old = compiled.stale()
    if old:
        print(
            f"sipwall: WARNING: compiled modules are older than their source ({', '.join(old)})"
            ": running the OLD code; run `make compiled`",
            file=sys.stderr,
        )
    module_name, _ = entry
    grpc_runtime.configure()  # before any subcommand imports grpc
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"sipwall {args[0]}: not available in this build yet", file=sys.stderr)
        return 2
    run: Callable[[list[str]], int] = module.main
    return run(args[1:])
