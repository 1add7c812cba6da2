"""Nothing of a call outlives it: many calls through every way a call ends — BYE, CANCEL,
486, the agent failing (an error, or no answer at all) on reserve, enable and release,
no answer, a refused 2xx, a challenge nobody retries — and once `now` is past every timer,
every structure that grows per call is empty again: the media core's (`footprint`), the
gate's parked messages, the recorder's calls and closing records, the proxy's
transactions, and the agent's bindings and rules. Every call's CDR is written, the calls
the ALG ended itself with `ended_by` "alg"."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

import pytest
from proxy_harness import ALICE, BOB, StaticRouter, invite, sent_to
from test_proxy_cdr_media import ANSWER_SDP, START, Answering, Rig, bye_from_bob

from alg.builders import build_response
from alg.media.actions import AgentAction, Enable, Release, Reserve
from alg.media.agents import AgentSettings
from alg.sip import SipMessage
from fcp.types import Binding, Rule

# how long one call is given to end (the longest: no answer, Timer C is 180 s and the
# media core's setup timer 300 s) before the next starts
SETTLE = 400.0
# the longest lifetime the agent grants (untimed 7200 s + slack): past it, the kernel's
# timeouts have removed whatever a failed release left
LIFETIMES = 7300.0


@pytest.fixture
def rig() -> Iterator[Rig]:
    # the breaker never opens: each call meets the failure it is written for
    built = Rig(AgentSettings(deadline=1.0, attempts=2, threshold=10_000))
    built.core.router = StaticRouter({"bob": [BOB], "alice": [ALICE]})
    yield built
    built.loop.close()


def _answering(**kinds: Answering) -> Callable[[AgentAction], Answering]:
    table: dict[type, Answering] = {
        Reserve: kinds.get("reserve", "perform"),
        Enable: kinds.get("enable", "perform"),
        Release: kinds.get("release", "perform"),
    }
    return lambda action: table.get(type(action), "perform")


class Calls:
    """Call number `n` at `at` seconds: alice (inside) calls bob (outside), or the other
    way round, each with its own Call-ID and branches."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def outbound(self, n: int, at: float) -> SipMessage | None:
        # a port of its own: a binding whose release failed stays in the agent until its
        # lifetime ends, and the agent refuses the same inside endpoint to another group
        data = invite(call_id=f"c{n}@10.77.0.10", branch=f"z9hG4bKa{n}").replace(
            b"m=audio 40000", f"m=audio {30000 + 2 * n}".encode()
        )
        out = sent_to(self.rig.receive(data, ALICE, at=at), BOB)
        return out[0] if out else None

    def inbound(self, n: int, at: float) -> SipMessage:
        data = (
            invite(to_user="alice", call_id=f"in{n}@203.0.113.20", branch=f"z9hG4bKb{n}")
            .replace(b"Via: SIP/2.0/UDP 10.77.0.10:5060", b"Via: SIP/2.0/UDP 203.0.113.20:5060")
            .replace(b"IN IP4 10.77.0.10", b"IN IP4 203.0.113.20")
            .replace(b"<sip:alice@10.77.0.10:5060>", b"<sip:bob@203.0.113.20:5060>")
        )
        (to_alice,) = sent_to(self.rig.receive(data, BOB, at=at), ALICE)
        return to_alice

    def answer(self, forwarded: SipMessage, at: float) -> None:
        """bob's 200 (§12.1.1: Record-Route copied, his Contact)."""
        dialog = (
            ("Record-Route", (forwarded.header("record-route") or "").encode()),
            ("Contact", b"<sip:bob@203.0.113.20:5060>"),
        )
        ok = build_response(forwarded, 200, to_tag="b1", body=ANSWER_SDP, extra_headers=dialog)
        self.rig.receive(ok, BOB, at=at)

    def inside_answer(
        self, to_alice: SipMessage, at: float, status: int, port: int, host: str = "10.77.0.10"
    ) -> None:
        """alice's 183/200 with SDP for `host`:`port` (another inside host: forged)."""
        sdp = (
            f"v=0\r\no=a 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\n"
            f"t=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
        ).encode()
        headers = (
            ("Record-Route", (to_alice.header("record-route") or "").encode()),
            ("Contact", b"<sip:alice@10.77.0.10:5060>"),
        )
        reply = build_response(to_alice, status, to_tag="a1", body=sdp, extra_headers=headers)
        self.rig.receive(reply, ALICE, at=at)


