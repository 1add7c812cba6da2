"""Running a sipwall ALG process and sipp peers on loopback for tests.

Everything binds to 127.0.0.0/8 addresses with ports the OS reports free, every process
is stopped (terminate, then kill) by the context managers, and nothing else on the
machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).parent / "sipp"


def free_port(host: str) -> int:
    """A port free for both UDP and TCP on `host`."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError(f"no free port on {host}")


def stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    if process.stdout is not None:
        process.stdout.close()


@dataclass(frozen=True)
class RunningAlg:
    inside: tuple[str, int]
    outside: tuple[str, int]
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def alg_process(
    workdir: Path,
    extra_toml: str = "",
    mode: str = "stateful",
    *,
    inside_toml: str = "",
    outside_toml: str = "",
    proxy_toml: str = "",
) -> Iterator[RunningAlg]:
    """The ALG on 127.0.0.1 (inside) and 127.0.0.17 (outside); `inside_toml`,
    `outside_toml` and `proxy_toml` are more options of those sections (e.g. TLS)."""
    inside = ("127.0.0.1", free_port("127.0.0.1"))
    outside = ("127.0.0.17", free_port("127.0.0.17"))
    config = workdir / "alg.toml"
    config.write_text(
        f'[inside]\naddress = "{inside[0]}"\nport = {inside[1]}\n{inside_toml}'
        f'[outside]\naddress = "{outside[0]}"\nport = {outside[1]}\n{outside_toml}'
        f'[proxy]\nmode = "{mode}"\ninside_networks = ["127.0.0.0/28"]\n{proxy_toml}'
        f'[log]\nlevel = "WARNING"\n' + extra_toml
    )
    log = workdir / "alg.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "sipwall", "alg", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until ready or exit
        if b"ready" not in line:
            raise RuntimeError(f"ALG did not start: {line!r} {log.read_text()}")
        yield RunningAlg(inside, outside, process, log)
    finally:
        stop(process)


@dataclass(frozen=True)
class SippResult:
    returncode: int
    successful: int
    failed: int
    output: str


def _counter(output: str, name: str) -> int:
    for line in output.splitlines():
        if line.strip().startswith(name):
            return int(line.split("|")[-1].strip() or 0)
    return -1


@contextlib.contextmanager
def sipp_uas(
    scenario: str, host: str, workdir: Path, port: int | None = None
) -> Iterator[tuple[str, int]]:
    port = port or free_port(host)
    process = subprocess.Popen(
        [
            "sipp",
            "-sf",
            str(SCENARIOS / scenario),
            "-i",
            host,
            "-p",
            str(port),
            "-nostdin",
            "-trace_err",
            "-error_file",
            str(workdir / f"uas-{port}.err"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait until sipp's socket is bound
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    break
            if process.poll() is not None:
                raise RuntimeError("sipp UAS exited early")
            time.sleep(0.02)
        yield host, port
    finally:
        stop(process)


def sipp_uac(
    scenario: str,
    target: tuple[str, int],
    proxy: tuple[str, int],
    workdir: Path,
    *,
    calls: int,
    rate: int,
    service: str = "bob",
    extra: tuple[str, ...] = (),
    timeout: float = 60.0,
    local: tuple[str, int] | None = None,
) -> SippResult:
    host, port = local or ("127.0.0.10", free_port("127.0.0.10"))
    done = subprocess.run(
        [
            "sipp",
            "-sf",
            str(SCENARIOS / scenario),
            f"{target[0]}:{target[1]}",
            "-rsa",
            f"{proxy[0]}:{proxy[1]}",
            "-i",
            host,
            "-p",
            str(port),
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-d",
            "100",
            "-s",
            service,
            "-nostdin",
            "-timeout",
            f"{int(timeout)}s",
            "-trace_err",
            "-error_file",
            str(workdir / f"uac-{port}.err"),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=timeout + 15,
        check=False,
    )
    output = done.stdout + done.stderr
    return SippResult(
        done.returncode,
        _counter(output, "Successful call"),
        _counter(output, "Failed call"),
        output,
    )
