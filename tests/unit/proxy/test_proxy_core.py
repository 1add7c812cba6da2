"""The stateful proxy core between fake phones (UAC alice inside, UAS bob/carol outside)."""

from __future__ import annotations

import logging

import pytest
from proxy_harness import (
    ALICE,
    BOB,
    CAROL,
    StaticRouter,
    config,
    invite,
    run_timers,
    sent_to,
)

from alg.builders import build_response
from alg.proxy import ProxyCore
from alg.sip import SipMessage, parse_message


def new_core(**changes: object) -> tuple[ProxyCore, StaticRouter]:
    router = StaticRouter({"bob": [BOB], "both": [BOB, CAROL]})
    return ProxyCore(config(**changes), router), router


def respond(
    request: SipMessage, status: int, tag: str = "b1", headers: tuple[tuple[str, bytes], ...] = ()
) -> bytes:
    return build_response(request, status, to_tag=tag, extra_headers=headers)


def test_invite_is_tried_forwarded_with_via_record_route_and_max_forwards() -> None:
    core, _ = new_core()
    out = core.receive(invite(), ALICE, 0.0)
    (trying,) = sent_to(out, ALICE)
    assert trying.status == 100
    (forwarded,) = sent_to(out, BOB)
    assert str(forwarded.request_uri) == "sip:bob@203.0.113.20:5060"
    top, alice_via = forwarded.vias
    assert (top.host, top.port, top.is_rfc3261_branch) == ("203.0.113.1", 5060, True)
    assert (alice_via.received, alice_via.rport) == ("10.77.0.10", 5060)  # RFC 3581
    assert forwarded.max_forwards == 69
    # RFC 5658 double Record-Route: the entry facing bob first
    assert [r.uri.host for r in forwarded.record_routes] == ["203.0.113.1", "10.77.0.1"]  # type: ignore[union-attr]
    assert forwarded.body == parse_message(invite()).body


