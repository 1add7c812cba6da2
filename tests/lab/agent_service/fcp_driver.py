"""An FCP client that runs INSIDE the lab (`ip netns exec <gw> python fcp_driver.py ...`)
and is driven by the test over JSON lines on stdin/stdout, so the root namespace never
talks to the lab's network.

    python fcp_driver.py TARGET PKI_DIR
    {"op": "open", "as": "alg-1"}              -> {"ok": {"epoch": N, "changed": false}}
    {"op": "reserve", "as": ..., "group": ..., "addr": ..., "port": ..., "lifetime": ...}
    {"op": "enable", "as": ..., "binding_id": ..., "remote": ..., "remote_port": ...,
     "lifetime": ...}
                      both answer "exchange": whether the client still sends its operations
                      on the Exchange stream (false: it fell back to unary calls)
    {"op": "release_group", "as": ..., "group": ...}
    {"op": "get_binding", "as": ..., "binding_id": ...}
    {"op": "get_rule", "as": ..., "rule_id": ...}     -> {"rule_id", "remote_port", "packets"}
    {"op": "list_rules", "as": ...}                  -> [{"rule_id", "remote_port", ...}]
    {"op": "rogue"}   a client certificate from another CA tries to list bindings
    {"op": "hang", "as": ..., "pid": N, "keepalive": S}
                      watch events with a client pinging every S seconds; once the stream
                      is up, SIGSTOP process N (the agent: it hangs, its TCP stays up) ->
                      {"ok": {"seconds": how long until the stream failed, "error": reason}}
Every answer is {"ok": ...} or {"error": "<FCP reason>", "message": ...}.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fcp.certs import generate_ca, issue_client
from fcp.client import ClientTls, FcpClient, RetryPolicy
from fcp.errors import FcpError
from fcp.types import (
    BindingKind,
    BindingRequest,
    Direction,
    Endpoint,
    Rule,
    RuleRequest,
    TransportProtocol,
)


def rule_json(rule: Rule) -> dict[str, Any]:
    return {
        "rule_id": rule.rule_id,
        "remote": str(rule.remote_address),
        "remote_port": rule.remote_port,
        "packets": rule.counters.packets,
    }


class Driver:
    def __init__(self, target: str, pki: Path) -> None:
        self.target = target
        self.pki = pki
        self.clients: dict[str, FcpClient] = {}

    def client(self, identity: str) -> FcpClient:
        if identity not in self.clients:
            tls = ClientTls.from_files(
                self.pki / "ca.pem", self.pki / f"{identity}.pem", self.pki / f"{identity}.key"
            )
            self.clients[identity] = FcpClient(
                self.target, tls, deadline=2.0, retry=RetryPolicy(attempts=1)
            )
        return self.clients[identity]

    async def run(self, cmd: dict[str, Any]) -> Any:
        op = cmd["op"]
        if op == "rogue":
            rogue = issue_client(generate_ca("rogue CA"), "alg-1")
            tls = ClientTls((self.pki / "ca.pem").read_bytes(), rogue.cert_pem, rogue.key_pem)
            async with FcpClient(
                self.target, tls, deadline=2.0, retry=RetryPolicy(attempts=1)
            ) as client:
                return len(await client.list_bindings())
        if op == "hang":
            return await self.hang(cmd["as"], cmd["pid"], cmd["keepalive"])
        client = self.client(cmd["as"])
        if op == "open":
            changed = client.epoch_changed
            session = await client.open_session()
            return {"epoch": session.epoch, "changed": changed}
        if op == "reserve":
            b = await client.reserve_binding(
                BindingRequest(
                    cmd["group"],
                    Endpoint(ipaddress.IPv4Address(cmd["addr"]), cmd["port"]),
                    TransportProtocol.UDP,
                    BindingKind.RTP_PAIR,
                    cmd["lifetime"],
                )
            )
            return {
                "binding_id": b.binding_id,
                "address": str(b.external_address),
                "ports": list(b.external_ports),
                "exchange": client.uses_exchange,  # answered on the Exchange stream
            }
        if op == "enable":
            r = await client.enable_rule(
                RuleRequest(
                    cmd["binding_id"],
                    Direction.BIDIRECTIONAL,
                    ipaddress.IPv4Address(cmd["remote"]),
                    cmd["lifetime"],
                    cmd["remote_port"],
                )
            )
            return {"rule_id": r.rule_id, "exchange": client.uses_exchange}
        if op == "release_group":
            grant = await client.release_group(cmd["group"])
            return {"bindings": grant.bindings, "rules": grant.rules}
        if op == "get_binding":
            b = await client.get_binding(cmd["binding_id"])
            return {"binding_id": b.binding_id, "packets": b.counters.packets}
        if op == "get_rule":
            return rule_json(await client.get_rule(cmd["rule_id"]))
        if op == "list_rules":
            return [rule_json(r) for r in await client.list_rules()]
        raise ValueError(f"unknown op {op!r}")

    async def hang(self, identity: str, pid: int, keepalive: float) -> dict[str, Any]:
        tls = ClientTls.from_files(
            self.pki / "ca.pem", self.pki / f"{identity}.pem", self.pki / f"{identity}.key"
        )
        client = FcpClient(self.target, tls, keepalive=keepalive, keepalive_timeout=keepalive)
        stopped = 0.0
        try:
            async with asyncio.timeout(10 * keepalive + 5):
                async for _ in client.watch_events():  # the first event is WATCH_STARTED
                    if not stopped:
                        os.kill(pid, signal.SIGSTOP)
                        stopped = time.monotonic()
        except FcpError as exc:
            return {"seconds": time.monotonic() - stopped, "error": exc.reason.value}
        except TimeoutError:
            return {"seconds": time.monotonic() - stopped, "error": "still open"}
        finally:
            await client.close()
        return {"seconds": time.monotonic() - stopped, "error": "ended"}


async def main(argv: list[str]) -> int:
    driver = Driver(argv[0], Path(argv[1]))
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        try:
            answer: dict[str, Any] = {"ok": await driver.run(cmd)}
        except FcpError as exc:
            answer = {"error": exc.reason.value, "message": exc.message}
        print(json.dumps(answer), flush=True)
    for client in driver.clients.values():
        await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
