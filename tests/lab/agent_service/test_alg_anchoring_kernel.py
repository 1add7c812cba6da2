"""The real ALG and the real agent together: calls from an inside sipp phone to an
outside one through the gateway namespace, media anchored through FCP (mTLS) into the
kernel, and nothing of the inside visible outside."""

from __future__ import annotations

import subprocess

import pytest
from agent_lab import AgentLab
from anchoring_helpers import (
    SIPP,
    assert_no_inside_address,
    await_answer,
    inside_phone,
    kernel_elements,
    outside_phone,
    start_alg,
    start_outside_capture,
    stop,
    stop_capture,
)

from labs.netns import wait_until

pytestmark = [pytest.mark.kernel, pytest.mark.peers]


def test_anchored_calls_hide_the_inside_and_release_everything(agent_lab: AgentLab) -> None:
    lab = agent_lab
    alg, log = start_alg(lab)
    uas = None
    try:
        uas = outside_phone(
            lab, "uas_sdp_anchored.xml", calls=3, trace=lab.workdir / "uas-messages.log"
        )
        uac = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                lab.g.inside,
                "sipp",
                "-sf",
                str(SIPP / "uac_sdp.xml"),
                "203.0.113.20:5060",
                "-rsa",
                "10.77.0.1:5060",
                "-i",
                "10.77.0.10",
                "-p",
                "5060",
                # one call at a time: sipp offers the same media port (6000) in every
                # call, and one inside endpoint cannot be mapped into two calls at once
                "-m",
                "3",
                "-r",
                "1",
                "-l",
                "1",
                "-d",
                "300",
                "-s",
                "bob",
                "-nostdin",
                "-timeout",
                "30s",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=lab.workdir,
        )
        assert uac.returncode == 0, uac.stderr[-2000:] + (lab.workdir / "alg.log").read_text()
        assert uas.wait(timeout=20) == 0
        # nothing the outside phone received carries an inside address (topology hiding)
        seen = (lab.workdir / "uas-messages.log").read_bytes()
        assert b"INVITE" in seen and b"203.0.113.1" in seen
        assert b"10.77." not in seen
        # every binding and pinhole of the three calls is gone once they hung up
        wait_until(
            lambda: lab.ok("list_rules", **{"as": "alg-1"}) == [],
            10,
            what="the ALG released its pinholes",
        )
    finally:
        for proc in (alg, uas):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        if alg.stdout is not None:
            alg.stdout.close()
        log.close()


def test_media_flows_through_the_binding_only_while_the_call_lasts(agent_lab: AgentLab) -> None:
    from labs.traffic import now

    lab, g = agent_lab, agent_lab.g
    alg, log = start_alg(lab)
    uas = uac = None
    messages = lab.workdir / "uas-messages.log"
    try:
        uas = outside_phone(lab, "uas_sdp_anchored_media.xml", trace=messages)
        uac = inside_phone(lab, "uac_sdp_media.xml", pause_ms=10000)
        port = await_answer(messages)

        # inbound: the callee's media reaches the caller's inside port through the binding
        rx = lab.recv(g.inside, "10.77.0.10", 16000, duration=1.5)
        lab.send(
            g.outside, "203.0.113.20", 17000, "203.0.113.1", port, tag="in", count=50, interval=0.01
        ).wait()
        wait_until(lambda: len(rx.packets()) >= 45, 5, what="inbound media")
        rx.wait()

        # outbound: the caller's media leaves with the public binding as its source
        rx = lab.recv(g.outside, "203.0.113.20", 17000, duration=1.5)
        lab.send(
            g.inside, "10.77.0.10", 16000, "203.0.113.20", 17000, tag="out", count=50, interval=0.01
        ).wait()
        wait_until(lambda: len(rx.packets()) >= 45, 5, what="outbound media")
        assert {(p.src, p.sport) for p in rx.packets()} == {("203.0.113.1", port)}
        rx.wait()

        # a stream running across the hangup stops within a second of it
        rx = lab.recv(g.inside, "10.77.0.10", 16000, duration=12)
        tx = lab.send(
            g.outside,
            "203.0.113.20",
            17000,
            "203.0.113.1",
            port,
            tag="late",
            count=900,
            interval=0.01,
        )
        assert uac.wait(timeout=30) == 0  # BYE answered: the call is over
        hung_up = now()
        wait_until(lambda: tx.sent_until() > hung_up + 1.5, 15, what="sender kept going")
        got = rx.packets()
        assert got, "media flowed before the hangup"
        assert max(p.t for p in got) <= hung_up + 1.0
        wait_until(
            lambda: lab.ok("list_rules", **{"as": "alg-1"}) == [],
            10,
            what="the ALG released its pinholes",
        )
    finally:
        for proc in (alg, uas, uac):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        if alg.stdout is not None:
            alg.stdout.close()
        log.close()


