"""The real ALG and the real agent together: calls from an inside sipp phone to an
outside one through the gateway namespace, media anchored through FCP (mTLS) into the
kernel, and nothing of the inside visible outside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PORT, ROOT, AgentLab

from labs.netns import wait_until

pytestmark = [pytest.mark.kernel, pytest.mark.peers]

SIPP = ROOT / "labs" / "sipp"


def alg_config(lab: AgentLab) -> Path:
    pki = lab.workdir / "pki"
    path = lab.workdir / "alg.toml"
    path.write_text(
        f"""
[inside]
address = "10.77.0.1"
transports = ["udp"]
[outside]
address = "203.0.113.1"
transports = ["udp"]
[proxy]
inside_networks = ["10.77.0.0/24"]
[media]
enabled = true
[[media.agents]]
name = "gw1"
address = "127.0.0.1:{PORT}"
ca = "{pki}/ca.pem"
cert = "{pki}/alg-1.pem"
key = "{pki}/alg-1.key"
[log]
level = "INFO"
"""
    )
    return path


def in_ns(lab: AgentLab, ns: str, *command: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *command], cwd=lab.workdir, **kw)  # type: ignore[call-overload]


def test_anchored_calls_hide_the_inside_and_release_everything(agent_lab: AgentLab) -> None:
    lab = agent_lab
    log = (lab.workdir / "alg.log").open("wb")
    alg = in_ns(
        lab,
        lab.g.gw,
        sys.executable,
        "-m",
        "sipwall",
        "alg",
        "--config",
        str(alg_config(lab)),
        stdout=subprocess.PIPE,
        stderr=log,
    )
    uas = None
    try:
        assert alg.stdout is not None
        assert b"ready" in alg.stdout.readline(), (lab.workdir / "alg.log").read_text()
        uas = in_ns(
            lab,
            lab.g.outside,
            "sipp",
            "-sf",
            str(SIPP / "uas_sdp_anchored.xml"),
            "-i",
            "203.0.113.20",
            "-p",
            "5060",
            "-m",
            "3",
            "-nostdin",
            "-trace_msg",
            "-message_file",
            str(lab.workdir / "uas-messages.log"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
