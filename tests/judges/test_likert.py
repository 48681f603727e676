"""Likert judge math and behaviour with a scripted in-process backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from activepref.backends.base import BackendError, ChatRequest, ChatResult
from activepref.core.cache import CachedBackend, RequestCache
from activepref.errors import JudgeError
from activepref.judges import JudgeScore, ScoreRequest
from activepref.judges.likert import LikertJudge, expected_score, likert_distribution
from activepref.judges.pairwise import PairwiseJudge
from activepref.pools.records import Prompt, Response


class ScriptedBackend:
    """Answers from a function of the request; records every call."""

    endpoint = "scripted|judge"

    def __init__(self, answer) -> None:
        self.answer = answer
        self.calls: list[ChatRequest] = []

    def complete(self, requests: Sequence[ChatRequest], on_result) -> None:
        for i, r in enumerate(requests):
            self.calls.append(r)
            on_result(i, self.answer(r))


def _lp(probs: dict[str, float]) -> dict[str, float]:
    return {t: math.log(p) for t, p in probs.items()}


def test_distribution_renormalises_over_present_digits() -> None:
    # "The" takes 0.5; digits 4 and 5 are present with 0.3 and 0.1; 1-3 absent -> probability 0.
    dist = likert_distribution(_lp({"The": 0.5, "4": 0.3, " 5": 0.1}))
    assert dist == pytest.approx([0, 0, 0, 0.75, 0.25])
    assert expected_score(dist) == pytest.approx(4 * 0.75 + 5 * 0.25)


def test_distribution_equals_softmax_over_the_five_digit_logits() -> None:
    logits = [0.3, -1.0, 2.0, 0.5, 1.2]
    z = sum(math.exp(v) for v in logits)
    logprobs = {str(k + 1): v - math.log(z) - 0.7 for k, v in enumerate(logits)}  # any common shift
    expected = sum((k + 1) * math.exp(v) / z for k, v in enumerate(logits))
    assert expected_score(likert_distribution(logprobs)) == pytest.approx(expected)


def test_same_digit_as_two_tokens_adds_up() -> None:
    assert likert_distribution(_lp({"3": 0.2, " 3": 0.2, "1": 0.1})) == pytest.approx([0.2, 0, 0.8, 0, 0])


def test_no_digit_is_none() -> None:
    assert likert_distribution(_lp({"The": 0.9, "I": 0.1})) is None
    assert likert_distribution({}) is None


def _requests(n: int) -> list[ScoreRequest]:
    return [
        ScoreRequest(i, Prompt(f"p{i}", f"question {i}"), Response(f"r{i}", f"p{i}", "m", f"answer {i}"))
        for i in range(n)
    ]


def test_judge_scores_four_aspects_and_averages(tmp_path: Path) -> None:
    def answer(r: ChatRequest) -> ChatResult:
        text = r.messages[-1][1]
        probs = {"5": 1.0} if "helpful" in text.split("## Question")[1] else {"3": 0.5, "4": 0.5}
        return ChatResult("5", 100, 1, first_token_logprobs=_lp(probs))

    backend = ScriptedBackend(answer)
    judge = LikertJudge(CachedBackend(backend, RequestCache(tmp_path / "c.sqlite"), "judge"))
    [score] = judge.score_batch(_requests(1))
    assert isinstance(score, JudgeScore)
    assert score.aspects is not None and score.aspects["helpfulness"] == pytest.approx(5.0)
    assert score.aspects["honesty"] == pytest.approx(3.5)
    assert score.value == pytest.approx((5.0 + 3.5 * 3) / 4)
    assert len(backend.calls) == 4
    # Prompt and response first, aspect question last: the four calls share a long prefix.
    texts = [c.messages[-1][1] for c in backend.calls]
    prefix = texts[0].split("## Question")[0]
    assert all(t.startswith(prefix) for t in texts) and "answer 0" in prefix
    assert all(c.params.temperature == 0.0 and c.params.max_tokens == 1 and c.params.top_logprobs == 20 for c in backend.calls)


def test_garbage_is_retried_then_recorded_as_failure_never_scored(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda r: ChatResult("The answer", 10, 1, first_token_logprobs=_lp({"The": 1.0})))
    judge = LikertJudge(CachedBackend(backend, RequestCache(tmp_path / "c.sqlite"), "judge"), max_retries=2)
    [res] = judge.score_batch(_requests(1))
    assert isinstance(res, JudgeError)
    assert "no digit" in str(res) and "'The'" in str(res)
    assert len(backend.calls) == 4 * 3  # 4 aspects x (1 + 2 retries), each retry with a new seed
    assert sorted({c.params.seed for c in backend.calls}) == [0, 1, 2]


def test_only_failed_aspects_are_retried_and_recovered(tmp_path: Path) -> None:
    def answer(r: ChatRequest) -> ChatResult | BackendError:
        if r.params.seed == 0 and "format" in r.messages[-1][1].split("## Question")[1]:
            return BackendError("scripted 500")
        return ChatResult("4", 1, 1, first_token_logprobs=_lp({"4": 1.0}))

    backend = ScriptedBackend(answer)
    [res] = LikertJudge(CachedBackend(backend, RequestCache(tmp_path / "c.sqlite"), "judge")).score_batch(_requests(1))
    assert isinstance(res, JudgeScore) and res.value == pytest.approx(4.0)
    assert len(backend.calls) == 5  # 4 + one retry of instruction_following


def test_cache_makes_a_second_judge_call_free(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda r: ChatResult("2", 7, 1, first_token_logprobs=_lp({"2": 1.0})))
    cache = RequestCache(tmp_path / "c.sqlite")
    first = LikertJudge(CachedBackend(backend, cache, "judge")).score_batch(_requests(3))
    again = LikertJudge(CachedBackend(backend, RequestCache(tmp_path / "c.sqlite"), "judge")).score_batch(_requests(3))
    assert [r.value for r in first] == [r.value for r in again] == [2.0] * 3  # type: ignore[union-attr]
    assert len(backend.calls) == 12
    assert cache.stats.stage("judge").calls == 12 and cache.stats.stage("judge").prompt_tokens == 84


def test_pairwise_judge_randomises_order_and_reports_consistency(tmp_path: Path) -> None:
    def answer(r: ChatRequest) -> ChatResult:
        text = r.messages[-1][1]
        a = text.split("## Response A\n")[1].split("\n\n## Response B")[0]
        # The judge prefers the longer answer, with a slight bias towards position A.
        p_a = 0.9 if len(a) > len(text.split("## Response B\n")[1].split("\n\n## Question")[0]) else 0.3
        return ChatResult("A", 1, 1, first_token_logprobs=_lp({"A": p_a, "B": 1 - p_a}))

    backend = ScriptedBackend(answer)
    judge = PairwiseJudge(CachedBackend(backend, RequestCache(tmp_path / "c.sqlite"), "judge"), both_orders=True, seed=1)
    pairs = [("short", "a much longer answer"), ("a much longer answer", "short")] * 5
    assert judge.judge(["q"] * 10, pairs) == [1, 0] * 5
    assert judge.last_position_consistency == pytest.approx(1.0)
    shown_first = {c.messages[-1][1].split("## Response A\n")[1][:5] for c in backend.calls}
    assert shown_first == {"short", "a muc"}