@pytest.mark.parametrize(
    ("caller", "callee"),
    [("uac_busy_sdp.xml", "uas_busy.xml"), ("uac_cancel_sdp.xml", "uas_cancel_hidden.xml")],
)
def test_busy_and_cancelled_calls_leave_no_binding(
    agent_lab: AgentLab, caller: str, callee: str
) -> None:
    lab = agent_lab
    alg, log = start_alg(lab)
    uas = None
    try:
        uas = outside_phone(lab, callee, calls=2)
        uac = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                lab.g.inside,
                "sipp",
                "-sf",
                str(SIPP / caller),
                "203.0.113.20:5060",
                "-rsa",
                "10.77.0.1:5060",
                "-i",
                "10.77.0.10",
                "-p",
                "5060",
                "-m",
                "2",
                "-r",
                "1",
                "-l",
                "1",
                "-s",
                "bob",
                "-nostdin",
                "-timeout",
                "30s",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=lab.workdir,
        )
        assert uac.returncode == 0, uac.stderr[-2000:]
        wait_until(lambda: kernel_elements(lab, "dnat4") == 0, 10, what="bindings released")
        assert kernel_elements(lab, "in4") == 0 and kernel_elements(lab, "in4a") == 0
    finally:
        stop(alg, uas)
        log.close()


def test_outside_link_never_carries_an_inside_address_and_media_survives_the_agent(
    agent_lab: AgentLab,
) -> None:
    from scapy.all import rdpcap  # type: ignore[import-untyped]

    from labs.traffic import now

    lab, g = agent_lab, agent_lab.g
    capture, pcap = start_outside_capture(lab)
    alg, log = start_alg(lab)
    uas = uac = None
    messages = lab.workdir / "uas-messages.log"
    try:
        uas = outside_phone(lab, "uas_sdp_anchored_media.xml", trace=messages)
        uac = inside_phone(lab, "uac_sdp_media.xml", pause_ms=12000)
        port = await_answer(messages)
        # media both ways while the agent is killed: the kernel keeps forwarding
        rx = lab.recv(g.inside, "10.77.0.10", 16000, duration=4)
        tx = lab.send(
            g.outside, "203.0.113.20", 17000, "203.0.113.1", port, tag="k", count=300, interval=0.01
        )
        wait_until(lambda: len(rx.packets()) >= 20, 5, what="media flowing")
        lab.kill_agent()
        killed = now()
        tx.wait()
        rx.wait()
        assert any(p.t > killed + 1.0 for p in rx.packets()), "media stopped with the agent"
        assert len(rx.packets()) >= 280  # at most a handful lost while it died
        out = lab.recv(g.outside, "203.0.113.20", 17000, duration=1.5)
        lab.send(
            g.inside, "10.77.0.10", 16000, "203.0.113.20", 17000, tag="o", count=30, interval=0.01
        ).wait()
        out.wait()
        assert len(out.packets()) >= 25
        lab.start_agent()  # back before the hangup, so the release can be carried out
        assert uac.wait(timeout=30) == 0
        wait_until(
            lambda: lab.ok("list_rules", **{"as": "alg-1"}) == [],
            15,
            what="released after the agent came back",
        )
    finally:
        stop(alg, uas, uac)
        log.close()
        stop_capture(capture)
    packets = rdpcap(str(pcap))
    assert len(packets) > 300  # SIP and both media directions were captured
    assert_no_inside_address(packets)


