"""CPU per call of the proxy core, without the network (issue #4).

Feeds `ProxyCore` — built by `alg.assemble` from exactly the configuration the lab
benchmark (`bench/proxy_cps.py`) gives `sipwall alg` — the message sequence of one call of
the reference sipp scenarios (labs/sipp/uac_sdp.xml, uas_sdp.xml), byte for byte as sipp
writes it:

    UAC -> INVITE (SDP)                 proxy -> 100 to the UAC, INVITE to the UAS
    UAS -> 100, 180, 200 (SDP)          proxy -> 180, 200 to the UAC
    UAC -> ACK, BYE (Route set)         proxy -> ACK, BYE to the UAS
    UAS -> 200 (BYE)                    proxy -> 200 to the UAC

with distinct Call-IDs, calls started at `--rate` per second of a virtual clock, each
call 1 s long as in the lab, and the core's timers fired when due (the transactions'
Timer L/M/J/K run out 5-32 s later, so the transaction tables reach their steady size).
The peers' answers are built from what the proxy sent, the way sipp builds them
([last_Via:], [last_Record-Route:], the Route set from the 200's Record-Route); their
cost is not counted: only the time spent inside the measured calls is (process CPU
time), with the core's `get_timer()` after each, which the shell calls to re-arm its
loop timer, and the garbage collector's ticks (alg.main.collector_policy, every 0.05 s
of the virtual clock), which the process spends on the calls too. `--call-seconds` sets
how many calls are up at once (rate x duration).

`--mode anchored` is the stateful mode with media anchoring (`[media]`, issue #5): every
call reserves a binding when its offer crosses, enables the pinholes when the answer
does and releases them at BYE, against the in-memory FCP backend answering at once, so
only the ALG's share is timed (the agent's is `bench/fcp_latency.py`'s; the gRPC client's
is in neither). Each call offers a media port of its own, as uac_sdp_ports.xml does.

`--shell` measures through the asyncio shell as well (`AlgShell.deliver`: the Endpoint,
the core, the dispatch to the side's socket and the timer re-arming), with transports that
only count the datagrams: everything `sipwall alg` runs per datagram except the syscalls.

    .venv/bin/python bench/proxy_core_cpu.py                 # stateful and stateless
    .venv/bin/python bench/proxy_core_cpu.py --mode anchored --profile 25
    .venv/bin/python bench/proxy_core_cpu.py --mode stateful --profile 25
    .venv/bin/python bench/proxy_core_cpu.py --mode stateful --calls 40000 --rate 3200 --gc-pauses
    LAST line: proxy_core_us_per_call: <stateful core us/call> us
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ipaddress
from collections.abc import Coroutine

from alg.aio import AlgShell
from alg.assemble import assemble
from alg.config import load_config
from alg.main import HEAP_TICK_SECONDS, collector_policy
from alg.media.actions import AgentResult
from alg.media.perform import OwnedBackend, perform
from alg.proxy import ProxyCore
from alg.proxy_model import Endpoint, Send
from fcp.memory_backend import MemoryBackend, MemoryBackendConfig
from fcp.types import IpVersion, Pool
from labs.proxy_lab import sipwall_config

UAC = Endpoint("inside", "UDP", "10.77.0.10", 5060)
UAS = Endpoint("outside", "UDP", "203.0.113.20", 5060)
PID = 4242  # sipp's [pid]
CALL_SECONDS = 1.0  # the scenario's <pause/> (-d 1000)

_UAC_SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 10.77.0.10\r\ns=-\r\n"
    b"c=IN IP4 10.77.0.10\r\nt=0 0\r\nm=audio %d RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
_UAS_SDP = (
    b"v=0\r\no=user2 53655765 2353687637 IN IP4 203.0.113.20\r\ns=-\r\n"
    b"c=IN IP4 203.0.113.20\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def _headers(data: bytes) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")[1:]


def _last(data: bytes, name: bytes) -> list[bytes]:
    """sipp's [last_Name:]: every header line of that name, as received."""
    prefix = name.lower() + b":"
    return [line for line in _headers(data) if line.lower().startswith(prefix)]


def _message(first: bytes, lines: list[bytes], body: bytes = b"") -> bytes:
    return b"\r\n".join([first, *lines, b"Content-Length: %d" % len(body), b"", body])


