"""Agent events (FCP WatchEvents) in the ALG: draining, broken streams and the breaker,
groups removed behind the ALG's back — the pure pool and media core, and the asyncio
shell's per-agent watch, with `fcp.memory_backend.MemoryBackend` as the agents."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from media_testing import ALICE, BOB, Alg, Clock, backend, request, response, sdp, until

from alg.aio import AlgShell
from alg.assemble import assemble
from alg.config import parse_config
from alg.media.actions import Reject, Release, Reserve
from alg.media.agents import (
    AgentConfig,
    AgentPool,
    AgentSettings,
    Breaker,
    GroupGone,
)
from alg.media.perform import OwnedBackend
from fcp.memory_backend import MemoryBackend
from fcp.types import Event, EventKind, Session, SessionRequest

OWNER = "alg-1"


def _events(alg: Alg, agent: MemoryBackend, act: Callable[[], None], count: int) -> list[Event]:
    """Open a watch on `agent`, do `act`, return the first `count` events after
    WATCH_STARTED (what the ALG's stream would deliver)."""

    async def watch() -> list[Event]:
        stream = agent.watch_events(OWNER)
        started = await anext(stream)
        assert started.kind is EventKind.WATCH_STARTED
        act()
        got = [await asyncio.wait_for(anext(stream), 5) for _ in range(count)]
        await stream.aclose()
        return got

    return alg.loop.run_until_complete(watch())


def _preferring(pool: AgentPool, alg: Alg, agent: str, now: float, prefix: str = "c") -> str:
    """A Call-ID the healthy pool would pin to `agent` (so moving it proves something)."""
    probe = AgentPool(pool.agents, pool.settings)
    for n in range(1000):
        call_id = f"{prefix}{n}@10.77.0.10"
        if probe.choose(alg.core.tokens.key(call_id, "a1"), now) == agent:
            return call_id
    raise AssertionError(f"no Call-ID prefers {agent}")


def _answered_call(alg: Alg, call_id: str) -> bytes:
    sent = alg.forward_request(request("INVITE", call_id=call_id, body=sdp()), ALICE, BOB)
    assert not isinstance(sent, Reject), sent
    ok = response(sent, 200, body=sdp("203.0.113.20", 50000))
    assert not isinstance(alg.forward_response(ok, BOB, ALICE), Reject)
    return sent


@pytest.fixture
def two() -> Iterator[Alg]:
    clock = Clock()
    harness = Alg(
        clock=clock, agents={"gw1": backend(clock), "gw2": backend(clock, "198.51.100.20")}
    )
    yield harness
    harness.assert_no_leak()
    harness.close()


def test_a_draining_agent_gets_no_new_call_and_keeps_its_calls(two: Alg) -> None:
    pool = two.core.pool
    first = _preferring(pool, two, "gw1", two.now)
    _answered_call(two, first)
    assert len(two.bindings("gw1")) == 1 and two.bindings("gw2") == []

    [event] = _events(two, two.agents["gw1"], two.agents["gw1"].drain, 1)
    assert event.kind is EventKind.AGENT_DRAINING
    assert pool.on_event("gw1", event) is None
    assert pool.draining("gw1") and not pool.available("gw1", two.now)
    assert pool.state("gw1", two.now) is Breaker.CLOSED  # draining is not a failure

    # a new call that would have gone to gw1 goes to gw2 at once: no failed attempt first
    new_id = _preferring(pool, two, "gw1", two.now, prefix="n")
    reserves_before = len([a for a in two.performed if isinstance(a, Reserve)])
    _answered_call(two, new_id)
    reserves = [a for a in two.performed if isinstance(a, Reserve)][reserves_before:]
    assert [a.agent for a in reserves] == ["gw2"]
    assert two.core.stats["agent.failover"] == 0
    assert len(two.bindings("gw2")) == 1

    # the first call stays on gw1 with its binding, and its BYE releases it there
    assert len(two.bindings("gw1")) == 1
    bye = request("BYE", call_id=first, to="<sip:bob@203.0.113.20>;tag=b1", cseq=2)
    sent = two.forward_request(bye, ALICE, BOB)
    assert not isinstance(sent, Reject)
    two.forward_response(response(sent, 200), BOB, ALICE)  # type: ignore[arg-type]
    assert any(isinstance(a, Release) and a.agent == "gw1" for a in two.performed)
    assert two.bindings("gw1") == []


START_WALL = 1_700_000_000.0


def test_a_new_stream_ends_the_drain() -> None:
    """A stream that starts again means the agent serves again (it restarted)."""
    pool = AgentPool((AgentConfig("gw1"),))
    pool.on_event("gw1", Event(1, EventKind.AGENT_DRAINING, START_WALL, 7))
    assert not pool.available("gw1", 0.0) and pool.choose(b"call", 0.0) is None
    pool.on_event("gw1", Event(1, EventKind.WATCH_STARTED, START_WALL, 7))
    assert pool.available("gw1", 0.0) and not pool.draining("gw1")


def test_removed_by_admin_tells_the_media_core_which_call_lost_media(two: Alg) -> None:
    call_id = _preferring(two.core.pool, two, "gw1", two.now)
    _answered_call(two, call_id)
    gw1 = two.agents["gw1"]
    [rule] = two.rules("gw1")
    [event] = _events(two, gw1, lambda: gw1.remove_by_admin(rule.rule_id), 1)  # type: ignore[attr-defined]
    assert event.kind is EventKind.REMOVED_BY_ADMIN

    gone = two.core.pool.on_event("gw1", event)
    call = two.core.call(call_id)
    assert call is not None
    assert gone == GroupGone(
        "gw1", call.group_id, EventKind.REMOVED_BY_ADMIN, event.binding_id, event.rule_id
    )
    # the same group reported by the *other* agent is not this call's
    assert two.core.bindings_gone(dataclasses.replace(gone, agent="gw2"), two.now) is None
    assert two.core.stats["agent.gone.no_call"] == 1
    assert two.core.call(call_id) is call and two.core.take_requests() == []

    assert two.core.bindings_gone(gone, two.now) is call
    assert two.core.stats["agent.gone.removed_by_admin"] == 1
    assert two.core.pool.stats["gw1.event.removed_by_admin"] == 1
    # the answered call has no media any more: the ALG ends it (its BYEs: test_media_gone)
    assert two.core.call(call_id) is None and two.core.stats["teardown.media_gone"] == 1
    two.core.take_requests()
    two.pump()
    assert two.bindings("gw1") == []


def test_an_address_change_is_only_noted(two: Alg) -> None:
    gw1 = two.agents["gw1"]
    old, new = ipaddress.ip_address("198.51.100.10"), ipaddress.ip_address("198.51.100.11")
    [event] = _events(two, gw1, lambda: gw1.change_external_address("v4", old, new), 1)
    assert event.kind is EventKind.EXTERNAL_ADDRESS_CHANGED
    assert two.core.pool.on_event("gw1", event) is None
    assert two.core.pool.available("gw1", two.now)
    assert two.core.pool.stats["gw1.event.external_address_changed"] == 1


def test_broken_streams_open_the_breaker_and_a_new_stream_closes_it() -> None:
    settings = AgentSettings(threshold=3, open_for=30, watch_retry=0.5, watch_retry_max=4)
    pool = AgentPool((AgentConfig("gw1"), AgentConfig("gw2")), settings)
    now = 100.0
    pool.watch_broken("gw1", now)
    pool.watch_broken("gw1", now + 0.5)
    assert pool.state("gw1", now + 0.5) is Breaker.CLOSED and pool.available("gw1", now + 0.5)
    pool.watch_broken("gw1", now + 1.5)  # the third consecutive failure
    assert pool.state("gw1", now + 1.5) is Breaker.OPEN
    key = b"any call"
    assert pool.choose(key, now + 2) == "gw2"
    assert pool.snapshot(now + 2)["gw1"] == {"breaker": "open", "failures": 3, "draining": False}
    # the agent is back: its stream starts, and that is a health success
    pool.on_event("gw1", Event(1, EventKind.WATCH_STARTED, START_WALL, 7))
    assert pool.state("gw1", now + 3) is Breaker.CLOSED
    assert pool.stats["gw1.watch.broken"] == 3
    assert [pool.watch_delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_an_event_without_a_group_is_not_a_lost_call() -> None:
    pool = AgentPool((AgentConfig("gw1"),))
    assert pool.on_event("gw1", Event(3, EventKind.EXPIRED, START_WALL, 7)) is None
    expired = Event(4, EventKind.EXPIRED, START_WALL, 7, group_id="g-1", binding_id="b-1")
    assert pool.on_event("gw1", expired) == GroupGone("gw1", "g-1", EventKind.EXPIRED, "b-1")


# --- the asyncio shell: one watch per agent --------------------------------------------


class WatchedBackend(OwnedBackend):
    """A MemoryBackend seen by one owner, shaped like `FcpClient` including events."""

    async def open_session(self, *, deadline: float | None = None) -> Session:
        return await self.backend.open_session(self.owner, SessionRequest("alg-test"))

    def watch_events(self) -> AsyncIterator[Event]:
        return self.backend.watch_events(self.owner)


def _shell_config() -> object:
    raw = {
        "inside": {"address": "127.0.0.1", "port": 5060, "transports": ["udp"]},
        "outside": {"address": "127.0.0.1", "port": 5061, "transports": ["udp"]},
        "proxy": {"inside_networks": ["10.77.0.0/24"]},
        "media": {
            "enabled": True,
            "agents": [
                {"name": "gw1", "address": "127.0.0.1:7700"},
                {"name": "gw2", "address": "127.0.0.1:7701"},
            ],
        },
    }
    config = parse_config(raw)
    # any free port: the test is about the agent streams, not SIP
    return dataclasses.replace(
        config,
        inside=dataclasses.replace(config.inside, port=0),
        outside=dataclasses.replace(config.outside, port=0),
    )


def test_the_shell_watches_every_agent_and_reopens_a_broken_stream() -> None:
    async def scenario() -> None:
        clock = time.time
        agents = {"gw1": backend(clock), "gw2": backend(clock, "198.51.100.20")}  # type: ignore[arg-type]
        config = _shell_config()
        services = assemble(config)  # type: ignore[arg-type]
        media = services.core.media
        assert media is not None
        shell = AlgShell(
            config,  # type: ignore[arg-type]
            services.core,
            agents={name: WatchedBackend(b, OWNER) for name, b in agents.items()},
        )
        await shell.start()
        try:
            stats = media.pool.stats
            await until(
                "both streams started",
                lambda: stats["gw1.event.watch_started"] == stats["gw2.event.watch_started"] == 1,
            )
            agents["gw1"].drain()
            await until("gw1 draining", lambda: media.pool.draining("gw1"))
            assert not media.pool.draining("gw2")
            assert services.counters()["agents"]["gw1"]["draining"] is True  # type: ignore[index]

            agents["gw2"].close()  # the agent ends its streams (it is stopping)
            await until("gw2's stream counted broken", lambda: stats["gw2.watch.broken"] == 1)
            # ... and reopened after the backoff (the memory agent still serves)
            await until("gw2 reopened", lambda: stats["gw2.event.watch_started"] == 2)
            assert stats["gw1.watch.broken"] == 0
        finally:
            await shell.close()
            services.close()

    asyncio.run(scenario())
