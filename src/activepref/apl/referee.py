"""One interface over the judges for APL: which of two completions of a prompt is better.

``pairwise`` asks :class:`~activepref.judges.pairwise.PairwiseJudge` (order randomised per
pair, optionally both orders; a pair with no usable answer is re-asked ``max_retries`` times,
then recorded as a failure; a probability of exactly 0.5 -- e.g. two orders that cancel -- is a
tie, not a win for either side). ``likert`` scores both completions with
:class:`~activepref.judges.likert.LikertJudge` and prefers the higher expected score (equal
scores are a tie). Identical completions are a tie without a judge call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from activepref.apl.config import APLJudgeConfig
from activepref.backends.base import ChatBackend
from activepref.cache import CachedBackend, RequestCache
from activepref.data import Prompt, Response
from activepref.errors import JudgeError
from activepref.judges import ScoreRequest
from activepref.judges.likert import LikertJudge
from activepref.judges.pairwise import PairwiseJudge


@dataclass(frozen=True)
class Verdict:
    """winner: 0 or 1 (index into the pair), None for a tie or a failure."""

    winner: int | None
    outcome: str  # "ok", "tie" or "failure"
    detail: str | None = None


class Referee:
    def __init__(self, config: APLJudgeConfig, backend: ChatBackend, cache: RequestCache) -> None:
        self.config = config
        self.backend = CachedBackend(backend, cache, "judge")  # every verdict's calls go through the cache

    @property
    def name(self) -> str:
        return f"{self.config.kind}|{self.backend.endpoint}"

    def compare(self, prompts: Sequence[Prompt], pairs: Sequence[tuple[str, str]], seed: int) -> list[Verdict]:
        verdicts: list[Verdict | None] = [
            Verdict(None, "tie", "identical completions") if a == b else None for a, b in pairs
        ]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            if self.config.kind == "pairwise":
                results = self._pairwise([prompts[i] for i in todo], [pairs[i] for i in todo], seed)
            else:
                results = self._likert([prompts[i] for i in todo], [pairs[i] for i in todo])
            for i, v in zip(todo, results):
                verdicts[i] = v
        return [v for v in verdicts if v is not None]

    def _pairwise(self, prompts: Sequence[Prompt], pairs: Sequence[tuple[str, str]], seed: int) -> list[Verdict]:
        judge = PairwiseJudge(self.backend, both_orders=self.config.both_orders, seed=seed, max_retries=self.config.max_retries)
        picked = judge.judge([p.text for p in prompts], list(pairs), shuffle_order=True)
        out = []
        for w, p in zip(picked, judge.last_probabilities):
            if w < 0 or p is None:
                out.append(Verdict(None, "failure", f"no A/B answer after {self.config.max_retries + 1} attempts"))
            elif p == 0.5:  # e.g. both orders asked and the answers cancel: no preference
                out.append(Verdict(None, "tie", "P(first better) = 0.5"))
            else:
                out.append(Verdict(w, "ok", f"P(first better) = {p:.3f}"))
        return out

    def _likert(self, prompts: Sequence[Prompt], pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        judge = LikertJudge(self.backend, max_retries=self.config.max_retries)
        requests = []
        for i, (prompt, pair) in enumerate(zip(prompts, pairs)):
            for k, text in enumerate(pair):
                response = Response(id=f"apl-{i}-{k}", prompt_id=prompt.id, model="policy", text=text)
                requests.append(ScoreRequest(2 * i + k, prompt, response))
        scores = judge.score_batch(requests)
        out = []
        for i in range(len(pairs)):
            a, b = scores[2 * i], scores[2 * i + 1]
            if isinstance(a, JudgeError) or isinstance(b, JudgeError):
                err = a if isinstance(a, JudgeError) else b
                out.append(Verdict(None, "failure", str(err)))
            elif a.value == b.value:
                out.append(Verdict(None, "tie", f"equal scores {a.value:.4f}"))
            else:
                out.append(Verdict(0 if a.value > b.value else 1, "ok", f"scores {a.value:.4f} vs {b.value:.4f}"))
        return out
