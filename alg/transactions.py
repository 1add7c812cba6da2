"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state), sans-I/O.

Theory of operation
-------------------
A transaction is a small state machine fed by three kinds of input: messages from the
network, decisions of the transaction user (the proxy core), and timer expiries. Its
reactions are returned as `Action` values, never performed: the shell sends bytes,
delivers responses to the proxy core, and arms one timer per transaction at
`get_timer()`. Time only enters through the `now` argument, so every timer can be tested
with a virtual clock.

The behaviour is the literal table `TRANSITIONS` below: for each (kind, state, event) the
next state, the actions, and the timers to start and stop. The figures of RFC 3261
§17.1.1.2 (Figure 5), §17.1.2.2 (Figure 6), §17.2.1 (Figure 7) and §17.2.2 (Figure 8) are
transcribed row by row, as modified by RFC 6026 §8 (2xx to INVITE moves both INVITE
transactions to Accepted instead of Terminated, so retransmitted 2xx and ACKs are matched
and absorbed rather than treated as strays). A pair missing from the table means the
event is ignored in that state (e.g. a retransmitted provisional response in Completed).

Timer intervals (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2, RFC 6026 §8.4):

=====  =====================================  =============================
timer  meaning                                value
=====  =====================================  =============================
A      INVITE request retransmit (UDP)        T1, doubling
B      INVITE transaction timeout             64*T1
D      wait for response retransmits          32 s on UDP, 0 on reliable
E      non-INVITE request retransmit (UDP)    T1 doubling up to T2; T2 once
                                              a provisional arrived
F      non-INVITE transaction timeout         64*T1
G      INVITE final response retransmit       T1 doubling up to T2
H      wait for ACK                           64*T1
I      wait for ACK retransmits               T4 on UDP, 0 on reliable
J      wait for non-INVITE retransmits        64*T1 on UDP, 0 on reliable
K      wait for response retransmits          T4 on UDP, 0 on reliable
L      Accepted state, server (RFC 6026)      64*T1
M      Accepted state, client (RFC 6026)      64*T1
=====  =====================================  =============================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final


class Kind(enum.Enum):
    INVITE_CLIENT = "invite-client"
    NON_INVITE_CLIENT = "non-invite-client"
    INVITE_SERVER = "invite-server"
    NON_INVITE_SERVER = "non-invite-server"

    # Members are singletons compared by identity: hash them by identity too, in C,
    # instead of Enum's hash of the name in Python (every TRANSITIONS lookup hashes a
    # kind, a state and an event).
    __hash__ = object.__hash__


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"

    __hash__ = object.__hash__  # see Kind


class Event(enum.Enum):
    # from the network
    PROVISIONAL = "1xx received"
    SUCCESS = "2xx received"
    FAILURE = "300-699 received"
    REQUEST = "request retransmission received"
    ACK = "ACK received"
    # from the transaction user (server transactions)
    SEND_PROVISIONAL = "TU sends 1xx"
    SEND_SUCCESS = "TU sends 2xx"
    SEND_FAILURE = "TU sends 300-699"
    # from the transport
    TRANSPORT_ERROR = "transport error"
    # timers
    TIMER_A = "A"
    TIMER_B = "B"
    TIMER_D = "D"
    TIMER_E = "E"
    TIMER_F = "F"
    TIMER_G = "G"
    TIMER_H = "H"
    TIMER_I = "I"
    TIMER_J = "J"
    TIMER_K = "K"
    TIMER_L = "L"
    TIMER_M = "M"

    __hash__ = object.__hash__  # see Kind


class Action(enum.Enum):
    SEND_REQUEST = "send the request again"
    SEND_ACK = "send ACK for the failure response"  # §17.1.1.3: hop-by-hop ACK
    SEND_RESPONSE = "send the last response again"
    DELIVER = "deliver the response to the TU"
    TIMEOUT = "tell the TU the transaction timed out"
    TRANSPORT_FAILED = "tell the TU the transport failed"
    TERMINATE = "the transaction is over: forget it"