@pytest.mark.slow
def test_a_dead_alg_leaves_nothing_open_once_the_lifetime_runs_out(agent_lab: AgentLab) -> None:
    from labs.traffic import now

    lab, g = agent_lab, agent_lab.g
    # RFC 4028's shortest interval, so the group lifetime is 90 + 2 s
    alg, log = start_alg(lab, "session_interval = 90\nsession_slack = 2")
    uas = uac = None
    messages = lab.workdir / "uas-messages.log"
    try:
        uas = outside_phone(lab, "uas_sdp_anchored_media.xml", trace=messages)
        uac = inside_phone(lab, "uac_sdp_media.xml", pause_ms=300000)
        port = await_answer(messages)
        answered = now()
        assert b"Session-Expires: 90" in messages.read_bytes()  # inserted by the ALG
        rx = lab.recv(g.inside, "10.77.0.10", 16000, duration=120)
        tx = lab.send(
            g.outside,
            "203.0.113.20",
            17000,
            "203.0.113.1",
            port,
            tag="d",
            count=11000,
            interval=0.01,
        )
        wait_until(lambda: len(rx.packets()) >= 20, 5, what="media flowing")
        alg.kill()  # SIGKILL: no BYE, no release ever comes from the ALG
        alg.wait(timeout=10)
        killed = now()
        wait_until(
            lambda: kernel_elements(lab, "dnat4") == 0, 110, what="the kernel expired the binding"
        )
        expired = now()
        wait_until(lambda: tx.sent_until() > expired + 1.5, 15, what="sender kept going")
        got = rx.packets()
        assert max(p.t for p in got) > killed + 30  # media went on without the ALG
        assert max(p.t for p in got) <= expired + 1.0  # and stopped with the lifetime
        assert expired - answered <= 92 + 5  # the lifetime the ALG asked for, no more
        assert kernel_elements(lab, "in4") == 0
    finally:
        stop(alg, uas, uac)
        log.close()


def test_hold_and_resume_keep_the_binding_and_media_flows_again(agent_lab: AgentLab) -> None:
    lab, g = agent_lab, agent_lab.g
    alg, log = start_alg(lab)
    uas = uac = None
    messages = lab.workdir / "uas-messages.log"

    def acks() -> int:
        return messages.read_bytes().count(b"ACK sip:") if messages.exists() else 0

    def offered_ports() -> list[int]:
        # the ports offered to the outside phone (its own answers use 17000)
        text = messages.read_text(errors="replace") if messages.exists() else ""
        ports = [int(line.split()[1]) for line in text.splitlines() if line.startswith("m=audio")]
        return [port for port in ports if port != 17000]

    try:
        uas = outside_phone(lab, "uas_hold_resume.xml", trace=messages)
        uac = inside_phone(lab, "uac_hold_resume.xml")
        wait_until(lambda: acks() >= 2, 15, what="on hold (second ACK)")
        assert b"a=sendonly" in messages.read_bytes()
        assert kernel_elements(lab, "dnat4") >= 1  # hold keeps the binding
        wait_until(lambda: acks() >= 3, 15, what="resumed (third ACK)")
        ports = offered_ports()
        assert len(ports) == 3 and len(set(ports)) == 1, ports  # one binding all along
        rx = lab.recv(g.inside, "10.77.0.10", 16000, duration=1.5)
        lab.send(
            g.outside,
            "203.0.113.20",
            17000,
            "203.0.113.1",
            ports[0],
            tag="r",
            count=50,
            interval=0.01,
        ).wait()
        wait_until(lambda: len(rx.packets()) >= 45, 5, what="media after resume")
        rx.wait()
        assert uac.wait(timeout=30) == 0
        wait_until(
            lambda: lab.ok("list_rules", **{"as": "alg-1"}) == [],
            10,
            what="released after the hangup",
        )
    finally:
        stop(alg, uas, uac)
        log.close()


def test_a_firewall_reload_mid_call_is_repaired_and_media_resumes(agent_lab: AgentLab) -> None:
    from labs.traffic import now

    lab, g = agent_lab, agent_lab.g
    alg, log = start_alg(lab)
    uas = uac = None
    messages = lab.workdir / "uas-messages.log"
    try:
        uas = outside_phone(lab, "uas_sdp_anchored_media.xml", trace=messages)
        uac = inside_phone(lab, "uac_sdp_media.xml", pause_ms=12000)
        port = await_answer(messages)
        rx = lab.recv(g.inside, "10.77.0.10", 16000, duration=8)
        tx = lab.send(
            g.outside, "203.0.113.20", 17000, "203.0.113.1", port, tag="f", count=600, interval=0.01
        )
        wait_until(lambda: len(rx.packets()) >= 20, 5, what="media flowing")
        # an operator reloads the host firewall: every table, ours included, is gone
        assert lab.nft("flush", "ruleset").returncode == 0
        flushed = now()
        wait_until(lambda: kernel_elements(lab, "dnat4") >= 1, 5, what="table rebuilt")
        rebuilt = now()
        tx.wait()
        rx.wait()
        after = [p for p in rx.packets() if p.t > rebuilt + 0.5]
        assert rebuilt - flushed <= 1.5  # the agent noticed and rebuilt within a second or so
        assert len(after) >= 100, "media did not resume after the rebuild"
        assert uac.wait(timeout=30) == 0
    finally:
        stop(alg, uas, uac)
        log.close()