Scenario = Callable[[int, float], Iterator[float]]


def _scenarios(calls: Calls) -> dict[str, Scenario]:
    """Each call is a generator: it yields the time of its next step (the driver runs
    the timers due until then), then takes that step."""
    rig = calls.rig

    def hung_up(n: int, at: float) -> Iterator[float]:
        yield at
        forwarded = calls.outbound(n, at)
        assert forwarded is not None
        yield at + 1
        calls.answer(forwarded, at + 1)
        yield at + 5
        bye = bye_from_bob(forwarded).replace(b"z9hG4bKbye1", f"z9hG4bKbye{n}".encode())
        rig.receive(bye, BOB, at=at + 5)

    def cancelled(n: int, at: float) -> Iterator[float]:
        yield at
        forwarded = calls.outbound(n, at)
        assert forwarded is not None
        yield at + 0.5
        rig.receive(build_response(forwarded, 180, to_tag="b1"), BOB, at=at + 0.5)
        cancel = (
            invite(call_id=f"c{n}@10.77.0.10", branch=f"z9hG4bKa{n}")
            .split(b"Contact:")[0]
            .replace(b"INVITE sip:", b"CANCEL sip:")
            .replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
            + b"Content-Length: 0\r\n\r\n"
        )
        yield at + 1
        out = sent_to(rig.receive(cancel, ALICE, at=at + 1), BOB)
        (cancel_down,) = [m for m in out if m.method == "CANCEL"]
        yield at + 1.1
        rig.receive(build_response(cancel_down, 200, to_tag="b1"), BOB, at=at + 1.1)
        yield at + 1.2
        rig.receive(build_response(forwarded, 487, to_tag="b1"), BOB, at=at + 1.2)

    def final(status: int) -> Scenario:
        def run(n: int, at: float) -> Iterator[float]:
            yield at
            forwarded = calls.outbound(n, at)
            assert forwarded is not None
            yield at + 1
            rig.receive(build_response(forwarded, status, to_tag="b1"), BOB, at=at + 1)

        return run

    def unanswerable(n: int, at: float) -> Iterator[float]:  # reservation fails/times out
        yield at
        assert calls.outbound(n, at) is None

    def no_answer(n: int, at: float) -> Iterator[float]:  # rings until Timer C
        yield at
        forwarded = calls.outbound(n, at)
        assert forwarded is not None
        yield at + 0.5
        rig.receive(build_response(forwarded, 180, to_tag="b1"), BOB, at=at + 0.5)

    def inside_answers(*answers: tuple[float, int, int], host: str = "10.77.0.10") -> Scenario:
        def run(n: int, at: float) -> Iterator[float]:
            yield at
            to_alice = calls.inbound(n, at)
            for offset, status, port in answers:
                yield at + offset
                calls.inside_answer(to_alice, at + offset, status, port, host)

        return run

    return {
        "bye": hung_up,
        "cancel": cancelled,
        "486": final(486),
        "407 never retried": final(407),
        "no answer": no_answer,
        "reserve fails": unanswerable,
        "reserve times out": unanswerable,
        "enable fails": hung_up,
        "enable times out": hung_up,
        "release fails": hung_up,
        "release times out": hung_up,
        "forged 2xx": inside_answers((1, 200, 40000), host="10.77.0.99"),
        # alice's 200 waits for its binding, which the agent refuses
        "2xx without binding": inside_answers((1, 200, 40010)),
        # her 183 waits for one binding, her 200 (another port) for another, which the
        # agent refuses: the 200 is refused, the call ends, and the 183 with it
        "183 and 200 parked, 200 refused": inside_answers((0.5, 183, 40020), (1, 200, 40022)),
    }


def drive(rig: Rig, steps: Iterator[float]) -> None:
    for when in steps:
        rig.advance(when)  # the timers due before the step


# how the agent answers in each scenario
AGENT: dict[str, Callable[[AgentAction], Answering]] = {
    "reserve fails": _answering(reserve="fail"),
    "reserve times out": _answering(reserve="hold"),
    "enable fails": _answering(enable="fail"),
    "enable times out": _answering(enable="hold"),
    "release fails": _answering(release="fail"),
    "release times out": _answering(release="hold"),
    "2xx without binding": _answering(reserve="fail"),
}


def _early_media_agent(action: AgentAction) -> Answering:
    if isinstance(action, Reserve):
        port = action.request.internal.port
        return "hold" if port == 40020 else "fail" if port == 40022 else "perform"
    return "perform"


