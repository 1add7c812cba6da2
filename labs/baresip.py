"""A real softphone in a lab namespace: baresip 1.0 (Debian `baresip-core`).

What this build offers, and what we use
---------------------------------------
* microphone: `ausine` (a sine at a chosen frequency; it insists on 48 kHz stereo, so
  `ausrc_srate 48000` / `ausrc_channels 2` and baresip resamples for the codec);
* recording: the 1.0 `aufile` module is a *source* only (no player). The `sndfile` audio
  filter records instead: per call it writes `dump-<time>-dec.wav` (what the phone heard,
  after decoding) and `-enc.wav` (what it sent) into `snd_path`, closing them at hangup;
* speaker: no audio device — `aubridge` with a device name no source reads is a sink;
* control: `ctrl_tcp` (netstring-framed JSON on 127.0.0.1 of the phone's namespace;
  commands from the `menu` module: dial, accept, hangup, quit; call events pushed back).
  We reach it through a socket opened inside the namespace (labs.nsock), never by
  exposing it on a lab address;
* SIP bound to the namespace's address (`sip_listen`, `net_interface`), RTP ports from
  `rtp_ports`; one account line with registrar/outbound proxy/auth when given,
  `answermode=auto` to answer by itself.

`Phone` is a context manager: the process is started through the lab (so `sipwall lab
down` and leftover cleanup stop it too) and stopped — quit, then terminate, then kill — on
success, failure and Ctrl-C.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from labs.nsock import socket_in

MODULES = (
    "g711.so",
    "ausine.so",
    "aubridge.so",
    "sndfile.so",
    "account.so",
    "menu.so",
    "ctrl_tcp.so",
)


class PhoneError(RuntimeError):
    """The softphone did not start, answer or do what it was told in time."""


class Spawner(Protocol):
    """What a phone needs from a lab (labs.build.RunningLab provides it)."""

    def ns(self, host: str) -> str: ...

    def spawn(self, host: str, argv: Sequence[str], *, name: str) -> subprocess.Popen[bytes]: ...

    def forget(self, proc: subprocess.Popen[Any]) -> None: ...


@dataclass(frozen=True)
class PhoneConfig:
    user: str
    address: str  # the namespace's own address to bind SIP and RTP to
    tone_hz: int  # what this phone's microphone plays
    iface: str = "eth0"
    sip_port: int = 5060
    domain: str | None = None  # AOR domain; default: the registrar's host, else `address`
    registrar: str | None = None  # e.g. "sip:198.51.100.10"; None: no REGISTER
    outbound_proxy: str | None = None  # e.g. "sip:10.77.0.1:5060"
    password: str | None = None
    auto_answer: bool = True
    codecs: tuple[str, ...] = ("PCMU",)
    rtp_ports: tuple[int, int] = (10000, 10099)
    ctrl_port: int = 4444
    register_interval: int = 600
    # CA bundle to verify TLS servers with (an outbound proxy with transport=tls)
    sip_cafile: Path | None = None

    def __post_init__(self) -> None:
        if not 10 <= self.tone_hz <= 20000:
            raise ValueError("ausine plays 10..20000 Hz")

    @property
    def aor(self) -> str:
        domain = self.domain or _host_of(self.registrar) or self.address
        return f"sip:{self.user}@{domain}"

    def account_line(self) -> str:
        params = [f"regint={self.register_interval if self.registrar else 0}"]
        if self.outbound_proxy:
            params.append(f'outbound="{self.outbound_proxy}"')
        if self.password is not None:
            params += [f"auth_user={self.user}", f"auth_pass={self.password}"]
        params.append(f"answermode={'auto' if self.auto_answer else 'manual'}")
        params.append(f"audio_codecs={','.join(self.codecs)}")
        return f"<{self.aor}>;" + ";".join(params) + "\n"

    def config_file(self, recordings: Path) -> str:
        lines = [
            "poll_method epoll",
            f"sip_listen {self.address}:{self.sip_port}",
            f"net_interface {self.iface}",
            f"rtp_ports {self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "module_path /usr/lib/baresip/modules",
            *(f"module {m}" for m in MODULES),
            f"audio_source ausine,{self.tone_hz}",
            "audio_player aubridge,nowhere",
            "audio_alert aubridge,nowhere",
            "ausrc_srate 48000",
            "ausrc_channels 2",
            f"snd_path {recordings}",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
        ]
        if self.sip_cafile is not None:
            lines.append(f"sip_cafile {self.sip_cafile}")
        return "\n".join(lines) + "\n"


def _host_of(uri: str | None) -> str | None:
    if not uri:
        return None
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    return rest.split(";")[0].split(":")[0].split("@")[-1] or None


def _netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


class Phone:
    """One baresip process in a lab host, driven over ctrl_tcp."""

    def __init__(self, lab: Spawner, host: str, config: PhoneConfig, workdir: Path) -> None:
        self.lab, self.host, self.config = lab, host, config
        self.dir = workdir
        self.recordings = workdir / "recordings"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._responses: queue.Queue[dict[str, Any]] = queue.Queue()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen_events: list[dict[str, Any]] = []
        self._token = 0

    # lifecycle
    def start(self, timeout: float = 10.0) -> Phone:
        self.recordings.mkdir(parents=True, exist_ok=True)
        (self.dir / "config").write_text(self.config.config_file(self.recordings))
        (self.dir / "accounts").write_text(self.config.account_line())
        (self.dir / "contacts").write_text("")
        self.proc = self.lab.spawn(
            self.host, ["baresip", "-f", str(self.dir)], name=f"baresip-{self.config.user}"
        )
        self._connect(timeout)
        return self

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ns = self.lab.ns(self.host)
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise PhoneError(f"baresip in {self.host} exited ({self.proc.returncode})")
            sock = socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(1.0)
            try:
                sock.connect(("127.0.0.1", self.config.ctrl_port))
                break
            except OSError:
                sock.close()
                if time.monotonic() >= deadline:
                    raise PhoneError(
                        f"baresip ctrl_tcp in {self.host} not up in {timeout}s"
                    ) from None
                time.sleep(0.05)  # polling for the listener, bounded by the deadline
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read, name=f"ctrl-{self.host}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._sock is not None
        buf = b""
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b":" in buf:
                head, _, rest = buf.partition(b":")
                if not head.isdigit():
                    return  # not a netstring stream any more; stop reading
                size = int(head)
                if len(rest) < size + 1:
                    break
                payload, buf = rest[:size], rest[size + 1 :]
                try:
                    msg = json.loads(payload)
                except ValueError:
                    continue
                (self._responses if msg.get("response") else self._events).put(msg)

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            if proc.poll() is None and self._sock is not None:
                try:
                    self._send("quit", "")
                except OSError:
                    pass
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.terminate()
            if proc.poll() is None:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self.lab.forget(proc)

    def __enter__(self) -> Phone:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # commands and events
    def _send(self, command: str, params: str) -> str:
        if self._sock is None:
            raise PhoneError("phone not started")
        self._token += 1
        token = str(self._token)
        msg = {"command": command, "params": params, "token": token}
        self._sock.sendall(_netstring(json.dumps(msg).encode()))
        return token

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        token = self._send(command, params)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                msg = self._responses.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise PhoneError(f"{self.host}: no answer to {command!r} in {timeout}s") from None
            if msg.get("token") == token:
                if not msg.get("ok", False):
                    raise PhoneError(f"{self.host}: {command} {params}: {msg.get('data')}")
                return msg

    def wait_event(self, kind: str | tuple[str, ...], timeout: float = 10.0) -> dict[str, Any]:
        """The next event of type `kind` (CALL_ESTABLISHED, CALL_CLOSED, ...), or of any
        of the types in a tuple (e.g. established or closed, whichever comes first)."""
        kinds = (kind,) if isinstance(kind, str) else kind
        for event in self.seen_events:
            if event.get("type") in kinds and not event.get("_consumed"):
                event["_consumed"] = True
                return event
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self._events.get(timeout=max(left, 0.001))
            except queue.Empty:
                seen = [e.get("type") for e in self.seen_events]
                raise PhoneError(
                    f"{self.host}: no {'/'.join(kinds)} in {timeout}s (saw {seen})"
                ) from None
            self.seen_events.append(event)
            if event.get("type") in kinds:
                event["_consumed"] = True
                return event

    def dial(self, uri: str) -> None:
        self.command("dial", uri)

    def answer(self) -> None:
        self.command("accept")

    def hangup(self) -> None:
        self.command("hangup")

    def registered(self) -> bool:
        """baresip's `reginfo` lists each account as OK (registered) or zzz (not yet)."""
        info = re.sub(r"\x1b\[[0-9;]*m", "", str(self.command("reginfo").get("data", "")))
        return re.search(r"\bOK\b", info) is not None

    # recordings
    def heard(self) -> Path | None:
        """The newest recording of what this phone heard (decoded audio), if any."""
        files = sorted(self.recordings.glob("dump-*-dec.wav"), key=lambda p: p.stat().st_mtime)
        return files[-1] if files else None

    def wait_heard(self, seconds: float, timeout: float = 10.0) -> Path:
        """Wait until the current recording holds `seconds` of audio (8 kHz 16-bit mono
        for PCMU/PCMA; the file grows as packets are decoded)."""
        need = 44 + int(seconds * 8000 * 2)
        deadline = time.monotonic() + timeout
        while True:
            path = self.heard()
            if path is not None and path.stat().st_size >= need:
                return path
            if time.monotonic() >= deadline:
                size = path.stat().st_size if path else 0
                raise PhoneError(f"{self.host}: recording has {size} bytes, need {need}")
            time.sleep(0.05)  # polling file growth, bounded by the deadline
