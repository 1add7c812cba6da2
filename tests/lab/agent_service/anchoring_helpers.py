"""The real ALG next to the real agent in the agent lab (agent_lab.py): its config, sipp
phones on either side, and what the anchoring tests wait on and read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from agent_lab import PORT, ROOT, AgentLab

from labs.netns import wait_until

SIPP = ROOT / "labs" / "sipp"


def alg_config(lab: AgentLab, media_extra: str = "") -> Path:
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
{media_extra}
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


def outside_phone(
    lab: AgentLab, scenario: str, *, calls: int = 1, trace: Path | None = None
) -> subprocess.Popen[bytes]:
    """The outside callee (sipp at 203.0.113.20); `trace` keeps every message it saw."""
    argv = [
        "sipp",
        "-sf",
        str(SIPP / scenario),
        "-i",
        "203.0.113.20",
        "-p",
        "5060",
        "-m",
        str(calls),
        "-nostdin",
    ]
    if trace is not None:
        argv += ["-trace_msg", "-message_file", str(trace)]
    return in_ns(lab, lab.g.outside, *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def inside_phone(
    lab: AgentLab, scenario: str, *, pause_ms: int | None = None
) -> subprocess.Popen[bytes]:
    """One call from the inside caller (sipp at 10.77.0.10) through the ALG."""
    argv = [
        "sipp",
        "-sf",
        str(SIPP / scenario),
        "203.0.113.20:5060",
        "-rsa",
        "10.77.0.1:5060",
        "-i",
        "10.77.0.10",
        "-p",
        "5060",
        "-m",
        "1",
        "-s",
        "bob",
        "-nostdin",
    ]
    if pause_ms is not None:
        argv += ["-d", str(pause_ms)]
    return in_ns(lab, lab.g.inside, *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def public_media_port(messages: Path) -> int | None:
    """The m= port the outside phone was offered (the agent's binding), once seen."""
    if not messages.exists():
        return None
    for line in messages.read_text(errors="replace").splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    return None


def await_answer(messages: Path) -> int:
    """Wait until the outside phone saw the caller's ACK (the answer was relayed, so the
    rules are enabled); the public port it was offered (the agent's binding)."""
    wait_until(
        lambda: b"ACK sip:" in (messages.read_bytes() if messages.exists() else b""),
        10,
        what="call answered",
    )
    port = public_media_port(messages)
    assert port is not None
    return port


def start_alg(lab: AgentLab, media_extra: str = "") -> tuple[subprocess.Popen[bytes], Any]:
    """`sipwall alg` in the gateway, waited for until ready; `media_extra`: more
    configuration after `[media] enabled` (see `alg_config`)."""
    log = (lab.workdir / "alg.log").open("wb")
    alg = in_ns(
        lab,
        lab.g.gw,
        sys.executable,
        "-m",
        "sipwall",
        "alg",
        "--config",
        str(alg_config(lab, media_extra)),
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert alg.stdout is not None
    if b"ready" not in alg.stdout.readline():  # stopped here: the caller never gets it
        stop(alg)
        log.close()
        raise AssertionError((lab.workdir / "alg.log").read_text())
    return alg, log


def stop(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


def kernel_elements(lab: AgentLab, name: str) -> int:
    listing = lab.nft(
        "-j", "list", "map" if name.endswith("nat4") else "set", "inet", "sipwall", name
    ).stdout
    return listing.count('"elem"')


def start_outside_capture(lab: AgentLab) -> tuple[subprocess.Popen[bytes], Path]:
    """dumpcap on the gateway's outside link, running once this returns; its pcap path."""
    pcap = lab.workdir / "outside.pcap"
    capture = in_ns(
        lab,
        lab.g.gw,
        "dumpcap",
        "-q",
        "-i",
        "gw-out",
        "-w",
        str(pcap),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: pcap.exists() and pcap.stat().st_size > 0, 10, what="capture running")
    return capture, pcap


def stop_capture(capture: subprocess.Popen[bytes]) -> None:
    if capture.poll() is None:
        capture.terminate()  # dumpcap finishes the file on SIGTERM
        capture.wait(timeout=10)


def assert_no_inside_address(packets: Any) -> None:
    """No captured packet has an inside (10.77.x) address in its IP header or payload."""
    from scapy.all import IP, Raw  # type: ignore[import-untyped]

    for packet in packets:
        if IP in packet:
            src, dst = packet[IP].src, packet[IP].dst
            assert not src.startswith("10.77.") and not dst.startswith("10.77."), packet.summary()
        if Raw in packet:
            assert b"10.77." not in bytes(packet[Raw].load), packet.summary()
