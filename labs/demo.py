"""`sipwall lab demo`: two real softphones call each other through sipwall, both ways.

What it does
------------
1. builds the `basic` lab (alice 10.77.0.10 inside, carol 203.0.113.20 outside, gateway
   10.77.0.1 | 203.0.113.1 whose lab firewall drops forwarded traffic unless the agent
   marked it) and a lab PKI (`fcp.certs`);
2. starts, in the gateway namespace, the filter agent (FCP on 127.0.0.1:7700, public pool
   203.0.113.1:20000-29999) and the ALG (media anchored through that agent, registrar for
   the domain `203.0.113.1`), and a bounded `dumpcap` on each gateway interface;
3. starts two baresip phones: alice (440 Hz) registers `sip:alice@203.0.113.1` through the
   ALG (its outbound proxy 10.77.0.1); carol (660 Hz) uses 203.0.113.1 as outbound proxy;
4. call 1: alice calls `sip:carol@203.0.113.20`; call 2: carol calls
   `sip:alice@203.0.113.1`. Each call: both phones record what they hear, the agent's
   bindings and pinholes are read (`sipwall ctl` as the admin identity `ctl`) while media
   flows, then the caller hangs up, the pinholes must go, and a late "RTP" datagram from
   carol's media address to the former public binding must not reach the inside;
5. prints the report (SIP ladders per side from the pcaps, media flows, bindings and
   pinholes with counters, tones heard, proofs after hangup), leaves inside.pcap,
   outside.pcap, the recordings and the logs in the output directory, tears everything
   down and ends with one line `demo: PASS — ...` or `demo: FAIL — ...`.

Everything runs under the lab's bookkeeping (labs.build): every process is started
through the lab, so the state file names it and teardown — on success, failure, Ctrl-C or
from a later `sipwall lab down` / leftover cleanup — stops it and deletes the namespaces.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcp.certs import generate_lab_pki, write_lab_pki
from fcp.ctl import table
from labs import build
from labs import state as st
from labs.baresip import Phone, PhoneConfig, PhoneError
from labs.gateway_config import (
    AgentEntry,
    AgentFiles,
    AlgFiles,
    agent_toml,
    alg_toml,
    write_alg_state_dir,
)
from labs.netns import poll_until
from labs.nsock import socket_in
from labs.tone import Tone, ToneError, analyse
from labs.topology import load

Say = Callable[[str], None]

SCENARIO = "basic"
FCP_PORT = 7700
INSIDE_IF, OUTSIDE_IF = "lan0", "wan0"
GW_INSIDE, GW_OUTSIDE = "10.77.0.1", "203.0.113.1"
# The ALG's SIP domain: alice is sip:alice@sipwall.example. Not the gateway's address: an
# AOR at the ALG's own address (sip:alice@203.0.113.1) arriving with a Route to the ALG (a
# phone with an outbound proxy) is taken for a strict router's swapped Request-URI
# (alg/forwarding.py plan_routes) and mis-routed to the ALG itself, which answers 404.
DOMAIN = "sipwall.example"
ALICE_HZ, CAROL_HZ = 440, 660
TONE_TOLERANCE_HZ = 5.0
MIN_PURITY = 0.8
TALK_SECONDS = 2.5  # audio each phone must have heard before the hangup
CAPTURE_LIMIT_S = 300  # dumpcap stops by itself even if we could not stop it
LATE_PACKETS = 5


def write_gateway_configs(
    work: Path,
    pki: Path,
    *,
    domains: Sequence[str] = (),
    upstream: str | None = None,
    alg_state: Path | None = None,
    outside_tls: tuple[Path, Path, Path] | None = None,
    inside_tls: tuple[Path, Path, Path] | None = None,
    nameservers: Sequence[str] = (),
) -> None:
    """agent.toml and alg.toml of the `basic` gateway (one agent, FCP on 127.0.0.1);
    `alg_state`: the ALG keeps its registrations and media secret there (restartable);
    `outside_tls`, `inside_tls`: SIP over TLS on that side with these certificate, key
    and CA; `nameservers`: the lab DNS servers the ALG resolves names with."""
    agent = AgentFiles(f"127.0.0.1:{FCP_PORT}", GW_OUTSIDE, pki)
    (work / "agent.toml").write_text(agent_toml(agent))
    entry = AgentEntry("gw1", f"127.0.0.1:{FCP_PORT}", pki)
    state = write_alg_state_dir(alg_state) if alg_state is not None else None
    alg = AlgFiles(
        GW_INSIDE,
        GW_OUTSIDE,
        (entry,),
        domains,
        upstream,
        log_level="DEBUG",
        state_dir=state,
        outside_tls=outside_tls,
        inside_tls=inside_tls,
        nameservers=nameservers,
    )
    (work / "alg.toml").write_text(alg_toml(alg))


class DemoFailure(RuntimeError):
    """The demo could not do or prove something; the message is the `demo: FAIL` reason."""


def _deadline_poll(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """`labs.netns.poll_until`, failing the demo (DemoFailure) at the deadline."""
    return poll_until(what, timeout, probe, DemoFailure)


# --- results ---------------------------------------------------------------------------


@dataclass
class CallResult:
    number: int
    caller: str
    callee: str
    uri: str
    t_dial: float = 0.0  # wall clock (epoch), to cut the pcaps into calls
    t_hangup: float = 0.0
    t_end: float = 0.0
    bindings: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    heard: dict[str, Tone | str] = field(default_factory=dict)  # phone -> tone or error
    left_rules: int | None = None
    left_bindings: int | None = None
    late_target: tuple[str, int] | None = None  # the former public binding
    late_source: tuple[str, int] | None = None
    late_inside: tuple[str, int] | None = None  # where it would have been forwarded to
    late_sent_at: float = 0.0
    late_received: int | None = None  # datagrams our inside socket got
    late_dropped: int | None = None  # what the agent's `counter drop` counted meanwhile
    failure: str | None = None  # why the call did not happen


@dataclass(frozen=True)
class Packet:
    t: float
    src: str
    sport: int
    dst: str
    dport: int
    sip: str  # "INVITE", "200 OK (INVITE)" ... or "" for non-SIP


@dataclass
class Demo:
    """One run of the demo; `run()` returns the final `demo:` line's verdict."""

    out: Path
    lab_name: str = "demo"
    say: Say = print
    checkpoint: Callable[[], None] = lambda: None
    lab: build.RunningLab | None = None
    work: Path = Path()
    calls: list[CallResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _dumpcaps: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _alg: subprocess.Popen[bytes] | None = None

    # -- lab and processes ----------------------------------------------------------------

    def _lab(self) -> build.RunningLab:
        assert self.lab is not None
        return self.lab

    def build(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("inside.pcap", "outside.pcap", "report.txt"):
            (self.out / stale).unlink(missing_ok=True)
        for stale_dir in ("recordings", "logs"):
            shutil.rmtree(self.out / stale_dir, ignore_errors=True)
        self.say(f"building lab {self.lab_name} (scenario {SCENARIO})")
        self.lab = build.up(
            load(SCENARIO), self.lab_name, checkpoint=self.checkpoint, source=SCENARIO
        )
        self.work = self.lab.dir / "demo"
        self.work.mkdir()
        pki = self.work / "pki"
        write_lab_pki(pki, generate_lab_pki(["127.0.0.1"], ["alg-1", "ctl"]))
        write_gateway_configs(self.work, pki, domains=(DOMAIN,))

    def start_captures(self) -> None:
        lab = self._lab()
        for side, iface in (("inside", INSIDE_IF), ("outside", OUTSIDE_IF)):
            path = self.out / f"{side}.pcap"
            argv = ["dumpcap", "-q", "-P", "-i", iface, "-a", f"duration:{CAPTURE_LIMIT_S}"]
            proc = lab.spawn("gw", [*argv, "-w", str(path)], name=f"dumpcap-{side}")
            self._dumpcaps.append(proc)
        for proc, side in zip(self._dumpcaps, ("inside", "outside"), strict=True):
            path = self.out / f"{side}.pcap"
            log = lab.log_path("gw", f"dumpcap-{side}")

            def started(proc: subprocess.Popen[bytes] = proc, log: Path = log) -> bool:
                if proc.poll() is not None:
                    raise DemoFailure(f"dumpcap exited: {log.read_text(errors='replace')[-300:]}")
                return log.exists() and "Capturing on" in log.read_text(errors="replace")

            _deadline_poll(f"capture on the {side} interface", 10, started)
            _deadline_poll(f"{path} written", 10, path.exists)
        self.say(f"capturing on gw {INSIDE_IF} and {OUTSIDE_IF}")

    def stop_captures(self) -> None:
        for proc in self._dumpcaps:
            if proc.poll() is None:
                proc.terminate()  # dumpcap finishes the file on SIGTERM
        for proc in self._dumpcaps:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._lab().forget(proc)
        self._dumpcaps.clear()

    def start_agent_and_alg(self) -> None:
        lab = self._lab()
        sipwall = [sys.executable, "-m", "sipwall"]
        agent = lab.spawn(
            "gw", [*sipwall, "agent", "--config", str(self.work / "agent.toml")], name="agent"
        )
        self._daemons.append(agent)

        def agent_listens() -> bool:
            if agent.poll() is not None:
                raise DemoFailure(f"the agent exited ({agent.returncode}); see logs/gw-agent.log")
            with socket_in(lab.ns("gw"), socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", FCP_PORT)) == 0

        _deadline_poll("the agent serving FCP", 20, agent_listens)
        self.say(f"agent up: FCP on 127.0.0.1:{FCP_PORT} in gw, public pool {GW_OUTSIDE}")
        self._start_alg()

    def restart_alg(self) -> None:
        """Stop the ALG (SIGTERM) and start it again with the same configuration; the
        agent keeps running."""
        alg = self._alg
        if alg is not None:
            self._lab().stop(alg)
            self._daemons.remove(alg)
        self._start_alg()

    def _start_alg(self) -> None:
        lab = self._lab()
        sipwall = [sys.executable, "-m", "sipwall"]
        log = lab.log_path("gw", "alg")
        seen = log.read_text(errors="replace").count("sipwall alg: ready") if log.exists() else 0
        alg = lab.spawn(
            "gw", [*sipwall, "alg", "--config", str(self.work / "alg.toml")], name="alg"
        )
        self._daemons.append(alg)
        self._alg = alg

        def alg_ready() -> bool:
            if alg.poll() is not None:
                raise DemoFailure(f"the ALG exited ({alg.returncode}); see logs/gw-alg.log")
            return log.read_text(errors="replace").count("sipwall alg: ready") > seen

        _deadline_poll("the ALG ready", 20, alg_ready)
        self.say(f"ALG up: {GW_INSIDE}:5060 inside, {GW_OUTSIDE}:5060 outside, media anchored")

    def stop_daemons(self) -> None:
        lab = self._lab()
        for proc in reversed(self._daemons):  # the ALG first: it releases what it holds
            lab.stop(proc)
        self._daemons.clear()

    def ctl(self, what: str) -> list[dict[str, Any]]:
        pki = self.work / "pki"
        argv = [sys.executable, "-m", "sipwall", "ctl", "--agent", f"127.0.0.1:{FCP_PORT}"]
        argv += ["--ca", str(pki / "ca.pem"), "--cert", str(pki / "ctl.pem")]
        argv += ["--key", str(pki / "ctl.key"), what, "--json"]
        done = self._lab().run("gw", argv, timeout=20, check=False)
        if done.returncode != 0:
            raise DemoFailure(f"sipwall ctl {what} failed: {done.stderr.strip()[-300:]}")
        records: list[dict[str, Any]] = json.loads(done.stdout)
        return records

    # -- phones and calls -------------------------------------------------------------------

    def phones(self) -> tuple[Phone, Phone]:
        lab = self._lab()
        alice_cfg = PhoneConfig(
            "alice",
            lab.address("alice"),
            tone_hz=ALICE_HZ,
            domain=DOMAIN,
            registrar=f"sip:{GW_INSIDE}",
            outbound_proxy=f"sip:{GW_INSIDE}:5060",
            register_interval=600,
        )
        carol_cfg = PhoneConfig(
            "carol",
            lab.address("carol"),
            tone_hz=CAROL_HZ,
            outbound_proxy=f"sip:{GW_OUTSIDE}:5060",
            rtp_ports=(12000, 12099),
        )
        return (
            Phone(lab, "alice", alice_cfg, self.work / "alice"),
            Phone(lab, "carol", carol_cfg, self.work / "carol"),
        )

    def call(self, number: int, caller: Phone, callee: Phone, uri: str) -> CallResult:
        result = CallResult(number, caller.host, callee.host, uri)
        self.calls.append(result)
        self.say(f"call {number}: {caller.host} dials {uri}")
        result.t_dial = time.time()
        try:
            self._talk(result, caller, callee, uri)
        finally:
            result.t_end = time.time()
        self.say(
            f"call {number}: hung up by {caller.host}; agent now holds "
            f"{result.left_bindings} bindings, {result.left_rules} pinholes"
        )
        return result

    def _talk(self, result: CallResult, caller: Phone, callee: Phone, uri: str) -> None:
        number = result.number
        caller.dial(uri)
        event = caller.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"), timeout=15)
        if event.get("type") == "CALL_CLOSED":
            result.failure = f"{caller.host}'s call was refused: {event.get('param', '?')}"
            raise DemoFailure(f"call {number}: {result.failure}")
        callee.wait_event("CALL_ESTABLISHED", timeout=15)
        for phone in (caller, callee):
            phone.wait_heard(TALK_SECONDS, timeout=15)
        self.checkpoint()
        # the agent's counters are read every observe_interval (0.5 s): media has flowed
        # for seconds now, so this snapshot shows it
        result.bindings = self.ctl("bindings")
        result.rules = self.ctl("rules")
        self.say(
            f"call {number}: established, {TALK_SECONDS:g}s of audio each way; "
            f"{len(result.bindings)} bindings, {len(result.rules)} pinholes"
        )
        result.t_hangup = time.time()
        caller.hangup()
        caller.wait_event("CALL_CLOSED", timeout=10)
        callee.wait_event("CALL_CLOSED", timeout=10)
        for phone in (caller, callee):
            self._keep_recording(number, phone, result)
        self._after_hangup(result)

    def _keep_recording(self, number: int, phone: Phone, result: CallResult) -> None:
        heard = phone.heard()
        if heard is None:
            result.heard[phone.host] = "no recording"
            return
        dest = self.out / "recordings" / f"call{number}-{phone.host}-heard.wav"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(heard, dest)
        try:
            result.heard[phone.host] = analyse(dest)
        except ToneError as exc:
            result.heard[phone.host] = str(exc)

    def _after_hangup(self, result: CallResult) -> None:
        def released() -> bool:
            rules, bindings = self.ctl("rules"), self.ctl("bindings")
            result.left_rules, result.left_bindings = len(rules), len(bindings)
            return not rules and not bindings

        try:
            _deadline_poll("the agent empty after the hangup", 10, released)
        except DemoFailure:
            self.problems.append(
                f"call {result.number}: {result.left_rules} pinholes and "
                f"{result.left_bindings} bindings still open 10 s after the hangup"
            )
        self._late_packet(result)

    def _late_packet(self, result: CallResult) -> None:
        """Send a few datagrams from carol's media address to the public binding that
        carried carol's media, and listen where the binding forwarded them to."""
        inbound = [r for r in result.rules if r["remote_address"] == self._lab().address("carol")]
        binding_ids = {r["binding_id"] for r in inbound}
        bindings = [b for b in result.bindings if b["binding_id"] in binding_ids]
        rtp = [b for b in bindings if b["external_ports"]]
        if not inbound or not rtp:
            self.problems.append(f"call {result.number}: no pinhole from carol to test late RTP")
            return
        binding = min(rtp, key=lambda b: b["external_ports"][0])
        rule = next(r for r in inbound if r["binding_id"] == binding["binding_id"])
        remote_port = rule["remote_port"]
        if remote_port is None:
            remote_port = 12000
        target = (binding["external_address"], int(binding["external_ports"][0]))
        inside_host, _, inside_port = binding["internal"].rpartition(":")
        result.late_target = target
        result.late_source = (rule["remote_address"], int(remote_port))
        result.late_inside = (inside_host, int(inside_port))
        lab = self._lab()
        rx = socket_in(lab.ns("alice"), socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket_in(lab.ns("carol"), socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                rx.bind(result.late_inside)
                tx.bind(result.late_source)
            except OSError as exc:
                self.problems.append(f"call {result.number}: cannot bind for late RTP: {exc}")
                return
            rx.settimeout(0.05)
            dropped_before = self.agent_drops()
            result.late_sent_at = time.time()
            for seq in range(LATE_PACKETS):
                # a minimal RTP header (v2, PCMU, seq) and a payload
                header = bytes([0x80, 0x00, 0, seq]) + b"\0" * 8
                try:
                    tx.sendto(header + b"late" * 40, target)
                except OSError:
                    pass  # an ICMP error from the previous datagram: keep sending
            got = 0
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    rx.recv(2048)
                    got += 1
                except TimeoutError:
                    continue
        result.late_received = got
        result.late_dropped = self.agent_drops() - dropped_before

    def agent_drops(self) -> int:
        """Packets counted by the `counter drop` of the agent's forward chain: traffic of a
        bound inside endpoint with no live pinhole."""
        argv = ["nft", "-j", "list", "chain", "inet", "sipwall", "forward"]
        done = self._lab().run("gw", argv, timeout=10, check=False)
        if done.returncode != 0:
            raise DemoFailure(f"cannot read the agent's table: {done.stderr.strip()[-200:]}")
        dropped = 0
        for item in json.loads(done.stdout).get("nftables", []):
            exprs = item.get("rule", {}).get("expr", [])
            if any("drop" in e for e in exprs):
                dropped += sum(e["counter"]["packets"] for e in exprs if "counter" in e)
        return dropped

    # -- the whole run ---------------------------------------------------------------------

    def run_calls(self) -> None:
        alice, carol = self.phones()
        with alice, carol:
            # alice registers as soon as baresip starts, before our control connection
            # exists: ask for the registration state instead of waiting for the event
            _deadline_poll("alice registered", 15, alice.registered)
            self.say(f"alice registered sip:alice@{DOMAIN} through the ALG")
            self.checkpoint()
            carol_aor = f"sip:carol@{self._lab().address('carol')}"
            self.call(1, alice, carol, carol_aor)
            self.checkpoint()
            self.call(2, carol, alice, f"sip:alice@{DOMAIN}")

    def keep_logs(self) -> None:
        if self.lab is None:
            return
        logs = self.lab.dir / "logs"
        if logs.is_dir():
            shutil.copytree(logs, self.out / "logs", dirs_exist_ok=True)


# --- the report --------------------------------------------------------------------------


def read_pcap(path: Path) -> list[Packet]:
    """Every UDP packet of a capture, SIP ones labelled (tshark)."""
    fields = ["frame.time_epoch", "ip.src", "udp.srcport", "ip.dst", "udp.dstport"]
    fields += ["sip.Method", "sip.Status-Line", "sip.CSeq.method"]
    argv = ["tshark", "-r", str(path), "-n", "-Y", "udp && !icmp", "-T", "fields"]
    argv += ["-E", "separator=|", "-E", "occurrence=f"]
    for f in fields:
        argv += ["-e", f]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise DemoFailure(f"tshark cannot read {path}: {done.stderr.strip()[-300:]}")
    packets = []
    for line in done.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != len(fields) or not parts[1]:
            continue
        t, src, sport, dst, dport, method, status, cseq = parts
        label = method
        if status:
            label = status.removeprefix("SIP/2.0 ") + (f" ({cseq})" if cseq else "")
        packets.append(Packet(float(t), src, int(sport), dst, int(dport), label))
    return packets


def icmp_unreachable(path: Path, since: float) -> int:
    """ICMP port-unreachable messages in a capture after `since` (epoch)."""
    argv = ["tshark", "-r", str(path), "-n", "-Y", f"icmp.type == 3 && frame.time_epoch >= {since}"]
    argv += ["-T", "fields", "-e", "frame.number"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return len(done.stdout.split())


def ladder(packets: Sequence[Packet], start: float, end: float, t0: float) -> list[str]:
    return [
        f"  {p.t - t0:7.3f}  {p.src}:{p.sport} -> {p.dst}:{p.dport}  {p.sip}"
        for p in packets
        if p.sip and start <= p.t <= end
    ]


def media_flows(packets: Sequence[Packet], start: float, end: float) -> list[str]:
    flows: dict[tuple[str, int, str, int], int] = {}
    for p in packets:
        if not p.sip and start <= p.t <= end:
            key = (p.src, p.sport, p.dst, p.dport)
            flows[key] = flows.get(key, 0) + 1
    return [f"  {s}:{sp} -> {d}:{dp}  {n} packets" for (s, sp, d, dp), n in sorted(flows.items())]


def _port_text(port: int | None) -> str:
    return "*" if port is None else str(port)


def _tone_line(phone: str, expect: int, got: Tone | str) -> tuple[str, bool]:
    if isinstance(got, str):
        return f"  {phone:<6} heard: nothing usable ({got})", False
    ok = abs(got.frequency - expect) < TONE_TOLERANCE_HZ and got.purity > MIN_PURITY
    verdict = "ok" if ok else f"WRONG (expected {expect} Hz)"
    return (
        f"  {phone:<6} heard {got.frequency:7.1f} Hz  purity {got.purity:.2f}  "
        f"level {got.rms_dbfs:5.1f} dBFS  -> {verdict}",
        ok,
    )


def report(demo: Demo, t0: float) -> tuple[list[str], list[str]]:
    """(report lines, problems found)."""
    problems = list(demo.problems)
    inside = read_pcap(demo.out / "inside.pcap")
    outside = read_pcap(demo.out / "outside.pcap")
    lines: list[str] = []
    first_dial = demo.calls[0].t_dial if demo.calls else time.time()
    reg = ladder(inside, t0, first_dial, t0)
    lines += ["", "== registration (inside, gw lan0)", *(reg or ["  (no SIP seen)"])]
    tones = {"alice": CAROL_HZ, "carol": ALICE_HZ}
    for i, call in enumerate(demo.calls):
        end = demo.calls[i + 1].t_dial if i + 1 < len(demo.calls) else call.t_end
        talk_end = call.t_hangup or end
        lines += ["", f"== call {call.number}: {call.caller} -> {call.uri}"]
        for side, packets in (("inside, gw lan0", inside), ("outside, gw wan0", outside)):
            steps = ladder(packets, call.t_dial, end, t0)
            lines += [f"-- SIP ladder ({side}); seconds since the demo started", *steps]
            if not steps and call.failure is None:
                problems.append(f"call {call.number}: no SIP seen on the {side} side")
            flows = media_flows(packets, call.t_dial, talk_end)
            lines += [f"-- media ({side}) until the hangup", *(flows or ["  (none)"])]
        if call.failure is not None:
            lines.append(f"-- FAILED: {call.failure}")
            continue
        lines.append("-- agent bindings during the call (sipwall ctl bindings)")
        rows = [
            [
                b["binding_id"],
                b["internal"],
                f"{b['external_address']}:{'/'.join(map(str, b['external_ports']))}",
                str(b["counters"]["packets"]),
                str(b["counters"]["bytes"]),
            ]
            for b in call.bindings
        ]
        headers = ["BINDING", "INSIDE", "PUBLIC", "PACKETS", "BYTES"]
        lines += ["  " + row for row in table(headers, rows).splitlines()]
        lines.append("-- agent pinholes during the call (sipwall ctl rules)")
        rows = [
            [
                r["rule_id"],
                r["binding_id"],
                r["direction"],
                f"{r['remote_address']}:{_port_text(r['remote_port'])}",
                str(r["counters"]["packets"]),
                str(r["counters"]["bytes"]),
            ]
            for r in call.rules
        ]
        headers = ["RULE", "BINDING", "DIRECTION", "REMOTE", "PACKETS", "BYTES"]
        lines += ["  " + row for row in table(headers, rows).splitlines()]
        if not call.bindings or not call.rules:
            problems.append(f"call {call.number}: the agent held no bindings/pinholes")
        elif not any(r["counters"]["packets"] for r in call.rules):
            problems.append(f"call {call.number}: no pinhole counted a packet")
        lines.append("-- what each phone heard")
        for phone in (call.caller, call.callee):
            text, ok = _tone_line(phone, tones[phone], call.heard.get(phone, "not analysed"))
            lines.append(text)
            if not ok:
                problems.append(f"call {call.number}: {phone} did not hear {tones[phone]} Hz")
        lines += ["-- after the hangup"]
        lines.append(
            f"  agent: {call.left_bindings} bindings, {call.left_rules} pinholes "
            "(sipwall ctl bindings/rules)"
        )
        lines += _late_lines(call, inside, outside, demo.out, problems)
    return lines, problems


def _late_lines(
    call: CallResult,
    inside: Sequence[Packet],
    outside: Sequence[Packet],
    out: Path,
    problems: list[str],
) -> list[str]:
    if call.late_target is None or call.late_source is None or call.late_inside is None:
        return ["  late RTP: not tested"]
    (tip, tport), (sip, sport), (iip, iport) = call.late_target, call.late_source, call.late_inside
    since = call.late_sent_at - 0.01
    arrived = [
        p for p in outside if p.t >= since and (p.dst, p.dport) == (tip, tport) and p.src == sip
    ]
    # only the late datagrams themselves (their source, within a short window): the
    # next call may reuse the same inside media port
    leaked = [
        p
        for p in inside
        if since <= p.t <= since + 2.0
        and (p.dst, p.dport) == (iip, iport)
        and (p.src, p.sport) == (sip, sport)
    ]
    unreachable = icmp_unreachable(out / "outside.pcap", since)
    lines = [
        f"  late RTP: {LATE_PACKETS} datagrams {sip}:{sport} -> former binding {tip}:{tport}",
        f"    seen arriving on gw wan0: {len(arrived)};  forwarded to {iip}:{iport} on gw lan0: "
        f"{len(leaked)};  received by alice: {call.late_received};  "
        f"ICMP port unreachable back to carol: {unreachable}",
        f"    agent's forward chain `counter drop` (no live pinhole): +{call.late_dropped}",
    ]
    if not arrived:
        problems.append(f"call {call.number}: the late RTP was not seen on the outside")
    if leaked or call.late_received:
        problems.append(f"call {call.number}: late RTP after hangup reached the inside")
    else:
        lines.append("    -> dropped: nothing reached the inside")
    return lines


def run(out: Path, lab_name: str, say: Say, checkpoint: Callable[[], None]) -> tuple[bool, str]:
    """Run the whole demo; (passed, summary). Always tears the lab down; raises only
    Interrupted (after teardown)."""
    t0 = time.time()
    demo = Demo(out, lab_name, say, checkpoint)
    failure: str | None = None
    lines: list[str] = []
    problems: list[str] = []
    try:
        demo.build()
        demo.start_captures()
        demo.start_agent_and_alg()
        demo.run_calls()
    except (DemoFailure, PhoneError, st.LabError, subprocess.SubprocessError, OSError) as exc:
        failure = str(exc)
    finally:
        if demo.lab is not None:
            try:
                if demo.lab.state().processes:
                    demo.stop_captures()
                    demo.stop_daemons()
                demo.keep_logs()
            finally:
                say(f"tearing lab {lab_name} down")
                demo.lab.close()
    if demo.calls and (out / "inside.pcap").exists() and (out / "outside.pcap").exists():
        try:
            lines, problems = report(demo, t0)
        except DemoFailure as exc:
            problems.append(str(exc))
    for line in lines:
        say(line)
    if lines:
        (out / "report.txt").write_text("\n".join(lines).lstrip("\n") + "\n")
    left = [n for n in build.our_namespaces() if st.ns_lab(n) == lab_name]
    if left or st.lab_dir(lab_name).exists():
        problems.append(f"left behind: {left or st.lab_dir(lab_name)}")
    if failure is None and len(demo.calls) < 2:
        failure = "the calls did not run"
    say("")
    say(f"output: {out}/ (inside.pcap, outside.pcap, report.txt, recordings/, logs/)")
    for problem in problems:
        say(f"problem: {problem}")
    if failure is not None:
        return False, failure + (f" (and {len(problems)} more problems)" if problems else "")
    if problems:
        return False, problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    return True, "2 calls, tones heard both ways, nothing left open"
