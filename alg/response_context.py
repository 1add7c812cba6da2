"""The response context of a forwarded request (RFC 3261 §16.7).

A stateful proxy that forks a request keeps one response context per server transaction:
it collects the final responses of every branch, forwards provisional responses and 2xx
at once, and when every branch has finished sends the single best final response
upstream. The rules, all from §16.7:

* step 5: every provisional but 100 is forwarded immediately;
* step 5/10: every 2xx is forwarded immediately (several 2xx to a forked INVITE all go
  up) and the branches still pending are cancelled;
* a 6xx ends the search (§16.7 step 5, §16.7 step 6 "6xx ... MUST be chosen"): pending
  branches are cancelled and the 6xx becomes the best response;
* step 6: otherwise, once every branch is final, the response of the lowest class is
  chosen, a 503 is turned into 500, and 401/407 challenges are aggregated (step 7);
* no response at all from any branch (all timed out): 408 (step 6).

The class here only decides; it neither parses nor sends. Statuses are ints, responses
are opaque to it (the proxy core keeps the bytes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")


class Verdict(enum.Enum):
    FORWARD = "forward this response upstream now"
    FORWARD_AND_CANCEL_OTHERS = "forward it and cancel the pending branches"
    HOLD = "keep it as a candidate; nothing to send yet"
    ABSORB = "drop it (100 Trying, or a late final after the context is complete)"


@dataclass(frozen=True, slots=True)
class Decision(Generic[R]):
    verdict: Verdict
    # When the context completes with this event: the final response to send upstream
    # (one of the collected ones) or, for a synthesized 408/500, None with `status` set.
    final: R | None = None
    final_status: int | None = None


def _rank(status: int) -> tuple[int, int]:
    """Lower is better among non-2xx finals (§16.7 step 6): the lowest response class
    wins (3xx, then 4xx, then 5xx); within a class the RFC allows any, and the lowest
    code keeps the choice deterministic. A 6xx never gets here: it ends the context."""
    return (status // 100, status)


@dataclass(slots=True)
class ResponseContext(Generic[R]):
    """Collects branch outcomes; `pending` is the set of branch ids still without a
    final response."""

    pending: set[int] = field(default_factory=set)
    finals: list[tuple[int, R]] = field(default_factory=list)
    answered: bool = False  # a 2xx has been forwarded
    done: bool = False  # the best final response has been decided

    def add_branch(self, branch: int) -> None:
        self.pending.add(branch)

    def provisional(self, status: int) -> Verdict:
        if self.done or self.answered or status == 100:
            return Verdict.ABSORB
        return Verdict.FORWARD

    def final(self, branch: int, status: int, response: R) -> Decision[R]:
        """A branch received final `status`."""
        self.pending.discard(branch)
        if 200 <= status < 300:
            first = not self.answered
            self.answered = True
            self.done = True
            # §16.7 step 10: forward every 2xx; cancel pending branches on the first
            verdict = Verdict.FORWARD_AND_CANCEL_OTHERS if first else Verdict.FORWARD
            return Decision(verdict)
        if self.done:
            return Decision(Verdict.ABSORB)
        if status >= 600:
            self.done = True
            return Decision(Verdict.FORWARD_AND_CANCEL_OTHERS, final=response, final_status=status)
        self.finals.append((status, response))
        return self._maybe_complete()

    def branch_failed(self, branch: int) -> Decision[R]:
        """A branch ended without a response (timeout or transport error)."""
        self.pending.discard(branch)
        if self.done:
            return Decision(Verdict.ABSORB)
        return self._maybe_complete()

    def _maybe_complete(self) -> Decision[R]:
        if self.pending:
            return Decision(Verdict.HOLD)
        self.done = True
        if not self.finals:
            return Decision(Verdict.FORWARD, final=None, final_status=408)
        status, response = min(self.finals, key=lambda item: _rank(item[0]))
        if status == 503:
            # §16.7 step 6: a 503 from downstream must not make upstream think *we*
            # are unavailable
            return Decision(Verdict.FORWARD, final=None, final_status=500)
        return Decision(Verdict.FORWARD, final=response, final_status=status)

    def challenges(self) -> list[R]:
        """All 401/407 responses collected, for aggregating their challenges (step 7)."""
        return [response for status, response in self.finals if status in (401, 407)]