_TIMER_EVENTS: Final = {
    "A": Event.TIMER_A, "B": Event.TIMER_B, "D": Event.TIMER_D, "E": Event.TIMER_E,
    "F": Event.TIMER_F, "G": Event.TIMER_G, "H": Event.TIMER_H, "I": Event.TIMER_I,
    "J": Event.TIMER_J, "K": Event.TIMER_K, "L": Event.TIMER_L, "M": Event.TIMER_M,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Transition:
    next_state: State
    actions: tuple[Action, ...] = ()
    start: tuple[str, ...] = ()  # timers (re)started on this transition
    stop: tuple[str, ...] = ()  # timers cancelled on this transition


_S, _E, _A = State, Event, Action
_ALL_CLIENT_INVITE_TIMERS: Final = ("A", "B")
_ALL_NON_INVITE_CLIENT_TIMERS: Final = ("E", "F")

TRANSITIONS: Final[dict[tuple[Kind, State, Event], Transition]] = {
    # --- INVITE client, Figure 5 + RFC 6026 ------------------------------------------
    (Kind.INVITE_CLIENT, _S.CALLING, _E.TIMER_A): Transition(
        _S.CALLING, (_A.SEND_REQUEST,), start=("A",)),
    (Kind.INVITE_CLIENT, _S.CALLING, _E.TIMER_B): Transition(
        _S.TERMINATED, (_A.TIMEOUT, _A.TERMINATE), stop=("A",)),
    # §17.1.1.2: timer B only times out a transaction still in Calling; once a
    # provisional arrived the INVITE may wait indefinitely (a proxy's Timer C, §16.6
    # step 11, bounds it).
    (Kind.INVITE_CLIENT, _S.CALLING, _E.PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.DELIVER,), stop=_ALL_CLIENT_INVITE_TIMERS),
    (Kind.INVITE_CLIENT, _S.CALLING, _E.SUCCESS): Transition(
        _S.ACCEPTED, (_A.DELIVER,), start=("M",), stop=_ALL_CLIENT_INVITE_TIMERS),
    (Kind.INVITE_CLIENT, _S.CALLING, _E.FAILURE): Transition(
        _S.COMPLETED, (_A.DELIVER, _A.SEND_ACK), start=("D",), stop=_ALL_CLIENT_INVITE_TIMERS),
    (Kind.INVITE_CLIENT, _S.CALLING, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE), stop=_ALL_CLIENT_INVITE_TIMERS),
    (Kind.INVITE_CLIENT, _S.PROCEEDING, _E.PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.DELIVER,)),
    (Kind.INVITE_CLIENT, _S.PROCEEDING, _E.SUCCESS): Transition(
        _S.ACCEPTED, (_A.DELIVER,), start=("M",), stop=_ALL_CLIENT_INVITE_TIMERS),
    (Kind.INVITE_CLIENT, _S.PROCEEDING, _E.FAILURE): Transition(
        _S.COMPLETED, (_A.DELIVER, _A.SEND_ACK), start=("D",), stop=_ALL_CLIENT_INVITE_TIMERS),
    (Kind.INVITE_CLIENT, _S.PROCEEDING, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE)),
    (Kind.INVITE_CLIENT, _S.COMPLETED, _E.FAILURE): Transition(
        _S.COMPLETED, (_A.SEND_ACK,)),  # retransmitted final: ACK again, absorb
    (Kind.INVITE_CLIENT, _S.COMPLETED, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE), stop=("D",)),
    (Kind.INVITE_CLIENT, _S.COMPLETED, _E.TIMER_D): Transition(
        _S.TERMINATED, (_A.TERMINATE,)),
    # RFC 6026 §8.4: every 2xx (retransmission or another fork) still goes to the TU
    (Kind.INVITE_CLIENT, _S.ACCEPTED, _E.SUCCESS): Transition(
        _S.ACCEPTED, (_A.DELIVER,)),
    (Kind.INVITE_CLIENT, _S.ACCEPTED, _E.TIMER_M): Transition(
        _S.TERMINATED, (_A.TERMINATE,)),
    # --- non-INVITE client, Figure 6 --------------------------------------------------
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _E.TIMER_E): Transition(
        _S.TRYING, (_A.SEND_REQUEST,), start=("E",)),
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _E.TIMER_F): Transition(
        _S.TERMINATED, (_A.TIMEOUT, _A.TERMINATE), stop=("E",)),
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE), stop=_ALL_NON_INVITE_CLIENT_TIMERS),
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _E.PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.DELIVER,)),
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _E.SUCCESS): Transition(
        _S.COMPLETED, (_A.DELIVER,), start=("K",), stop=_ALL_NON_INVITE_CLIENT_TIMERS),
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _E.FAILURE): Transition(
        _S.COMPLETED, (_A.DELIVER,), start=("K",), stop=_ALL_NON_INVITE_CLIENT_TIMERS),
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _E.TIMER_E): Transition(
        _S.PROCEEDING, (_A.SEND_REQUEST,), start=("E",)),
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _E.TIMER_F): Transition(
        _S.TERMINATED, (_A.TIMEOUT, _A.TERMINATE), stop=("E",)),
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE), stop=_ALL_NON_INVITE_CLIENT_TIMERS),
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _E.PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.DELIVER,)),
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _E.SUCCESS): Transition(
        _S.COMPLETED, (_A.DELIVER,), start=("K",), stop=_ALL_NON_INVITE_CLIENT_TIMERS),
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _E.FAILURE): Transition(
        _S.COMPLETED, (_A.DELIVER,), start=("K",), stop=_ALL_NON_INVITE_CLIENT_TIMERS),
    (Kind.NON_INVITE_CLIENT, _S.COMPLETED, _E.TIMER_K): Transition(
        _S.TERMINATED, (_A.TERMINATE,)),
    # --- INVITE server, Figure 7 + RFC 6026 ------------------------------------------
    (Kind.INVITE_SERVER, _S.PROCEEDING, _E.REQUEST): Transition(
        _S.PROCEEDING, (_A.SEND_RESPONSE,)),  # §17.2.1: resend the last provisional
    (Kind.INVITE_SERVER, _S.PROCEEDING, _E.SEND_PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.SEND_RESPONSE,)),
    (Kind.INVITE_SERVER, _S.PROCEEDING, _E.SEND_SUCCESS): Transition(
        _S.ACCEPTED, (_A.SEND_RESPONSE,), start=("L",)),
    (Kind.INVITE_SERVER, _S.PROCEEDING, _E.SEND_FAILURE): Transition(
        _S.COMPLETED, (_A.SEND_RESPONSE,), start=("G", "H")),
    (Kind.INVITE_SERVER, _S.PROCEEDING, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE)),
    (Kind.INVITE_SERVER, _S.COMPLETED, _E.REQUEST): Transition(
        _S.COMPLETED, (_A.SEND_RESPONSE,)),
    (Kind.INVITE_SERVER, _S.COMPLETED, _E.TIMER_G): Transition(
        _S.COMPLETED, (_A.SEND_RESPONSE,), start=("G",)),
    (Kind.INVITE_SERVER, _S.COMPLETED, _E.TIMER_H): Transition(
        _S.TERMINATED, (_A.TIMEOUT, _A.TERMINATE), stop=("G",)),
    (Kind.INVITE_SERVER, _S.COMPLETED, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE), stop=("G", "H")),
    (Kind.INVITE_SERVER, _S.COMPLETED, _E.ACK): Transition(
        _S.CONFIRMED, (), start=("I",), stop=("G", "H")),
    (Kind.INVITE_SERVER, _S.CONFIRMED, _E.TIMER_I): Transition(
        _S.TERMINATED, (_A.TERMINATE,)),
    # RFC 6026 §8.5-8.7: in Accepted, 2xx retransmissions from the TU are sent, stray
    # INVITE retransmissions and ACKs are absorbed (the ACK for 2xx is end-to-end).
    (Kind.INVITE_SERVER, _S.ACCEPTED, _E.SEND_SUCCESS): Transition(
        _S.ACCEPTED, (_A.SEND_RESPONSE,)),
    (Kind.INVITE_SERVER, _S.ACCEPTED, _E.TIMER_L): Transition(
        _S.TERMINATED, (_A.TERMINATE,)),
    # --- non-INVITE server, Figure 8 -------------------------------------------------
    (Kind.NON_INVITE_SERVER, _S.TRYING, _E.SEND_PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.SEND_RESPONSE,)),
    (Kind.NON_INVITE_SERVER, _S.TRYING, _E.SEND_SUCCESS): Transition(
        _S.COMPLETED, (_A.SEND_RESPONSE,), start=("J",)),
    (Kind.NON_INVITE_SERVER, _S.TRYING, _E.SEND_FAILURE): Transition(
        _S.COMPLETED, (_A.SEND_RESPONSE,), start=("J",)),
    (Kind.NON_INVITE_SERVER, _S.PROCEEDING, _E.REQUEST): Transition(
        _S.PROCEEDING, (_A.SEND_RESPONSE,)),
    (Kind.NON_INVITE_SERVER, _S.PROCEEDING, _E.SEND_PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.SEND_RESPONSE,)),
    (Kind.NON_INVITE_SERVER, _S.PROCEEDING, _E.SEND_SUCCESS): Transition(
        _S.COMPLETED, (_A.SEND_RESPONSE,), start=("J",)),
    (Kind.NON_INVITE_SERVER, _S.PROCEEDING, _E.SEND_FAILURE): Transition(
        _S.COMPLETED, (_A.SEND_RESPONSE,), start=("J",)),
    (Kind.NON_INVITE_SERVER, _S.PROCEEDING, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE)),
    (Kind.NON_INVITE_SERVER, _S.COMPLETED, _E.REQUEST): Transition(
        _S.COMPLETED, (_A.SEND_RESPONSE,)),
    (Kind.NON_INVITE_SERVER, _S.COMPLETED, _E.TRANSPORT_ERROR): Transition(
        _S.TERMINATED, (_A.TRANSPORT_FAILED, _A.TERMINATE), stop=("J",)),
    (Kind.NON_INVITE_SERVER, _S.COMPLETED, _E.TIMER_J): Transition(
        _S.TERMINATED, (_A.TERMINATE,)),
}  # fmt: skip

