"""Fixtures for the agent-process kernel tests: the gateway lab, a PKI, the real agent
PROCESS running inside the gateway namespace, and an FCP client driver inside it too.

Everything the fixture starts is killed in its `finally`, and the lab's namespaces (with
their nftables tables and conntrack) go with `gateway_lab`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fcp.certs import generate_lab_pki, write_lab_pki
from labs import traffic
from labs.netns import GatewayLab, gateway_lab, wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PORT = 7700

CONFIG = """
[agent]
listen = "127.0.0.1:{port}"
state_db = "state/agent.db"
log_level = "DEBUG"
observe_interval = 0.5
table_poll_interval = 0.25

[tls]
ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"

[clients]
allowed = ["alg-1", "alg-2"]
admin = ["ctl"]

[pool]
addresses = ["{public}"]
port_min = 20000
port_max = 29999
"""


@dataclass
class AgentLab:
    g: GatewayLab
    workdir: Path
    agent: subprocess.Popen[bytes] | None = None
    driver: subprocess.Popen[str] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    # ---- the agent process -------------------------------------------------------------

    def start_agent(self) -> None:
        self.starts += 1
        log = self.workdir / f"agent-{self.starts}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.agent = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.g.gw,
                    sys.executable,
                    "-m",
                    "sipwall",
                    "agent",
                    "--config",
                    str(self.workdir / "agent.toml"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        wait_until(self._ready, 15, interval=0.05, what="agent serves FCP")

    def _ready(self) -> bool:
        if self.agent is not None and self.agent.poll() is not None:
            raise RuntimeError(f"agent exited: {self.log_text()}")
        answer = self.call("open", **{"as": "alg-2"})  # leaves alg-1's session alone
        return "ok" in answer

    def kill_agent(self, sig: int = signal.SIGKILL) -> int:
        assert self.agent is not None
        self.agent.send_signal(sig)
        code = self.agent.wait(timeout=10)
        self.agent = None
        return code

    def last_log(self) -> str:
        return self.logs[-1].read_text(errors="replace")

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    # ---- the client driver (inside the lab) ---------------------------------------------

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        if self.driver is None:
            self.driver = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.g.gw,
                    sys.executable,
                    str(HERE / "fcp_driver.py"),
                    f"127.0.0.1:{PORT}",
                    str(self.workdir / "pki"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
            )
        assert self.driver.stdin is not None and self.driver.stdout is not None
        self.driver.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.driver.stdin.flush()
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError("FCP driver died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ok(self, op: str, **args: Any) -> Any:
        answer = self.call(op, **args)
        if "ok" not in answer:
            raise AssertionError(f"{op} failed: {answer}\n{self.log_text()[-3000:]}")
        return answer["ok"]

    # ---- traffic and kernel ------------------------------------------------------------

    def recv(self, ns: str, addr: str, port: int, duration: float = 20) -> traffic.Proc:
        return traffic.recv(self.g.lab, ns, addr, port, duration)

    def send(self, ns: str, src: str, sport: int, dst: str, dport: int, **kw: Any) -> traffic.Proc:
        return traffic.send(self.g.lab, ns, src, sport, dst, dport, **kw)

    def nft(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.g.gw, "nft", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    def close(self) -> None:
        for proc in (self.agent, self.driver):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait(timeout=10)
        if self.driver is not None:
            for stream in (self.driver.stdin, self.driver.stdout):
                if stream is not None:
                    stream.close()
        self.agent = self.driver = None


@pytest.fixture
def agent_lab(tmp_path: Path) -> Iterator[AgentLab]:
    write_lab_pki(tmp_path / "pki", generate_lab_pki(["127.0.0.1"], ["alg-1", "alg-2", "ctl"]))
    with gateway_lab() as g:
        (tmp_path / "agent.toml").write_text(CONFIG.format(port=PORT, public=g.public_addr))
        lab = AgentLab(g, tmp_path)
        try:
            lab.start_agent()
            yield lab
        finally:
            lab.close()
