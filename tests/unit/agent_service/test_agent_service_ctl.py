"""`sipwall ctl` against the service behind the real FCP server."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from fcp import ctl
from fcp.server import FcpServer
from fcp.types import BindingKind, BindingRequest, Direction, Endpoint, RuleRequest
from fcp.types import TransportProtocol as P

pytestmark = pytest.mark.asyncio


def argv(server: FcpServer, pki: Path, identity: str, *rest: str) -> list[str]:
    return [
        "--agent",
        f"127.0.0.1:{server.port}",
        "--ca",
        str(pki / "ca.pem"),
        "--cert",
        str(pki / f"{identity}.pem"),
        "--key",
        str(pki / f"{identity}.key"),
        *rest,
    ]


async def test_ctl_lists_everything_for_an_admin_and_releases(
    connect: Any, server: FcpServer, pki_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alg = await connect("alg-1")
    inside = Endpoint(ipaddress.IPv4Address("10.77.0.10"), 4000)
    b = await alg.reserve_binding(BindingRequest("call-1", inside, P.UDP, BindingKind.RTP_PAIR, 60))
    remote = ipaddress.IPv4Address("203.0.113.20")
    await alg.enable_rule(RuleRequest(b.binding_id, Direction.INBOUND, remote, 60, 5000))

    errors: list[str] = []

    async def run(identity: str, *rest: str) -> tuple[int, str]:
        code = await asyncio.to_thread(ctl.main, argv(server, pki_path, identity, *rest))
        captured = capsys.readouterr()
        errors.append(captured.err)
        return code, captured.out

    code, out = await run("ctl", "groups")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["GROUP", "PUBLIC", "BINDINGS", "RULES"]
    assert lines[1].split()[:4] == ["alg-1/call-1", "203.0.113.1", "1", "1"]
    code, out = await run("ctl", "rules", "--json")
    records = json.loads(out)
    assert [(r["binding_id"], r["remote_address"]) for r in records] == [
        (b.binding_id, "203.0.113.20")
    ]
    assert records[0]["counters"]["packets"] == 0
    code, out = await run("alg-2", "bindings")  # an ALG sees its own objects only
    assert out.splitlines()[1:] == []
    code, out = await run("ctl", "sessions")
    assert "203.0.113.1" in out
    code, out = await run("ctl", "ports")
    lines = out.splitlines()
    assert lines[0].split() == [
        "POOL",
        "ADDRESS",
        "PROTO",
        "TOTAL",
        "BOUND",
        "QUARANTINED",
        "FREE",
        "FREE%",
    ]
    assert lines[1].split() == ["public", "203.0.113.1", "udp", "1000", "2", "0", "998", "99.8"]
    assert lines[2].split()[2:] == ["tcp", "1000", "0", "0", "1000", "100.0"]
    code, out = await run("ctl", "release", "group", "alg-1/call-1")
    assert (code, out.strip()) == (0, "released group alg-1/call-1: 1 bindings, 1 rules")
    code, out = await run("alg-2", "ports", "--json")  # any client may size the pool
    (udp,) = [r for r in json.loads(out) if r["protocol"] == "udp"]
    assert (udp["bound"], udp["quarantined"], udp["free"]) == (0, 2, 998)
    assert await alg.list_bindings() == []
    code, _ = await run("ctl", "release", "binding", "b999")
    assert code == 1
    assert "NOT_FOUND" in errors[-1]