INITIAL_STATE: Final = {
    Kind.INVITE_CLIENT: State.CALLING,
    Kind.NON_INVITE_CLIENT: State.TRYING,
    Kind.INVITE_SERVER: State.PROCEEDING,  # §17.2.1: a server INVITE starts in Proceeding
    Kind.NON_INVITE_SERVER: State.TRYING,
}


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 §17.1.1.1 defaults; T1 is an estimate of the round-trip time."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


@dataclass(slots=True)
class Transaction:
    """One transaction. `reliable` is True over TCP/TLS, where nothing is retransmitted
    and the waiting timers D, I, J, K are zero (§17.1.1.2, §17.2.1)."""

    kind: Kind
    reliable: bool
    settings: TimerSettings = field(default_factory=TimerSettings)
    state: State = State.TERMINATED
    deadlines: dict[str, float] = field(default_factory=dict)
    _intervals: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(
        cls, kind: Kind, *, reliable: bool, now: float, settings: TimerSettings | None = None
    ) -> Transaction:
        """Create a transaction in its initial state with its initial timers."""
        txn = cls(kind, reliable, settings or TimerSettings(), INITIAL_STATE[kind])
        if kind is Kind.INVITE_CLIENT:
            txn._start_timers(("A", "B"), now)
        elif kind is Kind.NON_INVITE_CLIENT:
            txn._start_timers(("E", "F"), now)
        return txn

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called (None: no timer is armed)."""
        return min(self.deadlines.values()) if self.deadlines else None

    def handle(self, event: Event, now: float) -> tuple[Action, ...]:
        """Feed one event; returns what the shell must do, in order."""
        transition = TRANSITIONS.get((self.kind, self.state, event))
        if transition is None:
            return ()  # not meaningful in this state: absorbed (see module docstring)
        if event is Event.PROVISIONAL and self.kind is Kind.NON_INVITE_CLIENT:
            # §17.1.2.2: once a provisional arrived, timer E fires at T2 only
            self._intervals["E"] = self.settings.t2
        for name in transition.stop:
            self.deadlines.pop(name, None)
        self.state = transition.next_state
        if self.state is State.TERMINATED:
            self.deadlines.clear()
            return transition.actions
        self._start_timers(transition.start, now)
        return transition.actions

    def abandon(self) -> None:
        """The TU gives up on this transaction (e.g. a proxy's Timer C fired before any
        provisional, §16.8): it ends without further actions."""
        self.state = State.TERMINATED
        self.deadlines.clear()

    def handle_timer(self, now: float) -> tuple[Action, ...]:
        """Fire every timer due at `now` (in deadline order)."""
        actions: list[Action] = []
        while self.deadlines:
            name, deadline = min(self.deadlines.items(), key=lambda item: item[1])
            if deadline > now:
                break
            del self.deadlines[name]
            actions += self.handle(_TIMER_EVENTS[name], now)
        return tuple(actions)

    def _start_timers(self, names: tuple[str, ...], now: float) -> None:
        for name in names:
            interval = self._next_interval(name)
            if interval == 0.0:
                # A zero timer (reliable transport) fires at once: keep it due now so
                # the shell's next handle_timer(now) completes the transition.
                self.deadlines[name] = now
            elif interval is not None:
                self.deadlines[name] = now + interval

    def _next_interval(self, name: str) -> float | None:
        s = self.settings
        if name in ("A", "E", "G"):
            if self.reliable:
                return None  # §17.1.1.2 / §17.1.2.2 / §17.2.1: no retransmission
            previous = self._intervals.get(name)
            if previous is None:
                interval = s.t1
            elif name == "A":
                interval = previous * 2  # A doubles without a cap
            else:
                interval = min(previous * 2, s.t2)
            self._intervals[name] = interval
            return interval
        long_wait = 64 * s.t1
        if name in ("B", "F", "H", "L", "M"):
            return long_wait
        if self.reliable:
            return 0.0  # D, I, J, K: nothing to wait for on a reliable transport
        if name == "D":
            return max(32.0, long_wait)
        return long_wait if name == "J" else s.t4  # J; I and K wait T4


def event_for_status(status: int) -> Event:
    """The network event a response of this status is for a client transaction."""
    if status < 200:
        return Event.PROVISIONAL
    if status < 300:
        return Event.SUCCESS
    return Event.FAILURE


def tu_event_for_status(status: int) -> Event:
    """The TU event for sending a response of this status on a server transaction."""
    if status < 200:
        return Event.SEND_PROVISIONAL
    if status < 300:
        return Event.SEND_SUCCESS
    return Event.SEND_FAILURE
