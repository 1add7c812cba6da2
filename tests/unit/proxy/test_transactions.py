"""Transaction state machines with a virtual clock: every timer, every path."""

from __future__ import annotations

import pytest

from alg.transactions import (
    TRANSITIONS,
    Action,
    Event,
    Kind,
    State,
    TimerSettings,
    Transaction,
    event_for_status,
    tu_event_for_status,
)

T1, T2, T4 = 0.5, 4.0, 5.0


def fire_until(txn: Transaction, until: float) -> list[tuple[float, tuple[Action, ...]]]:
    """Run the transaction's timers like the shell would, up to `until`."""
    fired = []
    while (deadline := txn.get_timer()) is not None and deadline <= until:
        actions = txn.handle_timer(deadline)
        fired.append((deadline, actions))
    return fired


def test_invite_client_timer_a_doubles_and_b_times_out_over_udp() -> None:
    txn = Transaction.start(Kind.INVITE_CLIENT, reliable=False, now=0.0)
    fired = fire_until(txn, 100.0)
    resend_times = [t for t, actions in fired if Action.SEND_REQUEST in actions]
    # §17.1.1.2: retransmit at T1, 2T1, 4T1 ... until timer B (64*T1 = 32 s)
    assert resend_times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert fired[-1] == (32.0, (Action.TIMEOUT, Action.TERMINATE))
    assert txn.terminated and txn.get_timer() is None


def test_invite_client_over_tcp_never_retransmits() -> None:
    txn = Transaction.start(Kind.INVITE_CLIENT, reliable=True, now=0.0)
    fired = fire_until(txn, 100.0)
    assert fired == [(32.0, (Action.TIMEOUT, Action.TERMINATE))]


def test_invite_client_provisional_stops_a_and_b() -> None:
    txn = Transaction.start(Kind.INVITE_CLIENT, reliable=False, now=0.0)
    assert txn.handle(Event.PROVISIONAL, 0.2) == (Action.DELIVER,)
    assert txn.state is State.PROCEEDING
    # §17.1.1.2: no retransmission and no timeout in Proceeding (Timer C is the proxy's)
    assert txn.get_timer() is None
    assert fire_until(txn, 1000.0) == []
    assert txn.handle(Event.FAILURE, 500.0) == (Action.DELIVER, Action.SEND_ACK)


def test_invite_client_failure_acks_absorbs_retransmissions_then_timer_d() -> None:
    txn = Transaction.start(Kind.INVITE_CLIENT, reliable=False, now=0.0)
    txn.handle(Event.PROVISIONAL, 0.1)
    assert txn.handle(Event.FAILURE, 1.0) == (Action.DELIVER, Action.SEND_ACK)
    assert txn.state is State.COMPLETED
    # a retransmitted 486 is ACKed again but not delivered twice (§17.1.1.2)
    assert txn.handle(Event.FAILURE, 2.0) == (Action.SEND_ACK,)
    assert txn.handle(Event.PROVISIONAL, 2.1) == ()
    assert fire_until(txn, 100.0) == [(33.0, (Action.TERMINATE,))]  # D = 32 s


def test_invite_client_failure_over_tcp_terminates_at_once() -> None:
    txn = Transaction.start(Kind.INVITE_CLIENT, reliable=True, now=0.0)
    txn.handle(Event.FAILURE, 1.0)
    assert txn.get_timer() == 1.0  # D = 0
    assert txn.handle_timer(1.0) == (Action.TERMINATE,)


def test_invite_client_2xx_goes_to_accepted_and_passes_every_2xx() -> None:
    txn = Transaction.start(Kind.INVITE_CLIENT, reliable=False, now=0.0)
    assert txn.handle(Event.SUCCESS, 1.0) == (Action.DELIVER,)
    assert txn.state is State.ACCEPTED
    # RFC 6026 §8.4: retransmitted or forked 2xx still reach the TU (end-to-end ACK)
    assert txn.handle(Event.SUCCESS, 2.0) == (Action.DELIVER,)
    assert txn.handle(Event.FAILURE, 2.5) == ()
    assert fire_until(txn, 100.0) == [(33.0, (Action.TERMINATE,))]  # M = 64*T1


def test_invite_client_transport_error() -> None:
    txn = Transaction.start(Kind.INVITE_CLIENT, reliable=True, now=0.0)
    assert txn.handle(Event.TRANSPORT_ERROR, 0.1) == (Action.TRANSPORT_FAILED, Action.TERMINATE)
    assert txn.terminated and txn.get_timer() is None


def test_non_invite_client_timer_e_caps_at_t2_and_f_times_out() -> None:
    txn = Transaction.start(Kind.NON_INVITE_CLIENT, reliable=False, now=0.0)
    fired = fire_until(txn, 100.0)
    resend = [t for t, actions in fired if Action.SEND_REQUEST in actions]
    # T1, 2T1, 4T1, then every T2 (4 s) until F = 64*T1 = 32 s (§17.1.2.2)
    assert resend == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, (Action.TIMEOUT, Action.TERMINATE))


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    txn = Transaction.start(Kind.NON_INVITE_CLIENT, reliable=False, now=0.0)
    fire_until(txn, 0.6)  # one retransmission at 0.5, next due at 1.5
    assert txn.handle(Event.PROVISIONAL, 0.7) == (Action.DELIVER,)
    fired = fire_until(txn, 100.0)
    resend = [t for t, actions in fired if Action.SEND_REQUEST in actions]
    assert resend == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert fired[-1][1] == (Action.TIMEOUT, Action.TERMINATE)


