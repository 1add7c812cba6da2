"""The `provider` scenario: sipwall in front of a real SIP provider (Kamailio).

Topology (labs/topologies/provider.toml): alice 10.77.0.10 inside; the gateway 10.77.0.1 |
203.0.113.1 runs the filter agent and the ALG; carol 203.0.113.20 outside; the provider
198.51.100.10 behind the ISP router 203.0.113.254 | 198.51.100.1.

What `ProviderLab` sets up on a built lab:

* Kamailio as the registrar and proxy of `provider.example` (labs/kamailio/provider.cfg)
  in the provider namespace, started through the lab (so teardown stops it), in the
  foreground with its pid file and runtime directory in the lab directory;
* the agent and the ALG in the gateway namespace, as `sipwall lab demo` starts them
  (labs.demo: lab PKI, FCP on 127.0.0.1, public pool 203.0.113.1), with the ALG's default
  upstream (outbound proxy) being the provider: requests from the inside for other domains
  — alice's REGISTER and her calls — go there, with inside addresses masked;
* phones: alice registers `sip:alice@provider.example` with the ALG (10.77.0.1) as her
  outbound proxy; carol registers `sip:carol@provider.example` at the provider directly.
  Both authenticate to the provider with their own passwords (USERS, as in provider.cfg).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcp.certs import generate_lab_pki, issue_sip, write_lab_pki, write_pair
from labs import build
from labs.baresip import Phone, PhoneConfig
from labs.demo import GW_INSIDE, GW_OUTSIDE, Demo, DemoFailure, write_gateway_configs
from labs.kamailio_tls import kamailio_tls_cfg
from labs.netns import poll_until

SCENARIO = "provider"
REPO = Path(__file__).resolve().parents[1]
PROVIDER_CFG = Path(__file__).resolve().parent / "kamailio" / "provider.cfg"
PROVIDER = "198.51.100.10"
DOMAIN = "provider.example"
CTL = "udp:127.0.0.1:2046"  # provider.cfg's ctl binrpc socket, inside the namespace
USERS = {u: f"{u}-secret" for u in ("alice", "bob", "carol", "dave")}  # as provider.cfg
TONES = {"alice": 440, "bob": 550, "carol": 660, "dave": 770}
INSIDE_USERS = frozenset({"alice", "bob"})


class ProviderLabError(DemoFailure):
    """Something in the provider scenario did not start or answer in time (a DemoFailure:
    the demo's process helpers used here raise those)."""


def wait_for(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """`labs.netns.poll_until`, raising ProviderLabError at the deadline."""
    return poll_until(what, timeout, probe, ProviderLabError)


@dataclass(frozen=True)
class Registered:
    """One contact of the provider's location service (`kamcmd ul.dump`)."""

    aor: str
    contact: str
    received: str | None


@dataclass
class ProviderLab:
    """`tls`: SIP over TLS instead of UDP between alice and sipwall's inside and between
    sipwall's outside and the provider (5061 everywhere; every client checks the server's
    certificate against the lab CA). sipwall then reaches the trunk by name:
    `provider.example`, resolved with the provider's DNS server, and proven by the
    provider's certificate, which names only that domain. carol stays on UDP."""

    lab: build.RunningLab
    work: Path
    tls: bool = False
    _demo: Demo | None = None
    _kamailio: subprocess.Popen[bytes] | None = None
    _dns: subprocess.Popen[bytes] | None = None
    phones: dict[str, Phone] = field(default_factory=dict)

    # -- daemons ------------------------------------------------------------------------

    def start(self) -> None:
        """Kamailio, then the agent and the ALG (configs written into `work`)."""
        self.work.mkdir(parents=True, exist_ok=True)
        pki = self.work / "pki"
        lab_pki = generate_lab_pki(["127.0.0.1"], ["alg-1", "ctl"])
        write_lab_pki(pki, lab_pki)
        sip_tls = None
        upstream = f"{PROVIDER}:5060"
        nameservers: tuple[str, ...] = ()
        if self.tls:
            # SIP certificates from the same lab CA: sipwall's for both its addresses
            # (alice connects to the inside one, the provider to the outside one to reach
            # alice), the provider's for its own
            gw = issue_sip(lab_pki.ca, [GW_OUTSIDE, GW_INSIDE])
            cert, key = write_pair(pki, "sip-gw", gw)
            # the provider's names only its domain: sipwall finds the trunk by that name
            # (the lab's DNS server) and checks the certificate against it (RFC 5922)
            write_pair(pki, "sip-provider", issue_sip(lab_pki.ca, [DOMAIN]))
            sip_tls = (cert, key, pki / "ca.pem")
            upstream = f"{DOMAIN};transport=tls"  # its SRV record names the port
            nameservers = (PROVIDER,)
            self.start_dns()
        self.start_kamailio(pki)
        write_gateway_configs(
            self.work,
            pki,
            upstream=upstream,
            alg_state=self.work / "alg-state",
            outside_tls=sip_tls,
            inside_tls=sip_tls,
            nameservers=nameservers,
        )
        # the demo's process handling: started through the lab, waited for, stopped
        self._demo = Demo(
            self.work, self.lab.name, say=lambda _: None, lab=self.lab, work=self.work
        )
        self._demo.start_agent_and_alg()

    def restart_alg(self) -> None:
        """SIGTERM the ALG and start it again: what it must keep (the registrations it
        relayed upstream, the media secret of its tokens) is in `work/alg-state`."""
        assert self._demo is not None
        self._demo.restart_alg()

    def start_dns(self) -> None:
        """The provider's DNS server (labs/dns_server.py) at its address: the SRV record
        of its SIP-over-TLS service and the A record of its domain, so that sipwall can
        reach the trunk by name."""
        argv = [sys.executable, "-m", "labs.dns_server", "--listen", PROVIDER]
        argv += ["--record", f"{DOMAIN}={PROVIDER}"]
        argv += ["--srv", f"_sips._tcp.{DOMAIN}=10,5,5061,{DOMAIN}"]  # RFC 3263 §4.2
        proc = self.lab.spawn("provider", argv, name="dns", cwd=REPO)
        self._dns = proc
        log = self.lab.log_path("provider", "dns")

        def listening() -> bool:
            if proc.poll() is not None:
                raise ProviderLabError(f"dns server exited ({proc.returncode})")
            return log.exists() and "listening" in log.read_text()

        wait_for(f"dns server on {PROVIDER}:53", 10, listening)

    def dns_queries(self) -> list[str]:
        """What the DNS server was asked, as "name TYPE"."""
        log = self.lab.log_path("provider", "dns")
        text = log.read_text() if log.exists() else ""
        return [
            line.removeprefix("query ") for line in text.splitlines() if line.startswith("query ")
        ]

    def start_kamailio(self, pki: Path) -> None:
        rundir = self.work / "kamailio"
        rundir.mkdir(parents=True, exist_ok=True)
        argv = ["kamailio", "-f", str(PROVIDER_CFG), "-P", str(rundir / "kamailio.pid")]
        argv += ["-Y", str(rundir), "-n", "2", "-DD", "-E"]
        if self.tls:
            tls_cfg = rundir / "tls.cfg"
            tls_cfg.write_text(
                kamailio_tls_cfg(
                    pki / "sip-provider.pem",
                    pki / "sip-provider.key",
                    pki / "ca.pem",
                    require_client_cert=False,
                )
            )
            argv += ["-A", "WITH_TLS", "-A", f'TLS_CONFIG="{tls_cfg}"']
        proc = self.lab.spawn("provider", argv, name="kamailio")
        self._kamailio = proc
        log = self.lab.log_path("provider", "kamailio")

        def listening() -> bool:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
                raise ProviderLabError(f"kamailio exited ({proc.returncode}): {tail}")
            done = self.lab.run("provider", ["ss", "-Hunl"], check=False)
            # SIP bound and the ctl socket answering: the workers are up
            return f"{PROVIDER}:5060 " in done.stdout and self.kamcmd("core.uptime") is not None

        wait_for(f"kamailio listening on {PROVIDER}:5060", 20, listening)

    def kamcmd(self, *command: str) -> str | None:
        done = self.lab.run("provider", ["kamcmd", "-s", CTL, *command], timeout=10, check=False)
        return done.stdout if done.returncode == 0 else None

    def stop(self) -> None:
        """Phones, the ALG and the agent, then Kamailio (the lab's teardown would too)."""
        for phone in self.phones.values():
            phone.stop()
        self.phones.clear()
        if self._demo is not None:
            self._demo.stop_daemons()
        if self._kamailio is not None:
            self.lab.stop(self._kamailio)
            self._kamailio = None
        if self._dns is not None:
            self.lab.stop(self._dns)
            self._dns = None

    # -- what the provider and the agent hold -----------------------------------------------

    def registered(self) -> list[Registered]:
        """The provider's location service, from `kamcmd ul.dump` (AOR, Contact,
        Received per binding)."""
        text = self.kamcmd("ul.dump")
        if text is None:
            raise ProviderLabError("kamcmd ul.dump failed")
        found: list[Registered] = []
        aor = ""
        for line in text.splitlines():
            key, _, value = line.strip().partition(":")
            value = value.strip()
            if key == "AoR":
                aor = value
            elif key == "Address":
                found.append(Registered(aor, value, None))
            elif key == "Received" and found and value and value != "[not set]":
                found[-1] = Registered(found[-1].aor, found[-1].contact, value)
        return found

    def provider_log(self) -> str:
        """What Kamailio logged (provider.cfg logs each challenge, REGISTER and call it
        routes, as `provider: ...` lines)."""
        return self.lab.log_path("provider", "kamailio").read_text(errors="replace")

    def agent(self, what: str) -> list[dict[str, Any]]:
        """`sipwall ctl bindings|rules --json` against the gateway's agent."""
        assert self._demo is not None
        return self._demo.ctl(what)

    # -- phones -------------------------------------------------------------------------

    def phone(self, user: str) -> Phone:
        """alice behind sipwall (outbound proxy: the ALG), carol at the provider."""
        if user in self.phones:
            return self.phones[user]
        inside = user in INSIDE_USERS
        proxy = f"sip:{GW_INSIDE}:5060" if inside else f"sip:{PROVIDER}:5060"
        if inside and self.tls:  # alice speaks TLS to sipwall, checking its certificate
            proxy = f"sip:{GW_INSIDE}:5061;transport=tls"
        config = PhoneConfig(
            user,
            self.lab.address(user),
            tone_hz=TONES[user],
            domain=DOMAIN,
            registrar=f"sip:{DOMAIN}",
            outbound_proxy=proxy,
            password=USERS[user],
            register_interval=600,
            rtp_ports=(10000, 10099) if inside else (12000, 12099),
            sip_cafile=self.work / "pki" / "ca.pem" if inside and self.tls else None,
        )
        phone = Phone(self.lab, user, config, self.work / user).start()
        self.phones[user] = phone
        return phone


@contextlib.contextmanager
def running_provider(
    lab: build.RunningLab, keep_logs: Callable[[], Path], *, tls: bool = False
) -> Iterator[ProviderLab]:
    """The provider scenario started on `lab` with carol and alice registered; stopped
    on the way out, whatever happened, after which the lab's logs are copied to the
    directory `keep_logs()` gives (the lab directory goes away with the lab). `tls`: the
    trunk between sipwall and the provider is SIP over TLS."""
    pl = ProviderLab(lab, lab.dir / ("provider-tls" if tls else "provider"), tls=tls)
    try:
        pl.start()
        for user in ("carol", "alice"):
            wait_registered(pl.phone(user))
        yield pl
    finally:
        try:
            pl.stop()
        finally:
            logs = lab.dir / "logs"
            if logs.is_dir():
                shutil.copytree(logs, keep_logs(), dirs_exist_ok=True)


def wait_registered(phone: Phone, timeout: float = 20) -> None:
    wait_for(f"{phone.host} registered", timeout, phone.registered)


def wait_agent_empty(pl: ProviderLab, timeout: float = 15) -> None:
    """Poll until the agent holds no binding and no pinhole (released after a hangup)."""
    wait_for("the agent empty", timeout, lambda: not pl.agent("rules") and not pl.agent("bindings"))
