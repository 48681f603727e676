"""Human judges: ``human`` (people label every selected pair) and ``routed`` (people label the
pairs the ensemble is least sure about, a model judge the rest).

Both compare pairs. An iteration's pairs become annotation tasks in the run store
(:mod:`activepref.annotate.queue`), which annotators label in the web app (``activepref
annotate RUN``). The judge then waits, polling the store, until every task has its
``labels_per_pair`` labels; with ``wait: false`` (``run``/``resume --no-wait``) it stops the
run instead (status ``stopped: awaiting labels``) and ``resume`` picks it up once the labels
are in. A pair's verdict is the majority of its labels (an even split is a tie: P = 0.5); a
pair skipped ``max_skips`` times before it has its labels is recorded as a judge failure.

``routed`` ranks the iteration's pairs by the ensemble's uncertainty about their preference
(std over heads of σ(r_a - r_b), :func:`activepref.judges.routing.preference_uncertainty`) and
sends the top ``share`` (or ``count``) to humans. The route of every pair is committed with the
human pairs' tasks before any judging, so a resumed run routes exactly as before. The model
side is any other judge kind (``options.judge``, default ``pairwise``) on ``judge.model``; a
scoring judge (likert, replay, ...) is turned into a comparison by Bradley-Terry,
P(first better) = σ(s_first - s_second).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from activepref.errors import ConfigError, JudgeError, RunStopped
from activepref.judges import (
    JUDGES,
    CompareRequest,
    ComparingJudge,
    Comparison,
    Judge,
    JudgeResources,
    JudgeScore,
    ScoreRequest,
    judge_compares,
    make_judge,
    register_judge,
)
from activepref.judges.routing import route_to_humans

if TYPE_CHECKING:
    from activepref.annotate.queue import AnnotationQueue, TaskOutcome
    from activepref.backends.base import ChatRequest
    from activepref.config import JudgeConfig

log = logging.getLogger(__name__)

ALL_AT_ONCE = 1 << 30  # an iteration's pairs reach the judge in one call: they become tasks together
PROGRESS_EVERY_S = 60.0  # a waiting judge logs a progress line at least this often (and on every change)
HUMAN_KINDS = ("human", "routed")


class AwaitingLabels(RunStopped):
    """The run stopped to wait for human labels (``--no-wait``): ``activepref annotate RUN``
    collects them, ``activepref resume RUN`` goes on."""

    reason = "awaiting labels"


class HumanOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels_per_pair: int = Field(1, ge=1, description="labels each pair needs (from different annotators); the majority decides")
    max_skips: int = Field(3, ge=1, description="skips after which a pair without its labels is recorded as a judge failure")
    poll_interval_s: float = Field(2.0, gt=0, description="how often a waiting run looks for new labels")
    wait: bool = Field(True, description="wait for the labels (false: stop at 'awaiting labels'; `resume` goes on)")
    max_wait_s: float | None = Field(None, gt=0, description="wait at most this long for a judge step's labels, then stop at "
                                     "'awaiting labels' as with wait: false (a batch job's time limit; `resume` goes on)")


class RoutedOptions(HumanOptions):
    judge: str = Field("pairwise", description="the model judge kind for the pairs humans do not get")
    judge_options: dict[str, Any] = Field(default_factory=dict, description="that judge kind's own options")
    share: float | None = Field(None, gt=0, le=1, description="share of each iteration's pairs humans label (the most uncertain)")
    count: int | None = Field(None, ge=0, description="or: how many of each iteration's pairs humans label")

    @model_validator(mode="after")
    def _share_or_count(self) -> RoutedOptions:
        if (self.share is None) == (self.count is None):
            raise ValueError("give exactly one of share (e.g. 0.2) or count (pairs per iteration) for the human side")
        if self.judge in HUMAN_KINDS:
            raise ValueError(f"judge: the model side of a routed judge cannot be {self.judge!r}")
        if self.judge not in JUDGES:
            JUDGES.check_name(self.judge)
        return self


def without_waiting(config: JudgeConfig) -> JudgeConfig:
    """``config`` with a human judge's ``wait`` off (``--no-wait``: this session only, not
    recorded in the run); other judges unchanged."""
    if config.kind not in HUMAN_KINDS:
        return config
    return config.model_copy(update={"options": {**config.options, "wait": False}})


def verdict_probability(outcome: TaskOutcome) -> float:
    """P(first better) of a complete task: 1, 0, or 0.5 for a tie."""
    return {"first": 1.0, "second": 0.0}.get(outcome.verdict, 0.5)


class HumanJudge:
    """Annotation tasks in the run store; the verdicts of the people who label them."""

    compares = True
    batch_size = ALL_AT_ONCE

    def __init__(self, queue: AnnotationQueue, options: HumanOptions, run_dir: str = "RUN") -> None:
        self.queue = queue
        self.options = options
        self.run_dir = run_dir
        self.name = "human"

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Comparison | JudgeError]:
        pairs = [(r.first_idx, r.second_idx) for r in requests]
        if pairs:
            self.queue.add_tasks(_iteration(requests), pairs, self.options.labels_per_pair, self.options.max_skips)
        return self.collect(pairs)

    def collect(self, pairs: Sequence[tuple[int, int]]) -> list[Comparison | JudgeError]:
        """Each pair's verdict once every task is decided (waiting, or AwaitingLabels)."""
        last_line, last_done = 0.0, -1
        started = time.monotonic()
        while True:
            outcomes = self.queue.outcomes(pairs)
            missing = [p for p in pairs if p not in outcomes]
            if missing:
                raise JudgeError(f"no annotation task for pair {missing[0]}")
            open_ = [p for p in pairs if outcomes[p].state == "open"]
            if not open_:
                return [self._result(outcomes[p]) for p in pairs]
            done = len(pairs) - len(open_)
            labels = sum(len(outcomes[p].votes) for p in pairs)
            now = time.monotonic()
            waited_out = self.options.max_wait_s is not None and now - started >= self.options.max_wait_s
            if not self.options.wait or waited_out:
                raise AwaitingLabels(
                    (f"waited {self.options.max_wait_s:g} s (max_wait_s): " if waited_out else "")
                    + f"{len(open_)} of {len(pairs)} pair(s) await human labels; collect them with `activepref annotate "
                    f"{self.run_dir}` (add people with --add-annotator NAME), then `activepref resume {self.run_dir}`"
                )
            if done != last_done or now - last_line >= PROGRESS_EVERY_S:
                log.info("awaiting labels: %d/%d pair(s) decided, %d label(s) in (`activepref annotate %s`)",
                         done, len(pairs), labels, self.run_dir)
                last_line, last_done = now, done
            pause = self.options.poll_interval_s
            if self.options.max_wait_s is not None:  # wake for the deadline, not a poll interval after it
                pause = max(0.0, min(pause, started + self.options.max_wait_s - now))
            time.sleep(pause)

    def _result(self, outcome: TaskOutcome) -> Comparison | JudgeError:
        if outcome.state == "complete":
            return Comparison(verdict_probability(outcome))
        return JudgeError(
            f"annotation task {outcome.task_id}: skipped {outcome.skips} time(s) (max_skips {self.options.max_skips}) "
            f"with {len(outcome.votes)} of {outcome.labels_needed} label(s)"
        )