AGENT["183 and 200 parked, 200 refused"] = _early_media_agent


def leftovers(rig: Rig) -> dict[str, int]:
    media = rig.core.media
    assert media is not None
    sizes = {f"media.{name}": size for name, size in media.footprint().items()}
    sizes |= {
        "gate.waiting": rig.core._gate.waiting_count,
        "recorder.calls": len(rig.recorder),
        "recorder.closing": rig.recorder.closing_count,
        "proxy.transactions": rig.core.transaction_count,
        "proxy.finished": len(rig.core.finished_calls),
    }
    return {name: size for name, size in sizes.items() if size}


def agent_state(rig: Rig) -> tuple[list[Binding], list[Rule]]:
    rig.backend.sweep()
    bindings = rig.loop.run_until_complete(rig.backend.list_bindings("alg-1"))
    rules = rig.loop.run_until_complete(rig.backend.list_rules("alg-1"))
    return list(bindings), list(rules)


def test_every_ending_leaves_nothing_behind(rig: Rig) -> None:
    scenarios = _scenarios(Calls(rig))
    at, n = 0.0, 0
    ended_by: dict[str, set[str]] = {}
    for _round in range(3):
        for name, run in scenarios.items():
            n += 1
            rig.answer = AGENT.get(name, _answering())
            drive(rig, run(n, at))
            at += SETTLE
            rig.advance(at)
            # past every timer: the call is over and has left nothing, its CDR written
            assert leftovers(rig) == {}, name
            assert rig.core.get_timer() is None, name
            ((_, cdr),) = rig.written
            ended_by.setdefault(name, set()).add(cdr.ended_by)
            rig.written.clear()
    assert ended_by == {
        "bye": {"bye"},
        "cancel": {"final"},
        "486": {"final"},
        "407 never retried": {"final"},
        "no answer": {"final"},
        "reserve fails": {"final"},
        "reserve times out": {"final"},
        "enable fails": {"alg"},
        "enable times out": {"alg"},
        "release fails": {"bye"},
        "release times out": {"bye"},
        "forged 2xx": {"final"},
        "2xx without binding": {"final"},
        "183 and 200 parked, 200 refused": {"final"},
    }
    # the agent: released groups are gone; those whose release failed, once their
    # lifetime ran out (the kernel's timeouts, ARCHITECTURE §3 step 7)
    rig.now = START + at + LIFETIMES
    assert agent_state(rig) == ([], [])
    media = rig.core.media
    assert media is not None and media.stats["calls"] == 3 * len(scenarios)


def test_overlapping_calls_leave_nothing_behind_either(rig: Rig) -> None:
    """The same calls, 70 of them started 0.3 s apart so that they overlap, the agent
    refusing every 7th action of its kinds and leaving every 11th unanswered."""
    count = {"n": 0}

    def flaky(action: AgentAction) -> Answering:
        count["n"] += 1
        if count["n"] % 7 == 0:
            return "fail"
        return "hold" if count["n"] % 11 == 0 else "perform"

    rig.answer = flaky
    scenarios = list(_scenarios(Calls(rig)).values())
    total = 70
    pending: list[tuple[float, int, Iterator[float]]] = []
    for n in range(total):
        steps = scenarios[n % len(scenarios)](n + 1, n * 0.3)
        heapq.heappush(pending, (next(steps), n, steps))
    media = rig.core.media
    assert media is not None
    while pending:
        when, n, steps = heapq.heappop(pending)
        rig.advance(when)
        # the heap of call expiries (alg.media.deadlines) agrees with a scan of the calls
        scanned = min((call.expires_at for call in media._calls.values()), default=None)
        assert media._expiries.next() == scanned
        try:
            heapq.heappush(pending, (steps.send(None), n, steps))
        except StopIteration:
            pass
        except (AssertionError, ValueError):
            pass  # a refused or lost action changed what this call sees; it still ends
    # some calls were answered and nobody hangs up (a refused action broke their
    # script): the media core releases them at the end of their lifetime (no session
    # timer: `untimed`), the recorder closes them at its max_duration (4 h)
    rig.advance(total * 0.3 + 4 * 3600 + SETTLE)
    assert leftovers(rig) == {}
    assert rig.core.get_timer() is None
    assert len(rig.written) == total
    assert agent_state(rig) == ([], [])
