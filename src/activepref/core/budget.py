"""Budgets: a run stops cleanly before an iteration that would not fit (``budget:`` in the
config; raised by ``activepref resume RUN --max-usd/--max-judge-calls/--max-generated-tokens``).

Before each new iteration the run adds what it has spent (:mod:`activepref.core.costs`: every
call behind the dataset, cache hits included) to what the iteration is projected to spend: the
most that any finished iteration of the run has spent, per counter, or before the first the
config's estimate (:mod:`activepref.core.estimate`, answers at ``max_tokens``). If the sum
passes a limit, the run stops there: everything done is committed, ``status`` says "stopped:
budget", the exit code is 0. The decision depends only on the run's own record, never on what
the cache held or where a process was killed, so a run stopped by a budget and resumed with a
larger one ends with the dataset a run started with the larger budget ends with. An iteration
can still overshoot its projection (longer answers, judge retries); the next check sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from activepref.core.costs import Usage
from activepref.errors import RunStopped

if TYPE_CHECKING:
    from activepref.config import BudgetConfig


class BudgetExhausted(RunStopped):
    """The next iteration would pass a limit of ``budget:``."""

    reason = "budget"


@dataclass(frozen=True)
class BudgetCheck:
    """spent: iterations before ``iteration``; projected: what ``iteration`` is expected to add;
    over: the limits that spent + projected would pass (empty: it fits)."""

    iteration: int
    spent: Usage
    projected: Usage
    over: list[str]

    def message(self) -> str:
        after = self.spent + self.projected
        return (
            f"iteration {self.iteration} would bring the run to {'; '.join(self.over)}; spent so far: "
            f"${self.spent.usd:.4f}, {self.spent.judge_calls} judge calls, {self.spent.generated_tokens} generated tokens "
            f"(projected after it: ${after.usd:.4f}, {after.judge_calls}, {after.generated_tokens}); raise the limit with "
            "`activepref resume RUN --max-usd/--max-judge-calls/--max-generated-tokens`"
        )


def check(budget: BudgetConfig, iteration: int, finished: list[Usage], started: list[Usage], estimate: Usage) -> BudgetCheck:
    """Whether ``iteration`` fits: ``finished`` are the usages of the iterations before it,
    ``started`` those of later iterations already begun (counted as spent), ``estimate`` the
    projection used when no iteration has finished."""
    spent = Usage()
    for u in [*finished, *started]:
        spent = spent + u
    projected = Usage()
    for u in finished:
        projected = projected.elementwise_max(u)
    if not finished:
        projected = estimate
    after = spent + projected
    over = []
    if budget.max_usd is not None and after.usd > budget.max_usd:
        over.append(f"${after.usd:.4f} > max_usd ${budget.max_usd:g}")
    if budget.max_judge_calls is not None and after.judge_calls > budget.max_judge_calls:
        over.append(f"{after.judge_calls} judge calls > max_judge_calls {budget.max_judge_calls}")
    if budget.max_generated_tokens is not None and after.generated_tokens > budget.max_generated_tokens:
        over.append(f"{after.generated_tokens} generated tokens > max_generated_tokens {budget.max_generated_tokens}")
    return BudgetCheck(iteration, spent, projected, over)