class RoutedJudge:
    """The most uncertain pairs to people, the rest to a model judge."""

    compares = True
    batch_size = ALL_AT_ONCE
    wants_uncertainty = True

    def __init__(self, human: HumanJudge, model_judge: Judge | ComparingJudge, options: RoutedOptions) -> None:
        self.human = human
        self.model_judge = model_judge
        self.options = options
        self.name = f"routed|{model_judge.name}"

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Comparison | JudgeError]:
        queue, opts = self.human.queue, self.options
        pairs = [(r.first_idx, r.second_idx) for r in requests]
        routes = queue.routes(pairs)
        new = [i for i, p in enumerate(pairs) if p not in routes]
        if new:  # first sight of these pairs: route them, and commit the routes with the human tasks
            u = np.asarray([np.nan if requests[i].uncertainty is None else requests[i].uncertainty for i in new], dtype=np.float64)
            to_humans = route_to_humans(u, opts.share, opts.count)  # [len(new)]
            decided = {pairs[i]: (bool(h), None if math.isnan(x) else float(x)) for i, h, x in zip(new, to_humans, u)}
            queue.commit_routes(_iteration(requests), decided, opts.labels_per_pair, opts.max_skips)
            routes.update({p: h for p, (h, _) in decided.items()})
        by_model = [i for i, p in enumerate(pairs) if not routes[p]]
        by_people = [i for i, p in enumerate(pairs) if routes[p]]
        results: list[Comparison | JudgeError | None] = [None] * len(pairs)
        if by_model:
            for i, res in zip(by_model, self._model_verdicts([requests[i] for i in by_model])):
                results[i] = res
        if by_people:  # after the model side: its answers are in the request cache if this stops
            for i, res in zip(by_people, self.human.collect([pairs[i] for i in by_people])):
                results[i] = res
        return [r if r is not None else JudgeError("no verdict") for r in results]

    def _model_verdicts(self, requests: Sequence[CompareRequest]) -> list[Comparison | JudgeError]:
        inner = self.model_judge
        if judge_compares(inner):
            return inner.compare_batch(requests)  # type: ignore[union-attr]
        asks: list[ScoreRequest] = []
        for r in requests:
            asks += [ScoreRequest(r.first_idx, r.prompt, r.first), ScoreRequest(r.second_idx, r.prompt, r.second)]
        scores = inner.score_batch(asks)  # type: ignore[union-attr]
        out: list[Comparison | JudgeError] = []
        for k in range(len(requests)):
            a, b = scores[2 * k], scores[2 * k + 1]
            if isinstance(a, JudgeScore) and isinstance(b, JudgeScore):
                out.append(Comparison(1.0 / (1.0 + math.exp(-(a.value - b.value)))))  # Bradley-Terry
            else:
                out.append(JudgeError(str(a if not isinstance(a, JudgeScore) else b)))
        return out


