"""`sipwall ctl`: look at a running filter agent and release what it holds, over FCP.

    sipwall ctl --agent 10.77.0.1:7700 --ca ca.pem --cert ctl.pem --key ctl.key \
        {sessions,groups,bindings,rules,ports} [--json]
    sipwall ctl ... release {group|binding|rule} ID

It is an ordinary FCP client. With an identity the agent lists under `clients.admin` it
sees every owner's objects (group ids as "<owner>/<group>") and may release any of them —
the owner is told with a REMOVED_BY_ADMIN event; with an ALG identity it sees that
identity's objects only. `sessions` shows the agent's epoch, pools and limits; `ports`
how many ports of each public address are bound, quarantined (released less than the
quarantine time ago) and free.

Counters are the kernel's per-element counters as of the agent's last poll; last-seen is
the time a packet was last counted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fcp.client import ClientTls, FcpClient, RetryPolicy
from fcp.errors import FcpError
from fcp.types import Counters, LifetimeChange, LifetimeTarget

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _time(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%H:%M:%S")


def _counter_cells(c: Counters) -> list[str]:
    return [str(c.packets), str(c.bytes), _time(c.last_seen)]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (no dependency, readable in any terminal or log)."""
    widths = [len(h) for h in headers]
    for row in rows:  # every cell is already text
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def _counters_json(c: Counters) -> dict[str, Any]:
    return {"packets": c.packets, "bytes": c.bytes, "last_seen": c.last_seen}


async def _list(client: FcpClient, what: str) -> tuple[list[str], list[list[str]], list[Any]]:
    counters = ["PACKETS", "BYTES", "LAST-SEEN"]
    records: list[dict[str, Any]]
    if what == "sessions":
        s = await client.open_session()
        pools = ", ".join(
            f"{p.name}: {' '.join(str(a) for a in p.external_addresses)} "
            f"ports {p.port_min}-{p.port_max}"
            for p in s.capabilities.pools
        )
        row = [s.owner, str(s.epoch), pools, str(s.capabilities.max_lifetime_seconds)]
        record: dict[str, Any] = {
            "owner": s.owner,
            "epoch": s.epoch,
            "pools": pools,
            "max_lifetime": s.capabilities.max_lifetime_seconds,
        }
        return ["IDENTITY", "EPOCH", "POOLS", "MAX-LIFETIME"], [row], [record]
    if what == "ports":
        return await _ports(client)
    if what == "groups":
        groups = await client.list_groups()
        rows = [
            [
                g.group_id,
                str(g.external_address or "-"),
                str(len(g.binding_ids)),
                str(len(g.rule_ids)),
                _time(g.expires_at),
                *_counter_cells(g.counters),
            ]
            for g in groups
        ]
        records = [
            {
                "group_id": g.group_id,
                "external_address": str(g.external_address or ""),
                "bindings": list(g.binding_ids),
                "rules": list(g.rule_ids),
                "expires_at": g.expires_at,
                "counters": _counters_json(g.counters),
            }
            for g in groups
        ]
        headers = ["GROUP", "PUBLIC", "BINDINGS", "RULES", "EXPIRES", *counters]
        return headers, rows, records
    if what == "bindings":
        bindings = await client.list_bindings()
        rows = [
            [
                b.binding_id,
                b.group_id,
                b.protocol.value,
                str(b.internal),
                f"{b.external_address}:{'/'.join(str(p) for p in b.external_ports)}",
                _time(b.expires_at),
                *_counter_cells(b.counters),
            ]
            for b in bindings
        ]
        records = [
            {
                "binding_id": b.binding_id,
                "group_id": b.group_id,
                "protocol": b.protocol.value,
                "internal": str(b.internal),
                "external_address": str(b.external_address),
                "external_ports": list(b.external_ports),
                "expires_at": b.expires_at,
                "counters": _counters_json(b.counters),
            }
            for b in bindings
        ]
        headers = ["BINDING", "GROUP", "PROTO", "INSIDE", "PUBLIC", "EXPIRES", *counters]
        return headers, rows, records
    rules = await client.list_rules()
    rows = [
        [
            r.rule_id,
            r.binding_id,
            r.group_id,
            r.direction.value,
            f"{r.remote_address}:{r.remote_port if r.remote_port is not None else '*'}",
            _time(r.expires_at),
            *_counter_cells(r.counters),
        ]
        for r in rules
    ]
    records = [
        {
            "rule_id": r.rule_id,
            "binding_id": r.binding_id,
            "group_id": r.group_id,
            "direction": r.direction.value,
            "remote_address": str(r.remote_address),
            "remote_port": r.remote_port,
            "expires_at": r.expires_at,
            "counters": _counters_json(r.counters),
        }
        for r in rules
    ]
    headers = ["RULE", "BINDING", "GROUP", "DIRECTION", "REMOTE", "EXPIRES", *counters]
    return headers, rows, records


