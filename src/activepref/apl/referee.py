"""One interface over the registered judges for APL: which of two completions of a prompt is better.

A judge that compares pairs (``pairwise``: order drawn per pair from the run's seed and the
two completions, optionally both orders) answers P(first better): above 0.5 the first wins,
below the second, exactly 0.5 (e.g. two orders that cancel) is a tie. A judge that scores
responses (``likert``) scores both completions and prefers the higher score (equal scores
are a tie). Failures after the judge's retries are recorded, never scored. Identical
completions are a tie without a judge call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from activepref.apl.config import APLJudgeConfig
from activepref.backends.base import ChatBackend
from activepref.core.cache import RequestCache
from activepref.judges import (
    AuditedJudge,
    CompareRequest,
    ComparingJudge,
    Comparison,
    Judge,
    JudgeResources,
    JudgeScore,
    ScoreRequest,
    judge_compares,
    make_judge,
)
from activepref.pools.records import Prompt, Response, content_id


@dataclass(frozen=True)
class Verdict:
    """winner: 0 or 1 (index into the pair), None for a tie or a failure."""

    winner: int | None
    outcome: str  # "ok", "tie" or "failure"
    detail: str | None = None


class Referee:
    def __init__(self, config: APLJudgeConfig, backend: ChatBackend, cache: RequestCache) -> None:
        self.config = config
        self.backend = backend
        self.cache = cache  # every verdict's calls go through it (the judges wrap the backend)
        self.name = self._judge(0).name

    def _judge(self, seed: int) -> Judge | ComparingJudge:
        judge = make_judge(self.config, JudgeResources(request_cache=lambda: self.cache, backend=self.backend, seed=seed))
        return AuditedJudge(judge, self.config.audit_log) if self.config.audit_log else judge

    def compare(self, prompts: Sequence[Prompt], pairs: Sequence[tuple[str, str]], seed: int) -> list[Verdict]:
        """One verdict per (prompt, (completion 0, completion 1)); ``seed`` is the run's seed."""
        verdicts: list[Verdict | None] = [Verdict(None, "tie", "identical completions") if a == b else None for a, b in pairs]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            judge = self._judge(seed)
            requests = []
            for k, i in enumerate(todo):
                prompt, (a, b) = prompts[i], pairs[i]
                first, second = (Response(content_id(prompt.id, text), prompt.id, "policy", text) for text in (a, b))
                requests.append(CompareRequest(2 * k, 2 * k + 1, prompt, first, second))
            results = self._by_comparison(judge, requests) if judge_compares(judge) else self._by_scores(judge, requests)
            for i, v in zip(todo, results):
                verdicts[i] = v
        return [v for v in verdicts if v is not None]

    @staticmethod
    def _by_comparison(judge: ComparingJudge, requests: list[CompareRequest]) -> list[Verdict]:
        out = []
        for res in judge.compare_batch(requests):
            if not isinstance(res, Comparison):
                out.append(Verdict(None, "failure", str(res)))
            elif res.p_first == 0.5:
                out.append(Verdict(None, "tie", "P(first better) = 0.5"))
            else:
                out.append(Verdict(0 if res.p_first > 0.5 else 1, "ok", f"P(first better) = {res.p_first:.3f}"))
        return out

    @staticmethod
    def _by_scores(judge: Judge, requests: list[CompareRequest]) -> list[Verdict]:
        scores = judge.score_batch([
            ScoreRequest(idx, r.prompt, response)
            for r in requests for idx, response in ((r.first_idx, r.first), (r.second_idx, r.second))
        ])
        out = []
        for k in range(len(requests)):
            a, b = scores[2 * k], scores[2 * k + 1]
            if not isinstance(a, JudgeScore) or not isinstance(b, JudgeScore):
                out.append(Verdict(None, "failure", str(a if not isinstance(a, JudgeScore) else b)))
            elif a.value == b.value:
                out.append(Verdict(None, "tie", f"equal scores {a.value:.4f}"))
            else:
                out.append(Verdict(0 if a.value > b.value else 1, "ok", f"scores {a.value:.4f} vs {b.value:.4f}"))
        return out