def _iteration(requests: Sequence[CompareRequest]) -> int:
    return next((r.iteration for r in requests if r.iteration is not None), 0)


def _queue(resources: JudgeResources) -> AnnotationQueue:
    if resources.annotations is None:
        raise ConfigError("human judges keep their tasks in a run store; this judge was built outside a run")
    return resources.annotations()


def _run_dir(resources: JudgeResources) -> str:
    return str(resources.run_dir) if resources.run_dir is not None else "RUN"


def model_side_config(config: JudgeConfig, options: RoutedOptions) -> JudgeConfig:
    """The routed judge's model judge: ``judge:`` with ``kind`` and ``options`` of the model side."""
    from activepref.config import JudgeConfig

    data = config.model_dump(exclude={"kind", "options"})
    try:
        return JudgeConfig.model_validate({**data, "kind": options.judge, "options": options.judge_options})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"judge (routed) model side {options.judge!r}: {err['msg']}") from None


def no_calls(config: JudgeConfig, prompt: str, responses: Sequence[str]) -> list[ChatRequest]:
    return []


def routed_requests(config: JudgeConfig, prompt: str, responses: Sequence[str]) -> list[ChatRequest]:
    """The model side's calls for one pair: an upper bound (as if every pair went to the model)."""
    options = RoutedOptions.model_validate(config.options)
    inner = model_side_config(config, options)
    entry = JUDGES.get(inner.kind)
    if entry.requests_for is None:
        return []
    if entry.compares:
        return entry.requests_for(inner, prompt, responses)
    return [call for text in responses for call in entry.requests_for(inner, prompt, [text])]


@register_judge(
    "human",
    "People label each selected pair in the browser (`activepref annotate RUN`); majority vote of labels_per_pair labels.",
    needs_model=False,
    compares=True,
    options=HumanOptions,
    requests_for=no_calls,
)
def make_human_judge(config: JudgeConfig, resources: JudgeResources) -> HumanJudge:
    options = HumanOptions.model_validate(config.options)
    return HumanJudge(_queue(resources), options, _run_dir(resources))


@register_judge(
    "routed",
    "The most uncertain share/count of each iteration's pairs to people, the rest to a model judge (options.judge).",
    needs_model=False,
    compares=True,
    options=RoutedOptions,
    requests_for=routed_requests,
)
def make_routed_judge(config: JudgeConfig, resources: JudgeResources) -> RoutedJudge:
    options = RoutedOptions.model_validate(config.options)
    inner = make_judge(model_side_config(config, options), resources)
    human = HumanJudge(_queue(resources), options, _run_dir(resources))
    return RoutedJudge(human, inner, options)
