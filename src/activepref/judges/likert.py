"""The probabilistic Likert judge (001 App. D.1): per aspect, ask for one digit 1-5 and take
the expected score under the judge's next-token distribution restricted to the digits,

    s_aspect = sum_k k * p(k) / sum_j p(j),   k, j in 1..5,

which equals the softmax over the five digit logits. The overall score is the mean over
aspects. From a server's top-k log-probabilities, digits missing from the top k get
probability 0; when none is present the call is retried (new seed) and finally recorded as
a failure, never given a default score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from activepref.backends.base import BackendError, ChatBackend, ChatRequest, ChatResult, SamplingParams
from activepref.core.cache import CachedBackend
from activepref.errors import JudgeError
from activepref.judges import JudgeResources, JudgeScore, ScoreRequest, register_judge
from activepref.judges.rubrics import likert_messages
from activepref.pools.records import ASPECTS

if TYPE_CHECKING:
    from activepref.config import JudgeConfig

DIGITS = ("1", "2", "3", "4", "5")
TOP_LOGPROBS = 20  # what OpenAI-compatible servers allow at most
JUDGE_MAX_TOKENS = 1  # 001 Table 13 allows 16; the first token is all the score needs


def likert_distribution(first_token_logprobs: dict[str, float]) -> list[float] | None:
    """Probabilities of 1..5 renormalised over the digits present (tokens like ' 3' count as
    '3'); None when no digit is present."""
    mass = [0.0] * len(DIGITS)
    for token, logprob in first_token_logprobs.items():
        t = token.strip()
        if t in DIGITS:
            mass[DIGITS.index(t)] += math.exp(logprob)
    total = sum(mass)
    if total <= 0.0:
        return None
    return [m / total for m in mass]


def expected_score(distribution: Sequence[float]) -> float:
    return float(sum((k + 1) * p for k, p in enumerate(distribution)))


def likert_request(prompt: str, response: str, aspect: str, attempt: int, top_logprobs: int = TOP_LOGPROBS) -> ChatRequest:
    """The call asking for one aspect's digit (``attempt`` seeds a retry)."""
    params = SamplingParams(
        temperature=0.0, top_p=1.0, max_tokens=JUDGE_MAX_TOKENS, seed=attempt, top_logprobs=top_logprobs, score_tokens=DIGITS,
    )
    return ChatRequest.from_messages(likert_messages(prompt, response, aspect), params)


class LikertJudge:
    batch_size = 256

    def __init__(
        self,
        backend: ChatBackend,
        aspects: Sequence[str] = ASPECTS,
        max_retries: int = 2,
        top_logprobs: int = TOP_LOGPROBS,
    ) -> None:
        self.backend = backend  # a CachedBackend in a run: each answer is committed as it arrives
        self.aspects = tuple(aspects)
        self.max_retries = max_retries
        self.top_logprobs = top_logprobs
        self.name = f"likert|{backend.endpoint}"

    def _request(self, req: ScoreRequest, aspect: str, attempt: int) -> ChatRequest:
        return likert_request(req.prompt.text, req.response.text, aspect, attempt, self.top_logprobs)

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore | JudgeError]:
        """All (response, aspect) calls go out together; aspects that come back without a
        digit are re-asked with a new seed, up to ``max_retries`` times."""
        dists: dict[tuple[int, str], list[float]] = {}
        errors: dict[tuple[int, str], str] = {}
        todo = [(i, a) for i in range(len(requests)) for a in self.aspects]
        for attempt in range(self.max_retries + 1):
            if not todo:
                break
            calls = [self._request(requests[i], a, attempt) for i, a in todo]
            results: dict[int, ChatResult | BackendError] = {}
            self.backend.complete(calls, results.__setitem__)
            retry = []
            for j, key in enumerate(todo):
                res = results.get(j)
                if isinstance(res, ChatResult):
                    dist = likert_distribution(res.first_token_logprobs)
                    if dist is not None:
                        dists[key] = dist
                        continue
                    shown = ", ".join(repr(t) for t in list(res.first_token_logprobs)[:5]) or repr(res.text[:20])
                    errors[key] = f"no digit 1-5 among the judge's first tokens ({shown})"
                else:
                    errors[key] = str(res) if res is not None else "no result"
                retry.append(key)
            todo = retry
        out: list[JudgeScore | JudgeError] = []
        for i, req in enumerate(requests):
            missing = [a for a in self.aspects if (i, a) not in dists]
            if missing:
                detail = "; ".join(f"{a}: {errors.get((i, a), 'no result')}" for a in missing)
                out.append(JudgeError(f"response {req.response.id!r}: after {self.max_retries + 1} attempts, {detail}"))
                continue
            aspects = {a: expected_score(dists[(i, a)]) for a in self.aspects}
            out.append(JudgeScore(sum(aspects.values()) / len(aspects), aspects, {a: dists[(i, a)] for a in self.aspects}))
        return out


def likert_requests(config: JudgeConfig, prompt: str, responses: Sequence[str]) -> list[ChatRequest]:
    """The first-attempt calls for one response: one per aspect."""
    return [likert_request(prompt, responses[0], a, 0) for a in ASPECTS]


@register_judge(
    "likert", "Probabilistic Likert judge: expected 1-5 score per aspect from digit log-probabilities.", requests_for=likert_requests
)
def make_likert_judge(config: JudgeConfig, resources: JudgeResources) -> LikertJudge:
    return LikertJudge(CachedBackend(resources.chat_backend(config), resources.cache(), "judge"), max_retries=config.max_retries)