def test_full_call_ringing_answer_ack_bye() -> None:
    core, _ = new_core()
    forwarded = sent_to(core.receive(invite(), ALICE, 0.0), BOB)[0]
    (ringing,) = sent_to(core.receive(respond(forwarded, 180), BOB, 0.1), ALICE)
    assert ringing.status == 180 and len(ringing.vias) == 1
    record_route = (
        b"<sip:203.0.113.1:5060;transport=udp;lr;r2=on>, "
        b"<sip:10.77.0.1:5060;transport=udp;lr;r2=on>"
    )
    ok = respond(
        forwarded,
        200,
        headers=(
            ("Record-Route", record_route),
            ("Contact", b"<sip:bob@203.0.113.20:5060>"),
        ),
    )
    (answer,) = sent_to(core.receive(ok, BOB, 0.2), ALICE)
    assert answer.status == 200 and answer.to.tag == "b1"
    # alice's ACK for the 2xx: a new transaction, routed through the Record-Route set
    ack = (
        b"ACK sip:bob@203.0.113.20:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bKack1;rport\r\n"
        b"Route: <sip:10.77.0.1:5060;transport=udp;lr;r2=on>, "
        b"<sip:203.0.113.1:5060;transport=udp;lr;r2=on>\r\n"
        b"Max-Forwards: 70\r\nTo: <sip:bob@example.net>;tag=b1\r\n"
        b"From: Alice <sip:alice@example.com>;tag=a1\r\nCall-ID: call-1@10.77.0.10\r\n"
        b"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    (ack_out,) = sent_to(core.receive(ack, ALICE, 0.3), BOB)
    assert ack_out.method == "ACK" and ack_out.routes == ()  # both of our Routes removed
    assert ack_out.top_via.host == "203.0.113.1"
    bye = (
        ack.replace(b"ACK sip:", b"BYE sip:")
        .replace(b"CSeq: 1 ACK", b"CSeq: 2 BYE")
        .replace(b"z9hG4bKack1", b"z9hG4bKbye1")
    )
    (bye_out,) = sent_to(core.receive(bye, ALICE, 5.0), BOB)
    (bye_ok,) = sent_to(core.receive(respond(bye_out, 200), BOB, 5.1), ALICE)
    assert bye_ok.status == 200 and bye_ok.cseq.method == "BYE"
    run_timers(core, 1000.0)
    assert core.transaction_count == 0  # nothing leaks


def test_retransmitted_invite_is_absorbed_and_last_response_resent() -> None:
    core, router = new_core()
    core.receive(invite(), ALICE, 0.0)
    out = core.receive(invite(), ALICE, 0.4)
    assert [m.status for m in sent_to(out, ALICE)] == [100]
    assert sent_to(out, BOB) == [] and router.calls == 1


def test_failure_is_acked_hop_by_hop_and_forwarded_and_upstream_ack_absorbed() -> None:
    core, _ = new_core()
    forwarded = sent_to(core.receive(invite(), ALICE, 0.0), BOB)[0]
    out = core.receive(respond(forwarded, 486), BOB, 1.0)
    (ack,) = sent_to(out, BOB)
    assert ack.method == "ACK" and ack.top_via.branch == forwarded.top_via.branch
    (busy,) = sent_to(out, ALICE)
    assert busy.status == 486
    upstream_ack = (
        b"ACK sip:bob@example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bKalice1;rport\r\n"
        b"Max-Forwards: 70\r\nTo: <sip:bob@example.net>;tag=b1\r\n"
        b"From: Alice <sip:alice@example.com>;tag=a1\r\nCall-ID: call-1@10.77.0.10\r\n"
        b"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    assert core.receive(upstream_ack, ALICE, 1.1) == []
    # a retransmitted 486 from bob is ACKed again, not forwarded again
    again = core.receive(respond(forwarded, 486), BOB, 1.2)
    assert [m.method for m in sent_to(again, BOB)] == ["ACK"] and sent_to(again, ALICE) == []
    run_timers(core, 1000.0)
    assert core.transaction_count == 0


def test_cancel_after_ringing() -> None:
    core, _ = new_core()
    forwarded = sent_to(core.receive(invite(), ALICE, 0.0), BOB)[0]
    core.receive(respond(forwarded, 180), BOB, 0.1)
    cancel = (
        b"CANCEL sip:bob@example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bKalice1;rport\r\n"
        b"Max-Forwards: 70\r\nTo: <sip:bob@example.net>\r\n"
        b"From: Alice <sip:alice@example.com>;tag=a1\r\nCall-ID: call-1@10.77.0.10\r\n"
        b"CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
    out = core.receive(cancel, ALICE, 2.0)
    (cancel_ok,) = sent_to(out, ALICE)
    assert (cancel_ok.status, cancel_ok.cseq.method) == (200, "CANCEL")
    (downstream,) = sent_to(out, BOB)
    assert downstream.method == "CANCEL" and downstream.top_via.branch == forwarded.top_via.branch
    assert sent_to(core.receive(respond(downstream, 200), BOB, 2.1), ALICE) == []  # hop-by-hop
    out = core.receive(respond(forwarded, 487), BOB, 2.2)
    assert [m.status for m in sent_to(out, ALICE)] == [487]


def test_cancel_before_any_provisional_waits_for_one() -> None:
    core, _ = new_core()
    forwarded = sent_to(core.receive(invite(), ALICE, 0.0), BOB)[0]
    cancel = (
        invite()
        .split(b"Contact:")[0]
        .replace(b"INVITE sip:", b"CANCEL sip:")
        .replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
        + b"Content-Length: 0\r\n\r\n"
    )
    out = core.receive(cancel, ALICE, 0.05)
    assert [m.status for m in sent_to(out, ALICE)] == [200]
    assert sent_to(out, BOB) == []  # §9.1: no CANCEL before a provisional
    out = core.receive(respond(forwarded, 100), BOB, 0.2)
    assert [m.method for m in sent_to(out, BOB)] == ["CANCEL"]


def test_forking_best_response_and_2xx_cancels_the_other_branch() -> None:
    core, _ = new_core()
    out = core.receive(invite(to_user="both"), ALICE, 0.0)
    to_bob, to_carol = sent_to(out, BOB)[0], sent_to(out, CAROL)[0]
    assert to_bob.top_via.branch != to_carol.top_via.branch
    core.receive(respond(to_carol, 180, tag="c1"), CAROL, 0.1)
    out = core.receive(respond(to_bob, 200, tag="b1"), BOB, 0.2)
    assert [m.status for m in sent_to(out, ALICE)] == [200]
    assert [m.method for m in sent_to(out, CAROL)] == ["CANCEL"]
    out = core.receive(respond(to_carol, 487, tag="c1"), CAROL, 0.3)
    assert sent_to(out, ALICE) == []  # late final after a 2xx is absorbed


def test_forking_all_fail_best_is_sent_once_all_are_final() -> None:
    core, _ = new_core()
    out = core.receive(invite(to_user="both"), ALICE, 0.0)
    to_bob, to_carol = sent_to(out, BOB)[0], sent_to(out, CAROL)[0]
    assert sent_to(core.receive(respond(to_bob, 503), BOB, 0.1), ALICE) == []
    out = core.receive(respond(to_carol, 486, tag="c1"), CAROL, 0.2)
    assert [m.status for m in sent_to(out, ALICE)] == [486]


def test_unanswered_branch_retransmits_then_408() -> None:
    core, _ = new_core()
    core.receive(invite(), ALICE, 0.0)
    fired = run_timers(core, 100.0)
    resent = [t for t, out in fired for m in sent_to(out, BOB) if m.method == "INVITE"]
    assert resent[:3] == [0.5, 1.5, 3.5]  # timer A
    finals = [(t, m.status) for t, out in fired for m in sent_to(out, ALICE)]
    assert (32.0, 408) in finals  # timer B, then §16.7 step 6: 408
    assert core.transaction_count == 0


def test_timer_c_cancels_a_branch_that_rings_too_long() -> None:
    core, _ = new_core(timer_c=60.0)
    forwarded = sent_to(core.receive(invite(), ALICE, 0.0), BOB)[0]
    core.receive(respond(forwarded, 180), BOB, 1.0)
    fired = run_timers(core, 70.0)
    cancels = [(t, m.method, m.top_via.branch) for t, out in fired for m in sent_to(out, BOB)]
    assert cancels[0] == (61.0, "CANCEL", forwarded.top_via.branch)
    # bob never answers the CANCEL: it is retransmitted (timer E), nothing else is sent
    assert [t for t, _, _ in cancels[:3]] == [61.0, 61.5, 62.5]
    assert {c[1:] for c in cancels} == {("CANCEL", forwarded.top_via.branch)}


def test_max_forwards_zero_loop_and_proxy_require() -> None:
    core, _ = new_core(supported_extensions=frozenset({"sec-agree"}))
    out = core.receive(invite(max_forwards=0), ALICE, 0.0)
    assert [m.status for m in sent_to(out, ALICE)] == [100, 483]
    out = core.receive(
        invite(call_id="c2", branch="z9hG4bKx2", extra=b"Proxy-Require: foo, sec-agree\r\n"),
        ALICE,
        0.0,
    )
    statuses = sent_to(out, ALICE)
    assert [m.status for m in statuses] == [100, 420]
    assert statuses[1].header("unsupported") == "foo"
    # a request that comes back to us unchanged is a loop (§16.3 step 4)
    first = sent_to(core.receive(invite(call_id="c3", branch="z9hG4bKx3"), ALICE, 0.0), BOB)[0]
    looped = first.raw.replace(b"INVITE sip:bob@203.0.113.20:5060", b"INVITE sip:bob@example.net")
    out = core.receive(looped, BOB, 0.1)
    assert [m.status for m in sent_to(out, BOB)] == [100, 482]


def test_unknown_user_404_and_malformed_400() -> None:
    core, _ = new_core()
    out = core.receive(invite(to_user="nobody"), ALICE, 0.0)
    assert [m.status for m in sent_to(out, ALICE)] == [100, 404]
    bad = invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    (answer,) = sent_to(core.receive(bad, ALICE, 0.0), ALICE)
    assert answer.status == 400 and "CSeq" in answer.start_line.reason  # type: ignore[union-attr]
    assert core.receive(b"\x00\x01garbage", ALICE, 0.0) == []
    assert core.stats["malformed"] == 2


def test_stateless_mode_forwards_without_state() -> None:
    core, _ = new_core(stateless=True)
    out = core.receive(invite(), ALICE, 0.0)
    (forwarded,) = sent_to(out, BOB)
    assert sent_to(out, ALICE) == []  # no 100 Trying from a stateless proxy
    again = sent_to(core.receive(invite(), ALICE, 0.5), BOB)[0]
    assert again.top_via.branch == forwarded.top_via.branch  # §16.11: same branch
    (answer,) = sent_to(core.receive(respond(forwarded, 200), BOB, 0.6), ALICE)
    assert answer.status == 200 and len(answer.vias) == 1
    assert core.transaction_count == 0 and core.get_timer() is None


def test_stray_response_and_broadcast_via_dropped() -> None:
    core, _ = new_core()
    forwarded = sent_to(core.receive(invite(), ALICE, 0.0), BOB)[0]
    stray = respond(forwarded, 486).replace(forwarded.top_via.branch.encode(), b"z9hG4bKnotours")  # type: ignore[union-attr]
    assert core.receive(stray, BOB, 0.1) == []
    not_ours = respond(forwarded, 180).replace(
        b"203.0.113.1:5060;branch", b"198.51.100.9:5060;branch"
    )
    assert core.receive(not_ours, BOB, 0.1) == []


def test_bad_start_line_and_framing_still_get_an_answer() -> None:
    core, _ = new_core()
    bad_version = invite().replace(b"SIP/2.0\r\nVia", b"SIP/7.0\r\nVia", 1)
    (answer,) = sent_to(core.receive(bad_version, ALICE, 0.0), ALICE)
    assert answer.status == 505 and answer.call_id == "call-1@10.77.0.10"
    too_long = invite().replace(b"Content-Length: ", b"Content-Length: 9")
    (answer,) = sent_to(core.receive(too_long, ALICE, 0.0), ALICE)
    assert answer.status == 400 and "Content-Length" in answer.start_line.reason  # type: ignore[union-attr]
    # an ACK or a response with a bad start line is never answered
    assert core.receive(bad_version.replace(b"INVITE sip:", b"ACK sip:", 1), ALICE, 0.0) == []
    assert core.receive(b"SIP/2.0 2000 Bad\r\nVia: x\r\n\r\n", BOB, 0.0) == []


def test_core_log_records_carry_the_call_id(caplog: pytest.LogCaptureFixture) -> None:
    from alg.logsetup import CallIdFilter

    core, _ = new_core()
    caplog.handler.addFilter(CallIdFilter())
    with caplog.at_level(logging.DEBUG, logger="sipwall.alg.proxy"):
        core.receive(invite(to_user="nobody"), ALICE, 0.0)
    ids = {getattr(record, "call_id", None) for record in caplog.records}
    assert ids == {"call-1@10.77.0.10"}
    assert any("answered 404" in record.getMessage() for record in caplog.records)


def test_alg_log_settings_from_config() -> None:
    from alg.config import parse_config
    from alg.main import log_settings

    base = {"inside": {"address": "10.77.0.1"}, "outside": {"address": "203.0.113.1"}}
    settings = log_settings(
        parse_config({**base, "log": {"level": "debug", "syslog": "10.77.0.5:5514"}})
    )
    assert (settings.level, settings.syslog_host, settings.syslog_port) == (
        "DEBUG",
        "10.77.0.5",
        5514,
    )
    assert log_settings(parse_config(base)).syslog_host is None


def test_finished_calls_leave_no_reference_cycles() -> None:
    # Cycles are only freed by full garbage collections, which pause the proxy for
    # hundreds of ms under load; every object a call creates must go by refcount.
    import gc

    core, _ = new_core()
    # Earlier tests' garbage first: compiled (mypyc) objects can take two collections
    # to go, and only what these calls leave behind may count below.
    while gc.collect():
        pass
    gc.disable()
    try:
        for i in range(20):
            forwarded = sent_to(
                core.receive(invite(call_id=f"gc-{i}", branch=f"z9hG4bKgc{i}"), ALICE, i), BOB
            )[0]
            status = (200, 486, 180)[i % 3]
            core.receive(respond(forwarded, status), BOB, i + 0.1)
        core.receive(invite(to_user="both", call_id="gc-fork", branch="z9hG4bKgcf"), ALICE, 30)
        run_timers(core, 10_000.0)
        assert core.transaction_count == 0
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_non_invite_timeout_is_never_answered_408() -> None:
    core, _ = new_core()
    options = (
        invite()
        .replace(b"INVITE sip:", b"OPTIONS sip:")
        .replace(b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS")
    )
    core.receive(options, ALICE, 0.0)
    fired = run_timers(core, 100.0)
    # RFC 4320 §4.1: the request is retransmitted and then dropped silently
    assert [m.status for _, out in fired for m in sent_to(out, ALICE)] == []
    assert core.transaction_count == 0


def test_a_user_at_our_address_is_not_strict_routing() -> None:
    from alg.forwarding import plan_routes

    via_us = b"Route: <sip:10.77.0.1:5060;lr>\r\n"
    user_at_us = parse_message(
        invite(extra=via_us).replace(b"INVITE sip:bob@example.net", b"INVITE sip:alice@10.77.0.1")
    )
    plan = plan_routes(user_at_us, config())
    assert (plan.request_uri, plan.ours_on_top) == (None, 1)  # loose: drop our Route only
    strict = parse_message(
        invite(extra=b"Route: <sip:bob@203.0.113.20>\r\n").replace(
            b"INVITE sip:bob@example.net", b"INVITE sip:10.77.0.1:5060;lr"
        )
    )
    assert plan_routes(strict, config()).request_uri == "sip:bob@203.0.113.20"
