"""An answered call's media goes away at the real agent — an operator releases it
(`sipwall ctl release group`, the admin identity), or it sees no packet for
`[media] media_timeout` — and the agent tells the ALG (FCP WatchEvents REMOVED_BY_ADMIN,
IDLE): the ALG ends the call itself — a BYE with an RFC 3326 Reason to both sipp phones,
which check it — the CDR says the ALG ended it and why, and the agent holds nothing
afterwards (alg.media.core `bindings_gone`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_lab import PORT, AgentLab
from anchoring_helpers import (
    await_answer,
    inside_phone,
    kernel_elements,
    outside_phone,
    start_alg,
    stop,
)

from labs.netns import wait_until

pytestmark = [pytest.mark.kernel, pytest.mark.peers]


def ctl(lab: AgentLab, *command: str) -> str:
    """The real `sipwall ctl` in the gateway namespace, as the lab's admin ("ctl")."""
    pki = lab.workdir / "pki"
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.g.gw,
            sys.executable,
            "-m",
            "sipwall",
            "ctl",
            "--agent",
            f"127.0.0.1:{PORT}",
            "--ca",
            str(pki / "ca.pem"),
            "--cert",
            str(pki / "ctl.pem"),
            "--key",
            str(pki / "ctl.key"),
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def groups(lab: AgentLab) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(ctl(lab, "groups", "--json"))
    return found


def udp_ports(lab: AgentLab) -> tuple[int, int]:
    """(bound, quarantined) UDP ports of the lab's public address, as `ctl ports` says."""
    (udp,) = [r for r in json.loads(ctl(lab, "ports", "--json")) if r["protocol"] == "udp"]
    assert udp["address"] == lab.g.public_addr
    return udp["bound"], udp["quarantined"]


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _call_ended_by_alg(
    lab: AgentLab, media_extra: str, end: Callable[[], None] | None
) -> tuple[str, dict[str, Any]]:
    """One answered sipp call through the ALG (`media_extra` after `[media] enabled`);
    `end` (if any) takes its media away once the pinhole is in. Both phones must get
    the ALG's BYE with a Reason (their scenarios fail without it) and answer it —
    neither hangs up itself — and the agent must hold nothing afterwards. The Reason
    the callee saw, and the call's CDR."""
    cdr_file = lab.workdir / "cdr.jsonl"
    alg, log = start_alg(lab, f'{media_extra}[files]\ncdr = "{cdr_file}"\n')
    uas = uac = None
    messages = lab.workdir / "uas-messages.log"
    try:
        uas = outside_phone(lab, "uas_sdp_ended_by_alg.xml", trace=messages)
        uac = inside_phone(lab, "uac_sdp_ended_by_alg.xml")
        await_answer(messages)
        # the answered call's group, with its pinhole in (the answer enabled it)
        wait_until(
            lambda: [g for g in groups(lab) if g["rules"]], 20, interval=0.2, what="pinhole in"
        )
        assert kernel_elements(lab, "dnat4") >= 1
        held = sum(len(b["external_ports"]) for b in json.loads(ctl(lab, "bindings", "--json")))
        assert held >= 2  # at least one RTP/RTCP pair
        assert udp_ports(lab) == (held, 0)
        if end is not None:
            end()
        assert uas.wait(timeout=60) == 0, messages.read_text(errors="replace")[-3000:]
        assert uac.wait(timeout=60) == 0, (lab.workdir / "alg.log").read_text()[-3000:]
        reasons = re.findall(r"^\s*Reason: (.*)$", messages.read_text(errors="replace"), re.M)
        wait_until(lambda: _records(cdr_file), 30, interval=0.1, what="the call's CDR")
        (record,) = _records(cdr_file)
        # the agent holds nothing: what it removed itself, and the ALG's own release
        wait_until(lambda: groups(lab) == [], 20, interval=0.2, what="agent empty")
        assert json.loads(ctl(lab, "bindings", "--json")) == []
        assert json.loads(ctl(lab, "rules", "--json")) == []
        wait_until(lambda: kernel_elements(lab, "dnat4") == 0, 20, what="kernel empty")
        assert kernel_elements(lab, "in4") == 0
        assert udp_ports(lab) == (0, held)  # released ports wait out the quarantine
    finally:
        stop(alg, uas, uac)
        log.close()
    assert (record["disposition"], record["ended_by"], record["confirmed"]) == (
        "ANSWERED",
        "alg",
        True,
    )
    assert record["media"]["agent"] == "gw1"
    (reason,) = reasons
    return reason, record


def test_an_operator_release_ends_the_call_with_a_bye_to_both_phones(
    agent_lab: AgentLab,
) -> None:
    def release() -> None:
        (group,) = groups(agent_lab)
        assert group["group_id"].startswith("alg-1/"), group
        released = ctl(agent_lab, "release", "group", group["group_id"])
        assert "released group" in released, released

    reason, record = _call_ended_by_alg(agent_lab, "", release)
    assert reason == 'SIP;cause=503;text="media removed by operator"'
    assert (record["status"], record["reason"]) == (503, "media removed by operator")


def test_a_call_without_media_for_media_timeout_is_ended_by_the_alg(
    agent_lab: AgentLab,
) -> None:
    """`[media] media_timeout`: the pinholes carry it as FCP max-idle; no RTP nor RTCP
    crosses (the sipp phones send none), so the agent removes the idle rule (IDLE event)
    and the ALG ends the call, as an SBC does on an RTP timeout."""
    reason, record = _call_ended_by_alg(agent_lab, "media_timeout = 3\n", None)
    assert reason == 'SIP;cause=408;text="media timeout"'
    assert (record["status"], record["reason"]) == (408, "media timeout")