class Call:
    """One sipp call: builds each side's next message from what the proxy sent."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.call_id = f"{number}-{PID}@10.77.0.10".encode()
        self.from_ = b"From: sipp <sip:sipp@10.77.0.10:5060>;tag=%dSIPpTag00%d" % (PID, number)
        self.to = b"To: service <sip:service@203.0.113.20:5060>"
        self.uas_tag = b";tag=%dSIPpTag01%d" % (PID, number)

    def _via(self, index: int) -> bytes:
        return b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-%d-%d-%d" % (
            PID,
            self.number,
            index,
        )

    def invite(self) -> bytes:
        lines = [
            self._via(0),
            self.from_,
            self.to,
            b"Call-ID: " + self.call_id,
            b"CSeq: 1 INVITE",
            b"Contact: <sip:sipp@10.77.0.10:5060>",
            b"Max-Forwards: 70",
            b"Subject: kbase",
            b"Content-Type: application/sdp",
        ]
        sdp = _UAC_SDP % (6000 + 2 * (self.number % 20000))  # a media port per call
        return _message(b"INVITE sip:service@203.0.113.20:5060 SIP/2.0", lines, sdp)

    def uas_responses(self, invite: bytes) -> list[bytes]:
        """100, 180, 200 (SDP) to the INVITE the UAS received."""
        common = _last(invite, b"Via")
        record_route = _last(invite, b"Record-Route")
        from_, to = _last(invite, b"From"), _last(invite, b"To")
        ident = _last(invite, b"Call-ID") + _last(invite, b"CSeq")
        contact = [b"Contact: <sip:203.0.113.20:5060;transport=UDP>"]
        tagged = [to[0] + self.uas_tag]
        return [
            _message(b"SIP/2.0 100 Trying", common + from_ + to + ident),
            _message(
                b"SIP/2.0 180 Ringing",
                common + record_route + from_ + tagged + ident + contact,
            ),
            _message(
                b"SIP/2.0 200 OK",
                common
                + record_route
                + from_
                + tagged
                + ident
                + contact
                + [b"Content-Type: application/sdp"],
                _UAS_SDP,
            ),
        ]

    def in_dialog(self, ok: bytes, method: bytes, index: int, cseq: int) -> bytes:
        """ACK or BYE: [next_url] is the 200's Contact, [routes] its Record-Route
        reversed (RFC 3261 §12.1.2: the UAC's route set)."""
        entries: list[bytes] = []
        for line in _last(ok, b"Record-Route"):
            entries += [part.strip() for part in line.split(b":", 1)[1].split(b",")]
        lines = [self._via(index)]
        if entries:
            lines.append(b"Route: " + b", ".join(reversed(entries)))
        lines += [
            self.from_,
            self.to + self.uas_tag,
            b"Call-ID: " + self.call_id,
            b"CSeq: %d %s" % (cseq, method),
            b"Contact: <sip:sipp@10.77.0.10:5060>",
            b"Max-Forwards: 70",
        ]
        return _message(method + b" sip:203.0.113.20:5060;transport=UDP SIP/2.0", lines)

    @staticmethod
    def ok_to(request: bytes) -> bytes:
        lines = (
            _last(request, b"Via")
            + _last(request, b"From")
            + _last(request, b"To")
            + _last(request, b"Call-ID")
            + _last(request, b"CSeq")
        )
        return _message(b"SIP/2.0 200 OK", lines)


class _Counting(asyncio.DatagramTransport):
    """A socket that only counts what is sent (the syscall is not what is measured)."""

    def __init__(self, sink: list[Send], side: str) -> None:
        super().__init__()
        self.sink = sink
        self.side = side

    def sendto(self, data: bytes, addr: Any = None) -> None:
        host, port = addr
        self.sink.append(Send(Endpoint(self.side, "UDP", host, port), data))  # type: ignore[arg-type]


IDEMPOTENCY_SECONDS = 2.0


class Driver:
    """Feeds one core (directly or through the shell) and accounts its CPU time."""

    def __init__(self, mode: str, workdir: Path, *, shell: bool) -> None:
        path = workdir / f"alg-{mode}.toml"
        anchored = mode == "anchored"
        path.write_text(
            sipwall_config("stateful") + ANCHORED_CONFIG if anchored else sipwall_config(mode)
        )
        self.config = load_config(str(path))
        self.agent: OwnedBackend | None = None
        if anchored:
            public = (ipaddress.IPv4Address("203.0.113.1"),)
            pool = Pool("v4", IpVersion.V4, public, 20000, 59999)
            # The fake agent on the virtual clock, keeping its answers for retries 2 s
            # (the ALG's deadline per attempt): with the wall clock and the real agent's
            # 600 s, its records grew with --calls, and the ALG's timed share grew with
            # them (a bigger heap for its collections and caches): 1,000 us/call at
            # 3,000 calls, 1,850 at 10,000. Now 1,057 at 2,000 and 1,131 at 8,000.
            limits = MemoryBackendConfig(
                (pool,),
                port_reuse_delay=1.0,
                max_bindings_per_owner=1_000_000,
                idempotency_ttl=IDEMPOTENCY_SECONDS,
            )
            backend = MemoryBackend(limits, clock=lambda: self.now)
            self.agent = OwnedBackend(backend, "alg-1")
        self.services = assemble(self.config)
        self.core: ProxyCore = self.services.core
        self.now = 0.0
        self.cpu_ns = 0
        self.heap = collector_policy()
        self.next_collection = HEAP_TICK_SECONDS
        self.messages = 0
        self.shell: AlgShell | None = None
        self.profiler: cProfile.Profile | None = None  # on only while the ALG is timed
        self._sent: list[Send] = []
        if shell:
            loop = asyncio.get_running_loop()
            loop.time = lambda: self.now  # type: ignore[method-assign]  # the virtual clock
            self.shell = AlgShell(self.config, self.core)
            self.shell.udp = {
                "inside": _Counting(self._sent, "inside"),
                "outside": _Counting(self._sent, "outside"),
            }

    def feed(self, data: bytes, source: Endpoint) -> list[Send]:
        self.messages += 1
        if self.shell is None:
            start = self._start()
            out = self.core.receive(data, source, self.now)
            self.core.get_timer()  # the shell re-arms its timer after every datagram
            self._stop(start)
            return out + self._anchor()
        self._sent.clear()
        start = self._start()
        self.shell.deliver(data, source)
        self._stop(start)
        return list(self._sent)

    def _start(self) -> int:
        if self.profiler is not None:
            self.profiler.enable()
        return time.process_time_ns()

    def _stop(self, start: int) -> None:
        self.cpu_ns += time.process_time_ns() - start
        if self.profiler is not None:
            self.profiler.disable()

    def _anchor(self) -> list[Send]:
        """Answer the media core's agent actions (untimed) and time what it does with the
        answers: the parked INVITE, rendered with the public binding, is sent then."""
        media = self.core.media
        out: list[Send] = []
        if self.agent is None or media is None:
            return out
        while actions := media.take_actions():
            for action in actions:
                result = _at_once(perform(action, self.agent))
                start = self._start()
                out += self.core.media_result(result, self.now)
                self.core.get_timer()  # as the shell does after each answer
                self._stop(start)
        return out

    def advance(self, now: float) -> None:
        self.now = now
        while self.next_collection <= now:  # the loop's collector ticks, on our clock
            start = self._start()
            self.heap.tick(self.next_collection)
            self._stop(start)
            self.next_collection += HEAP_TICK_SECONDS
        while (deadline := self.core.get_timer()) is not None and deadline <= now:
            start = self._start()
            if self.shell is None:
                self.core.handle_timer(deadline)
            else:
                self.shell._on_timer()  # what the loop's timer calls
            self._stop(start)
            self._anchor()


ANCHORED_CONFIG = """
[media]
enabled = true
[[media.agents]]
name = "gw1"
address = "127.0.0.1:7700"
"""


def _at_once(call: Coroutine[Any, Any, AgentResult]) -> AgentResult:
    """Run a coroutine that never suspends (the in-memory backend answers at once)."""
    try:
        call.send(None)
    except StopIteration as done:
        result: AgentResult = done.value
        return result
    call.close()
    raise RuntimeError("the in-memory backend suspended")


def _to(out: list[Send], endpoint: Endpoint) -> list[bytes]:
    return [send.data for send in out if send.to.host == endpoint.host]


def run(
    mode: str,
    calls: int,
    rate: float,
    *,
    shell: bool,
    profile: int = 0,
    call_seconds: float = CALL_SECONDS,
) -> float:
    """CPU microseconds per call over `calls` calls; checks every call completed."""
    with tempfile.TemporaryDirectory(prefix="proxy-core-cpu-") as tmp:
        driver = Driver(mode, Path(tmp), shell=shell)
        driver.heap.install()  # as `sipwall alg` does once it is set up
        profiler = cProfile.Profile() if profile else None
        driver.profiler = profiler
        # Calls in flight: (time of the next step, step, call, state)
        pending: list[tuple[float, int, Call, bytes]] = []
        completed = 0
        for number in range(1, calls + 1):
            start = number / rate
            driver.advance(start)
            call = Call(number)
            out = driver.feed(call.invite(), UAC)
            (forwarded,) = _to(out, UAS)
            ok = b""
            for response in call.uas_responses(forwarded):
                out = driver.feed(response, UAS)
                if response.startswith(b"SIP/2.0 200"):
                    (ok,) = _to(out, UAC)
            out = driver.feed(call.in_dialog(ok, b"ACK", 1, 1), UAC)
            if len(_to(out, UAS)) != 1:
                raise SystemExit(f"{mode}: the ACK of call {number} was not forwarded")
            pending.append((start + call_seconds, number, call, ok))
            while pending and pending[0][0] <= start:
                _, _, done, done_ok = pending.pop(0)
                out = driver.feed(done.in_dialog(done_ok, b"BYE", 2, 2), UAC)
                (bye,) = _to(out, UAS)
                out = driver.feed(Call.ok_to(bye), UAS)
                if len(_to(out, UAC)) == 1:
                    completed += 1
        for _, _, done, done_ok in pending:
            out = driver.feed(done.in_dialog(done_ok, b"BYE", 2, 2), UAC)
            (bye,) = _to(out, UAS)
            if len(_to(driver.feed(Call.ok_to(bye), UAS), UAC)) == 1:
                completed += 1
        driver.advance(driver.now + 64.0)  # every transaction ends, its timers fire
        if profiler is not None:
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(profile)
        if completed != calls:
            raise SystemExit(f"{mode}: {calls - completed} calls did not complete")
        if driver.core.transaction_count:
            raise SystemExit(f"{mode}: {driver.core.transaction_count} transactions left")
        driver.services.close()
        driver.heap.uninstall()
        return driver.cpu_ns / 1000 / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode", choices=("stateful", "stateless", "anchored", "both"), default="both"
    )
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=1000.0, help="virtual calls/sec")
    parser.add_argument("--rounds", type=int, default=3, help="the best round is reported")
    parser.add_argument("--profile", type=int, default=0, help="print the top N by tottime")
    parser.add_argument(
        "--call-seconds",
        type=float,
        default=CALL_SECONDS,
        help="call duration (virtual): rate x this many calls are up at once",
    )
    parser.add_argument(
        "--gc-pauses",
        action="store_true",
        help="also print the collector's pauses (gc.callbacks): count, p50, p99, max",
    )
    args = parser.parse_args()
    modes = ("stateful", "stateless") if args.mode == "both" else (args.mode,)
    pauses: list[float] = []
    if args.gc_pauses:
        started = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.append(time.perf_counter() - started[0])

        gc.callbacks.append(timed)

    async def measure(mode: str, shell: bool) -> float:  # the shell needs a running loop
        rounds = 1 if args.profile else args.rounds
        return min(
            run(
                mode,
                args.calls,
                args.rate,
                shell=shell,
                profile=args.profile,
                call_seconds=args.call_seconds,
            )
            for _ in range(rounds)
        )

    results: dict[tuple[str, bool], float] = {}
    for mode in modes:
        for shell in (False,) if mode == "anchored" else (False, True):
            results[mode, shell] = asyncio.run(measure(mode, shell))
            where = "core + asyncio shell" if shell else "core"
            print(f"{mode:9s} {where:20s} {results[mode, shell]:7.1f} us/call", flush=True)
    if pauses:
        pauses.sort()
        count = len(pauses)
        print(
            f"collector pauses: {count}, p50 {pauses[count // 2] * 1e3:.1f} ms, "
            f"p99 {pauses[int(count * 0.99)] * 1e3:.1f} ms, max {pauses[-1] * 1e3:.1f} ms "
            f"(every generation, set-up included)"
        )
    headline = results.get(("stateful", False)) or results[modes[0], False]
    print(f"proxy_core_us_per_call: {headline:.1f} us")


if __name__ == "__main__":
    main()
