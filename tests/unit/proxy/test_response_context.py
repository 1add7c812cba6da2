from __future__ import annotations

from alg.response_context import ResponseContext, Verdict


def context(branches: int) -> ResponseContext[str]:
    ctx: ResponseContext[str] = ResponseContext()
    for branch in range(branches):
        ctx.add_branch(branch)
    return ctx


def test_provisionals_forwarded_but_100() -> None:
    ctx = context(2)
    assert ctx.provisional(100) is Verdict.ABSORB
    assert ctx.provisional(180) is Verdict.FORWARD
    assert ctx.provisional(183) is Verdict.FORWARD


def test_first_2xx_forwarded_and_cancels_others_later_2xx_forwarded_too() -> None:
    ctx = context(3)
    assert ctx.final(1, 200, "ok-1").verdict is Verdict.FORWARD_AND_CANCEL_OTHERS
    assert ctx.final(2, 200, "ok-2").verdict is Verdict.FORWARD
    assert ctx.final(0, 487, "terminated").verdict is Verdict.ABSORB
    assert ctx.provisional(180) is Verdict.ABSORB


def test_best_final_waits_for_all_branches_and_picks_lowest_class() -> None:
    ctx = context(3)
    assert ctx.final(0, 503, "busy-server").verdict is Verdict.HOLD
    assert ctx.final(1, 486, "busy").verdict is Verdict.HOLD
    decision = ctx.final(2, 404, "not-found")
    assert decision.verdict is Verdict.FORWARD
    assert (decision.final, decision.final_status) == ("not-found", 404)


def test_6xx_ends_the_search_at_once() -> None:
    ctx = context(2)
    decision = ctx.final(0, 603, "decline")
    assert decision.verdict is Verdict.FORWARD_AND_CANCEL_OTHERS
    assert decision.final == "decline"
    assert ctx.final(1, 486, "busy").verdict is Verdict.ABSORB


def test_503_becomes_500() -> None:
    ctx = context(1)
    decision = ctx.final(0, 503, "unavailable")
    assert (decision.final, decision.final_status) == (None, 500)


def test_no_response_at_all_is_408() -> None:
    ctx = context(2)
    assert ctx.branch_failed(0).verdict is Verdict.HOLD
    decision = ctx.branch_failed(1)
    assert (decision.verdict, decision.final, decision.final_status) == (Verdict.FORWARD, None, 408)


def test_timeout_and_failure_mix_keeps_the_real_response() -> None:
    ctx = context(2)
    ctx.branch_failed(0)
    decision = ctx.final(1, 486, "busy")
    assert (decision.final, decision.final_status) == ("busy", 486)


def test_challenges_are_collected_for_aggregation() -> None:
    ctx = context(3)
    ctx.final(0, 401, "www")
    ctx.final(1, 407, "proxy")
    decision = ctx.final(2, 404, "nf")
    assert decision.final_status == 401
    assert ctx.challenges() == ["www", "proxy"]
