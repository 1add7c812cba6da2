"""Several filter agents (one per gateway): choice by weight, a pinned call, deadlines,
retries and a circuit breaker per agent. Pure; every decision takes an explicit `now`.

Theory of operation
-------------------
* **Choice.** A new call is pinned to one agent by weighted rendezvous hashing of a key
  derived from the call (a keyed hash of Call-ID and caller tag): the same call always
  lands on the same agent while the set of healthy agents does not change, weights
  spread calls in proportion, and removing an agent moves only its own calls. All of a
  call's bindings live on its agent (one FCP group, RFC 5189 §2.1.9): a call never moves
  once it has bindings.
* **Deadlines and retries.** Every action carries a deadline (`AgentSettings.deadline`).
  A timeout or a retryable failure (`Reason.retryable`, NETWORK_FAILURE, a timeout) is
  retried up to `attempts` times *with the same request*, hence the same idempotency key,
  so a retry never creates a second binding (FCP §4).
* **Circuit breaker** (per agent, the table below): `threshold` consecutive health
  failures open it; an open breaker refuses new calls until `open_for` has passed, then
  lets one probe call through (half-open); the probe's success closes it, its failure
  opens it again. Errors that are the caller's fault (MALFORMED, CONFLICT, NOT_FOUND...)
  say nothing about the agent's health and do not count.
* **Failover.** A new call whose first reservation fails on its agent is re-pinned to
  another healthy agent (it has nothing anywhere yet). No healthy agent: the core answers
  503 (RFC 3261 §21.5.4) and nothing with an inside address is forwarded.
* **Agent events** (FCP WatchEvents, one stream per agent kept open by the shell; the
  unsolicited notifications of RFC 5189 §2.2.3, and PCP's "the mapping is gone" of RFC
  6887 §14.1.1): `EVENT_EFFECTS` says what each kind means here. A stream that starts is
  a sign of life (a health success; it also ends a previous drain: the agent serves again);
  a stream that breaks or cannot be opened is a health failure, so a dead agent opens its
  breaker within `threshold` reconnect attempts even while no call is using it.
  AGENT_DRAINING pins no new call to that agent; calls already on it stay there (the
  kernel keeps forwarding their media). EXPIRED / IDLE / REMOVED_BY_ADMIN name a group:
  `GroupGone` tells the media core that call's bindings or pinholes are gone.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from fcp.errors import FcpError, Reason
from fcp.types import Event, EventKind


class Breaker(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Health(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # counted; opens the breaker at the threshold
    COOLED = "cooled"  # open_for has passed
    PROBE = "probe"  # a call was let through while half-open


# (state, event) -> next state; a missing pair leaves the state unchanged.
# The threshold check for CLOSED --FAILURE--> OPEN is made by the caller (a count).
BREAKER_TABLE: Final[dict[tuple[Breaker, Health], Breaker]] = {
    (Breaker.CLOSED, Health.SUCCESS): Breaker.CLOSED,
    (Breaker.CLOSED, Health.FAILURE): Breaker.OPEN,  # only once `threshold` is reached
    (Breaker.OPEN, Health.COOLED): Breaker.HALF_OPEN,
    (Breaker.OPEN, Health.SUCCESS): Breaker.CLOSED,  # a late answer from an old call
    (Breaker.HALF_OPEN, Health.SUCCESS): Breaker.CLOSED,
    (Breaker.HALF_OPEN, Health.FAILURE): Breaker.OPEN,
}

# Reasons that say the agent (or the path to it) is unwell, as opposed to the request.
_HEALTH_REASONS: Final = frozenset(
    {Reason.NETWORK_FAILURE, Reason.INTERNAL, Reason.STALE_EPOCH, Reason.NO_PORTS}
)


class Effect(enum.Enum):
    """What an agent event means for the pool and the media core."""

    STARTED = "started"  # a (new) stream is up: health success, no longer draining
    DRAINING = "draining"  # no new calls on this agent
    GROUP_GONE = "group_gone"  # a call's binding or pinhole is gone (media core)
    NOTED = "noted"  # logged and counted only (e.g. a pool's address changed)


EVENT_EFFECTS: Final[dict[EventKind, Effect]] = {
    EventKind.WATCH_STARTED: Effect.STARTED,
    EventKind.AGENT_DRAINING: Effect.DRAINING,
    EventKind.EXPIRED: Effect.GROUP_GONE,
    EventKind.IDLE: Effect.GROUP_GONE,
    EventKind.REMOVED_BY_ADMIN: Effect.GROUP_GONE,
    # New calls read their public address from each binding, so a changed pool address
    # needs nothing here; calls already anchored keep the old one until they end.
    EventKind.EXTERNAL_ADDRESS_CHANGED: Effect.NOTED,
}


@dataclass(frozen=True, slots=True)
class GroupGone:
    """The agent removed (part of) a group: the bindings/pinholes of that call are gone."""

    agent: str
    group_id: str
    kind: EventKind
    binding_id: str | None = None
    rule_id: str | None = None


def counts_against_agent(error: FcpError) -> bool:
    return error.reason in _HEALTH_REASONS


def retryable(error: FcpError) -> bool:
    return error.reason.retryable or error.reason is Reason.STALE_EPOCH


@dataclass(frozen=True, slots=True)
class AgentConfig:
    name: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or self.weight <= 0:
            raise ValueError(f"agent {self.name!r}: a name and a positive weight")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    deadline: float = 2.0  # seconds per attempt
    attempts: int = 3  # per action, same idempotency key
    retry_delay: float = 0.2  # before a retry (doubles each attempt)
    threshold: int = 3  # consecutive failures that open the breaker
    open_for: float = 30.0  # seconds an open breaker refuses calls
    watch_retry: float = 0.5  # before reopening a broken event stream (doubles each time)
    watch_retry_max: float = 10.0


@dataclass(slots=True)
class _AgentState:
    config: AgentConfig
    breaker: Breaker = Breaker.CLOSED
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False  # half-open: one probe call is in flight
    draining: bool = False  # the agent said AGENT_DRAINING: no new calls


@dataclass(slots=True)
class AgentPool:
    """The agents and their breakers. Mutable, owned by one `MediaCore`."""

    agents: tuple[AgentConfig, ...]
    settings: AgentSettings = field(default_factory=AgentSettings)
    stats: Counter[str] = field(default_factory=Counter)  # agent events, broken streams
    _states: dict[str, _AgentState] = field(init=False)

    def __post_init__(self) -> None:
        names = [agent.name for agent in self.agents]
        if len(set(names)) != len(names):
            raise ValueError("agent names must be unique")
        self._states = {agent.name: _AgentState(agent) for agent in self.agents}

    def state(self, name: str, now: float) -> Breaker:
        agent = self._states[name]
        if agent.breaker is Breaker.OPEN and now >= agent.open_until:
            self._move(agent, Health.COOLED)
        return agent.breaker

    def draining(self, name: str) -> bool:
        return self._states[name].draining

    def available(self, name: str, now: float) -> bool:
        """May a *new* call be pinned to this agent now?"""
        if self._states[name].draining:
            return False
        breaker = self.state(name, now)
        if breaker is Breaker.CLOSED:
            return True
        return breaker is Breaker.HALF_OPEN and not self._states[name].probing

    def choose(self, key: bytes, now: float, exclude: frozenset[str] = frozenset()) -> str | None:
        """The agent for a new call (weighted rendezvous hashing), or None if none is
        available. A half-open agent chosen here carries the probe."""
        best: tuple[float, str] | None = None
        for name, agent in self._states.items():
            if name in exclude or not self.available(name, now):
                continue
            digest = hashlib.blake2b(key + name.encode(), digest_size=8).digest()
            unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
            score = -agent.config.weight / math.log(unit)
            if best is None or score > best[0]:
                best = (score, name)
        if best is None:
            return None
        chosen = self._states[best[1]]
        if chosen.breaker is Breaker.HALF_OPEN:
            chosen.probing = True
            self._move(chosen, Health.PROBE)
        return best[1]

    def succeeded(self, name: str) -> None:
        agent = self._states[name]
        agent.failures = 0
        agent.probing = False
        self._move(agent, Health.SUCCESS)

    def failed(self, name: str, now: float) -> None:
        """A health failure (timeout, NETWORK_FAILURE...) of an action on `name`."""
        agent = self._states[name]
        agent.failures += 1
        agent.probing = False
        if agent.breaker is Breaker.CLOSED and agent.failures < self.settings.threshold:
            return
        if agent.breaker is not Breaker.OPEN:
            agent.open_until = now + self.settings.open_for
        self._move(agent, Health.FAILURE)

    def retry_delay(self, attempt: int) -> float:
        """Delay before attempt number `attempt` (2, 3, ...)."""
        return float(self.settings.retry_delay * 2.0 ** max(0, attempt - 2))

    # -- agent events (WatchEvents) --------------------------------------------------------

    def on_event(self, name: str, event: Event) -> GroupGone | None:
        """An event from `name`'s stream; a GroupGone is for the media core."""
        self.stats[f"{name}.event.{event.kind.value}"] += 1
        effect = EVENT_EFFECTS.get(event.kind, Effect.NOTED)
        if effect is Effect.STARTED:
            # A new stream answers: the agent is up (again). A restarted agent is not
            # draining any more; one still shutting down also refuses reservations
            # (NETWORK_FAILURE), which counts against it as usual.
            self._states[name].draining = False
            self.succeeded(name)
        elif effect is Effect.DRAINING:
            self._states[name].draining = True
        elif effect is Effect.GROUP_GONE and event.group_id:
            return GroupGone(name, event.group_id, event.kind, event.binding_id, event.rule_id)
        return None

    def watch_broken(self, name: str, now: float) -> None:
        """The event stream of `name` ended, failed, or could not be opened."""
        self.stats[f"{name}.watch.broken"] += 1
        self.failed(name, now)

    def snapshot(self, now: float) -> dict[str, dict[str, object]]:
        """Per agent: breaker state, consecutive failures, draining (for `ctl stats`)."""
        return {
            name: {
                "breaker": self.state(name, now).value,
                "failures": agent.failures,
                "draining": agent.draining,
            }
            for name, agent in self._states.items()
        }

    def watch_delay(self, attempt: int) -> float:
        """Delay before reopening a stream after `attempt` consecutive failures (1, 2...)."""
        delay = self.settings.watch_retry * 2.0 ** max(0, attempt - 1)
        return float(min(delay, self.settings.watch_retry_max))

    @staticmethod
    def _move(agent: _AgentState, event: Health) -> None:
        agent.breaker = BREAKER_TABLE.get((agent.breaker, event), agent.breaker)