async def _ports(client: FcpClient) -> tuple[list[str], list[list[str]], list[Any]]:
    usages = [(a, u) for a in await client.get_external_addresses() for u in a.port_usage]
    rows = [
        [
            a.pool,
            str(a.address),
            u.protocol.value,
            str(u.total),
            str(u.bound),
            str(u.quarantined),
            str(u.free),
            f"{100 * u.free / u.total:.1f}" if u.total else "-",
        ]
        for a, u in usages
    ]
    records = [
        {
            "pool": a.pool,
            "address": str(a.address),
            "protocol": u.protocol.value,
            "total": u.total,
            "bound": u.bound,
            "quarantined": u.quarantined,
            "free": u.free,
        }
        for a, u in usages
    ]
    headers = ["POOL", "ADDRESS", "PROTO", "TOTAL", "BOUND", "QUARANTINED", "FREE", "FREE%"]
    return headers, rows, records


async def _release(client: FcpClient, kind: str, ident: str) -> str:
    if kind == "group":
        grant = await client.release_group(ident)
        return f"released group {ident}: {grant.bindings} bindings, {grant.rules} rules"
    target = LifetimeTarget.BINDING if kind == "binding" else LifetimeTarget.RULE
    await client.change_lifetime(LifetimeChange(target, ident, 0))
    return f"released {kind} {ident}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipwall ctl", description=__doc__.split("\n")[0])
    parser.add_argument("--agent", required=True, help="host:port or unix:/path of the agent")
    parser.add_argument("--ca", type=Path, required=True, help="CA that signed the agent")
    parser.add_argument("--cert", type=Path, required=True, help="our client certificate")
    parser.add_argument("--key", type=Path, required=True, help="our private key")
    parser.add_argument("--server-name", help="agent name in its certificate, if not --agent")
    parser.add_argument("--timeout", type=float, default=5.0)
    sub = parser.add_subparsers(dest="command", required=True)
    listings = {
        "sessions": "list sessions",
        "groups": "list groups",
        "bindings": "list bindings",
        "rules": "list rules",
        "ports": "port usage of every public address (bound, quarantined, free)",
    }
    for what, help_text in listings.items():
        p = sub.add_parser(what, help=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    release = sub.add_parser("release", help="release a group, binding or rule (lifetime 0)")
    release.add_argument("kind", choices=("group", "binding", "rule"))
    release.add_argument("id")
    return parser


async def _main(args: argparse.Namespace) -> int:
    tls = ClientTls(
        args.ca.read_bytes(), args.cert.read_bytes(), args.key.read_bytes(), args.server_name
    )
    async with FcpClient(
        args.agent, tls, deadline=args.timeout, retry=RetryPolicy(attempts=2)
    ) as client:
        if args.command == "release":
            print(await _release(client, args.kind, args.id))
            return EXIT_OK
        headers, rows, records = await _list(client, args.command)
        if args.json:
            print(json.dumps(records, indent=2))
        else:
            print(table(headers, rows))
        return EXIT_OK


def reload_alg(argv: Sequence[str]) -> int:
    """`sipwall ctl reload --pid-file FILE`: ask a running ALG to reload its route table
    (SIGHUP; calls in progress are not touched)."""
    import argparse
    import os
    import signal

    parser = argparse.ArgumentParser(prog="sipwall ctl reload", description=reload_alg.__doc__)
    parser.add_argument("--pid-file", required=True, help="the ALG's [files].pid")
    args = parser.parse_args(argv)
    try:
        with open(args.pid_file) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"sipwall ctl reload: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"sipwall ctl reload: sent SIGHUP to {pid}")
    return 0


def alg_stats(argv: Sequence[str]) -> int:
    """`sipwall ctl stats --pid-file FILE --stats-file FILE`: the running ALG's counters
    (requests, retransmissions, malformed, rate-limited, transactions ...) as JSON."""
    import argparse
    import os
    import signal
    import time
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="sipwall ctl stats", description=alg_stats.__doc__)
    parser.add_argument("--pid-file", required=True, help="the ALG's [files].pid")
    parser.add_argument("--stats-file", required=True, help="the ALG's [files].stats")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    stats = Path(args.stats_file)
    try:
        before = stats.stat().st_mtime_ns if stats.exists() else 0
        pid = int(Path(args.pid_file).read_text().strip())
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + args.timeout
        while not stats.exists() or stats.stat().st_mtime_ns == before:
            if time.monotonic() > deadline:
                print("sipwall ctl stats: the ALG did not write its counters", file=sys.stderr)
                return EXIT_ERROR
            time.sleep(0.02)
        print(stats.read_text(), end="")
    except (OSError, ValueError) as exc:
        print(f"sipwall ctl stats: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stats"]:
        return alg_stats(argv[1:])
    # Subcommands about the ALG (its subscribers and its configuration) rather than
    # about an agent's state.
    if argv[:1] == ["users"]:
        from alg.subscribers import users_main

        return users_main(argv[1:])
    if argv[:1] == ["reload"]:
        return reload_alg(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except OSError as exc:
        print(f"sipwall ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FcpError as exc:
        print(f"sipwall ctl: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
