"""Edges of media anchoring with the real ALG, the real agent and sipp peers in namespaces
(issue #5): the CDR of a call carries its bindings and the counters at release, and a
call whose answer cannot be anchored is ended by the ALG without any inside address
reaching the outside."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from agent_lab import AgentLab
from anchoring_helpers import (
    SIPP,
    assert_no_inside_address,
    await_answer,
    in_ns,
    inside_phone,
    outside_phone,
    start_alg,
    start_outside_capture,
    stop,
    stop_capture,
)

from labs.netns import wait_until

pytestmark = [pytest.mark.kernel, pytest.mark.peers]


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _l3_bytes(tag: str, count: int) -> int:
    """IPv4 + UDP + the `labs.udp` payload ("tag:seq") of `count` packets."""
    return sum(20 + 8 + len(f"{tag}:{seq}") for seq in range(count))


def test_the_cdr_of_a_call_hung_up_by_bye_lists_its_bindings_and_counters(
    agent_lab: AgentLab,
) -> None:
    lab, g = agent_lab, agent_lab.g
    cdr_file = lab.workdir / "cdr.jsonl"
    alg, log = start_alg(lab, f'[files]\ncdr = "{cdr_file}"\n')
    uas = uac = None
    messages = lab.workdir / "uas-messages.log"
    try:
        uas = outside_phone(lab, "uas_sdp_anchored_media.xml", trace=messages)
        uac = inside_phone(lab, "uac_sdp_media.xml", pause_ms=8000)
        port = await_answer(messages)
        # RTP both ways through the binding: 60 packets in, 40 out
        rx = lab.recv(g.inside, "10.77.0.10", 16000, duration=2)
        lab.send(
            g.outside, "203.0.113.20", 17000, "203.0.113.1", port, tag="in", count=60, interval=0.01
        ).wait()
        wait_until(lambda: len(rx.packets()) >= 60, 10, what="inbound media")
        rx.wait()
        out = lab.recv(g.outside, "203.0.113.20", 17000, duration=2)
        lab.send(
            g.inside, "10.77.0.10", 16000, "203.0.113.20", 17000, tag="out", count=40, interval=0.01
        ).wait()
        wait_until(lambda: len(out.packets()) >= 40, 10, what="outbound media")
        out.wait()
        assert uac.wait(timeout=40) == 0  # the caller hung up (BYE answered)
        assert b"BYE" in messages.read_bytes()
        # the record is written once the agent's release report is in, not at the BYE
        wait_until(lambda: _records(cdr_file), 20, what="the call's CDR")
        (record,) = _records(cdr_file)
    finally:
        stop(alg, uas, uac)
        log.close()
    assert (record["disposition"], record["ended_by"], record["confirmed"]) == (
        "ANSWERED",
        "bye",
        True,
    )
    media = record["media"]
    assert "error" not in media, media
    assert media["agent"] == "gw1"
    (binding,) = media["bindings"]
    assert binding["internal"] == "10.77.0.10:16000"
    assert binding["external_address"] == "203.0.113.1"
    assert binding["external_ports"][0] == port  # the one the callee was offered
    (rule,) = media["rules"]
    assert rule["remote_address"] == "203.0.113.20"
    # what the kernel counted is what went through (60 in + 40 out, nothing else was sent
    # to or from the binding); the agent reads the counters every 0.5 s and the BYE came
    # seconds after the last packet. Seen: the very first inbound packet ("in:0", the one
    # that creates the flow's conntrack entry) is not in the element counters, so allow
    # one packet per direction less, never more than was sent.
    sent_packets = 60 + 40
    sent_bytes = _l3_bytes("in", 60) + _l3_bytes("out", 40)
    assert sent_packets - 2 <= binding["packets"] <= sent_packets, media
    assert sent_bytes - 2 * 34 <= binding["bytes"] <= sent_bytes, media
    assert (media["packets"], media["bytes"]) == (binding["packets"], binding["bytes"])
    assert (rule["packets"], rule["bytes"]) == (binding["packets"], binding["bytes"])


def test_an_answer_that_cannot_be_anchored_is_ended_by_the_alg_without_leaking(
    agent_lab: AgentLab,
) -> None:
    from scapy.all import Raw, rdpcap  # type: ignore[import-untyped]

    lab, g = agent_lab, agent_lab.g
    capture, pcap = start_outside_capture(lab)
    cdr_file = lab.workdir / "cdr.jsonl"
    # an outside call to alice (10.77.0.10): her 200 carries the offer's answer from the
    # inside, so it needs a binding before it may leave
    alg, log = start_alg(
        lab, f'[users]\nalice = "sip:alice@10.77.0.10:5060"\n[files]\ncdr = "{cdr_file}"\n'
    )
    callee = caller = None
    callee_log = lab.workdir / "callee-messages.log"
    caller_log = lab.workdir / "caller-messages.log"
    try:
        callee = in_ns(
            lab,
            g.inside,
            "sipp",
            "-sf",
            str(SIPP / "uas_answer_late.xml"),
            "-i",
            "10.77.0.10",
            "-p",
            "5060",
            "-m",
            "1",
            "-nostdin",
            "-trace_msg",
            "-message_file",
            str(callee_log),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        caller = in_ns(
            lab,
            g.outside,
            "sipp",
            "-sf",
            str(SIPP / "uac_sdp_refused.xml"),
            "203.0.113.1:5060",
            "-i",
            "203.0.113.20",
            "-p",
            "5060",
            "-m",
            "1",
            "-s",
            "alice",
            "-nostdin",
            "-timeout",
            "60s",
            "-trace_msg",
            "-message_file",
            str(caller_log),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def callee_saw() -> bytes:
            return callee_log.read_bytes() if callee_log.exists() else b""

        # the INVITE went through (the agent was there for it): now the agent dies, before
        # the callee answers (it pauses 6 s after its 180)
        wait_until(lambda: b"INVITE sip:alice@10.77.0.10" in callee_saw(), 15, what="INVITE in")
        lab.kill_agent()
        assert b"SIP/2.0 200 OK" not in callee_saw(), "the callee answered before the kill"
        # the callee: its 200 is ACKed and the call hung up by the ALG (BYE with a Reason
        # cause=503: checked by the scenario); the caller: 503 with a Reason (idem)
        assert callee.wait(timeout=60) == 0, callee_saw().decode(errors="replace")[-3000:]
        assert caller.wait(timeout=60) == 0, caller_log.read_text(errors="replace")[-3000:]
        seen = callee_saw()
        assert seen.count(b"ACK sip:alice@10.77.0.10") == 1 and b"BYE sip:alice@10.77.0.10" in seen
        wait_until(lambda: _records(cdr_file), 30, what="the call's CDR")
        (record,) = _records(cdr_file)
        assert (record["disposition"], record["status"], record["answer"]) == (
            "FAILED",
            503,
            None,
        )
        # the agent is dead: the group could not be released, and the record says so
        assert record["media"]["agent"] == "gw1", record
        assert record["media"]["error"].startswith("release failed: NETWORK_FAILURE"), record
        assert "bindings" not in record["media"]
    finally:
        stop(alg, callee, caller)
        log.close()
        stop_capture(capture)
    packets = rdpcap(str(pcap))
    sip = [bytes(p[Raw].load) for p in packets if Raw in p]
    assert any(load.startswith(b"INVITE sip:alice@203.0.113.1") for load in sip)
    assert any(load.startswith(b"SIP/2.0 503") and b"Reason:" in load for load in sip)
    assert not any(load.startswith(b"SIP/2.0 200") and b"INVITE" in load for load in sip)
    assert_no_inside_address(packets)