def test_non_invite_client_final_then_timer_k() -> None:
    udp = Transaction.start(Kind.NON_INVITE_CLIENT, reliable=False, now=0.0)
    assert udp.handle(Event.SUCCESS, 1.0) == (Action.DELIVER,)
    assert udp.handle(Event.SUCCESS, 1.5) == ()  # retransmission absorbed
    assert fire_until(udp, 100.0) == [(6.0, (Action.TERMINATE,))]  # K = T4
    tcp = Transaction.start(Kind.NON_INVITE_CLIENT, reliable=True, now=0.0)
    tcp.handle(Event.FAILURE, 1.0)
    assert fire_until(tcp, 100.0) == [(1.0, (Action.TERMINATE,))]


def test_invite_server_failure_retransmits_with_g_until_ack() -> None:
    txn = Transaction.start(Kind.INVITE_SERVER, reliable=False, now=0.0)
    assert txn.handle(Event.SEND_PROVISIONAL, 0.0) == (Action.SEND_RESPONSE,)
    assert txn.handle(Event.REQUEST, 0.3) == (Action.SEND_RESPONSE,)  # 100 again
    assert txn.handle(Event.SEND_FAILURE, 1.0) == (Action.SEND_RESPONSE,)
    fired = fire_until(txn, 9.0)
    assert [t for t, a in fired] == [1.5, 2.5, 4.5, 8.5]  # G: T1, 2T1, 4T1, T2 cap
    assert txn.handle(Event.REQUEST, 9.1) == (Action.SEND_RESPONSE,)
    assert txn.handle(Event.ACK, 9.2) == ()
    assert txn.state is State.CONFIRMED
    assert txn.handle(Event.ACK, 9.3) == ()  # ACK retransmissions absorbed
    assert fire_until(txn, 100.0) == [(14.2, (Action.TERMINATE,))]  # I = T4


def test_invite_server_timer_h_without_ack() -> None:
    txn = Transaction.start(Kind.INVITE_SERVER, reliable=True, now=0.0)
    txn.handle(Event.SEND_FAILURE, 1.0)
    assert fire_until(txn, 100.0) == [(33.0, (Action.TIMEOUT, Action.TERMINATE))]


def test_invite_server_accepted_sends_2xx_retransmissions_and_ends_with_l() -> None:
    txn = Transaction.start(Kind.INVITE_SERVER, reliable=False, now=0.0)
    assert txn.handle(Event.SEND_SUCCESS, 1.0) == (Action.SEND_RESPONSE,)
    assert txn.state is State.ACCEPTED
    assert txn.handle(Event.SEND_SUCCESS, 1.5) == (Action.SEND_RESPONSE,)
    assert txn.handle(Event.REQUEST, 1.6) == ()  # RFC 6026: INVITE retransmission absorbed
    assert txn.handle(Event.ACK, 1.7) == ()  # the ACK for 2xx is not ours (end-to-end)
    assert fire_until(txn, 100.0) == [(33.0, (Action.TERMINATE,))]


def test_non_invite_server_j() -> None:
    udp = Transaction.start(Kind.NON_INVITE_SERVER, reliable=False, now=0.0)
    assert udp.handle(Event.REQUEST, 0.1) == ()  # nothing sent yet: nothing to resend
    udp.handle(Event.SEND_PROVISIONAL, 0.2)
    assert udp.handle(Event.REQUEST, 0.3) == (Action.SEND_RESPONSE,)
    udp.handle(Event.SEND_SUCCESS, 1.0)
    assert udp.handle(Event.REQUEST, 2.0) == (Action.SEND_RESPONSE,)
    assert fire_until(udp, 100.0) == [(33.0, (Action.TERMINATE,))]
    tcp = Transaction.start(Kind.NON_INVITE_SERVER, reliable=True, now=0.0)
    tcp.handle(Event.SEND_FAILURE, 1.0)
    assert fire_until(tcp, 100.0) == [(1.0, (Action.TERMINATE,))]


def test_custom_timer_settings() -> None:
    txn = Transaction.start(
        Kind.INVITE_CLIENT, reliable=False, now=10.0, settings=TimerSettings(t1=0.1, t2=1.0)
    )
    fired = fire_until(txn, 100.0)
    assert fired[0][0] == pytest.approx(10.1)
    assert fired[-1][0] == pytest.approx(16.4)  # B = 64 * 0.1


def test_table_never_leaves_terminated_and_every_target_state_is_reachable() -> None:
    for (kind, state, _), transition in TRANSITIONS.items():
        assert state is not State.TERMINATED
        assert transition.next_state is not State.TERMINATED or (
            Action.TERMINATE in transition.actions
        ), (kind, state)


@pytest.mark.parametrize(
    ("status", "network", "tu"),
    [
        (100, Event.PROVISIONAL, Event.SEND_PROVISIONAL),
        (183, Event.PROVISIONAL, Event.SEND_PROVISIONAL),
        (200, Event.SUCCESS, Event.SEND_SUCCESS),
        (302, Event.FAILURE, Event.SEND_FAILURE),
        (603, Event.FAILURE, Event.SEND_FAILURE),
    ],
)
def test_status_classification(status: int, network: Event, tu: Event) -> None:
    assert event_for_status(status) is network
    assert tu_event_for_status(status) is tu
