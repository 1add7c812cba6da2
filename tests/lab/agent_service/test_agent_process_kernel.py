"""The real agent process in the gateway namespace, driven over FCP + mTLS from inside the
lab, against the real kernel.

inside 10.77.0.10 -- gw 10.77.0.1 | 203.0.113.1 (agent, forwarding) -- outside .20 / .30

Absence of packets is proven by ordering (a stream that must be dropped goes first, a
stream that must pass follows on the same path) or by the receiver's timestamps against
the moment of the change, never by sleeping.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from typing import Any

import pytest

from labs.netns import wait_until
from labs.traffic import now

pytestmark = pytest.mark.kernel

INSIDE, REMOTE = "10.77.0.10", "203.0.113.20"
ALG = {"as": "alg-1"}


def call_setup(lab: Any, lifetime: int = 60) -> tuple[dict[str, Any], float, float]:
    """Reserve + enable for inside:4000 <-> REMOTE:5000; returns the binding, the time
    before the request and the time after the answer."""
    before = now()
    b = lab.ok("reserve", group="c1", addr=INSIDE, port=4000, lifetime=lifetime, **ALG)
    lab.ok(
        "enable",
        binding_id=b["binding_id"],
        remote=REMOTE,
        remote_port=5000,
        lifetime=lifetime,
        **ALG,
    )
    return b, before, now()


def test_stream_flows_only_after_reserve_and_enable_and_stops_on_release(agent_lab: Any) -> None:
    lab, g = agent_lab, agent_lab.g
    b = lab.ok("reserve", group="c1", addr=INSIDE, port=4000, lifetime=60, **ALG)
    assert b["exchange"]  # the real agent answered on the Exchange stream
    pub, port = b["address"], b["ports"][0]
    rx = lab.recv(g.inside, INSIDE, 4000)
    lab.send(g.outside, REMOTE, 5000, pub, port, tag="early", count=20).wait()
    lab.ok(
        "enable", binding_id=b["binding_id"], remote=REMOTE, remote_port=5000, lifetime=60, **ALG
    )
    tx = lab.send(g.outside, REMOTE, 5000, pub, port, tag="s", count=400, interval=0.01)
    wait_until(lambda: len(rx.packets()) >= 30, 10, what="stream established")
    released = now()
    assert lab.ok("release_group", group="c1", **ALG) == {"bindings": 1, "rules": 1}
    wait_until(lambda: tx.sent_until() > released + 1.5, 15, what="sender kept going")
    got = rx.packets()
    assert {p.tag for p in got} == {"s"}  # nothing before the rule
    assert max(p.t for p in got) <= released + 1.0  # established flow cut within 1 s
    assert lab.nft("list", "set", "inet", "sipwall", "in4").stdout.count("elements") == 0
    # the release also deleted the flow's conntrack entry (its DNAT to the inside host);
    # packets sent after it create fresh, un-NATed entries, which do not count
    assert nated_entries(lab, port) == 0


def nated_entries(lab: Any, port: int) -> int:
    listing = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.g.gw,
            "conntrack",
            "-L",
            "-p",
            "udp",
            "--orig-port-dst",
            str(port),
            "--reply-src",
            INSIDE,
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return len([line for line in listing.stdout.splitlines() if line.strip()])


def test_forged_and_unowned_requests_are_refused(agent_lab: Any) -> None:
    lab = agent_lab
    b, _, _ = call_setup(lab)
    forged = lab.call("rogue")
    assert forged.get("error") == "NETWORK_FAILURE"  # TLS handshake refused
    unowned = lab.call("get_binding", binding_id=b["binding_id"], **{"as": "alg-2"})
    assert unowned.get("error") == "NOT_FOUND"
    assert lab.ok("get_binding", binding_id=b["binding_id"], **ALG)["binding_id"]


def test_sigkill_and_restart_lose_no_packet_and_keep_the_epoch(agent_lab: Any) -> None:
    lab, g = agent_lab, agent_lab.g
    epoch = lab.ok("open", **ALG)["epoch"]
    b, _, _ = call_setup(lab)
    count = 500
    rx = lab.recv(g.inside, INSIDE, 4000)
    tx = lab.send(
        g.outside, REMOTE, 5000, b["address"], b["ports"][0], tag="s", count=count, interval=0.01
    )
    wait_until(lambda: len(rx.packets()) >= 50, 10, what="stream established")
    lab.kill_agent(signal.SIGKILL)
    lab.start_agent()
    # The client's calls keep working (no STALE_EPOCH) and the session reports the epoch.
    assert lab.ok("get_binding", binding_id=b["binding_id"], **ALG)["packets"] >= 0
    assert lab.ok("open", **ALG) == {"epoch": epoch, "changed": False}
    # The killed agent's Exchange stream broke; the next operation opened a new one.
    again = lab.ok("reserve", group="c2", addr=INSIDE, port=4100, lifetime=60, **ALG)
    assert again["exchange"]
    tx.wait(timeout=20)
    wait_until(lambda: len(rx.packets()) >= count, 10, what="every packet arrives")
    assert sorted(p.seq for p in rx.packets()) == list(range(count))
    restarted = lab.last_log()
    assert "1 bindings and 1 rules recovered" in restarted
    assert "state lost" not in restarted


def test_deleted_table_is_rebuilt_within_a_second(agent_lab: Any) -> None:
    lab, g = agent_lab, agent_lab.g
    b, _, _ = call_setup(lab)
    rx = lab.recv(g.inside, INSIDE, 4000)
    lab.send(
        g.outside, REMOTE, 5000, b["address"], b["ports"][0], tag="s", count=600, interval=0.01
    )
    wait_until(lambda: len(rx.packets()) >= 50, 10, what="stream established")
    deleted = now()
    assert lab.nft("delete", "table", "inet", "sipwall").returncode == 0
    wait_until(
        lambda: "203.0.113.20" in lab.nft("list", "set", "inet", "sipwall", "in4").stdout,
        2,
        interval=0.02,
        what="table rebuilt with the pinhole",
    )
    rebuilt = now()
    assert rebuilt - deleted <= 1.0
    wait_until(lambda: any(p.t > rebuilt + 0.3 for p in rx.packets()), 10, what="stream resumes")
    assert "deleted behind our back" in lab.log_text()


def test_expiry_with_the_agent_dead_stops_the_stream(agent_lab: Any) -> None:
    lab, g = agent_lab, agent_lab.g
    b, before, applied = call_setup(lab, lifetime=3)
    lab.kill_agent(signal.SIGKILL)  # only kernel timeouts remain
    rx = lab.recv(g.inside, INSIDE, 4000)
    tx = lab.send(
        g.outside, REMOTE, 5000, b["address"], b["ports"][0], tag="s", count=700, interval=0.01
    )
    wait_until(lambda: len(rx.packets()) >= 20, 10, what="stream established")
    wait_until(lambda: tx.sent_until() > applied + 3 + 1.5, 15, what="sender past expiry")
    last = max(p.t for p in rx.packets())
    assert before + 3 - 1.0 <= last <= applied + 3 + 1.0


def test_sigterm_drains_and_keeps_the_kernel_state(agent_lab: Any) -> None:
    lab = agent_lab
    call_setup(lab)
    started = time.monotonic()
    assert lab.kill_agent(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "203.0.113.20" in lab.nft("list", "set", "inet", "sipwall", "in4").stdout
    assert "agent stopped" in lab.log_text()


def test_a_hung_agent_is_noticed_by_keepalive(agent_lab: Any) -> None:
    # SIGSTOP: the agent hangs but its kernel keeps the TCP connection up, as a wedged
    # gateway does; only an unanswered HTTP/2 PING can tell (fcp.client keepalive)
    lab = agent_lab
    assert lab.agent is not None
    try:
        got = lab.ok("hang", pid=lab.agent.pid, keepalive=1.0, **ALG)
    finally:
        lab.agent.send_signal(signal.SIGCONT)
    assert got["error"] not in ("still open", "ended"), got
    assert got["seconds"] <= 1.0 + 1.0 + 1.5, got  # a ping interval, its timeout, slack


def test_records_of_released_calls_leave_the_database_on_the_timer(agent_lab: Any) -> None:
    """Calls released by their owner never expire, yet their idempotency answers and their
    ports' quarantine must not stay in the agent's database (or memory) forever."""
    lab = agent_lab
    config = lab.workdir / "agent.toml"
    text = config.read_text()
    text = text.replace("[agent]\n", "[agent]\nidempotency_ttl = 2.0\n")
    config.write_text(text.replace("[pool]\n", "[pool]\nquarantine = 1.0\n"))
    lab.kill_agent(signal.SIGTERM)
    lab.start_agent()
    database = lab.workdir / "state" / "agent.db"

    def rows(table: str) -> int:
        with sqlite3.connect(database) as conn:
            count: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        return count

    for n in range(5):
        lab.ok("reserve", group=f"c{n}", addr=INSIDE, port=4000 + 2 * n, lifetime=60, **ALG)
        assert lab.ok("release_group", group=f"c{n}", **ALG) == {"bindings": 1, "rules": 0}
    assert rows("idempotency") >= 10 and rows("quarantine") >= 10
    wait_until(
        lambda: rows("idempotency") == 0 and rows("quarantine") == 0,
        10,
        what="the agent's timer forgets the records of released calls",
    )
    assert "Traceback" not in lab.last_log()
