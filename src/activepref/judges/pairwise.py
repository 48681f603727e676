"""The pairwise judge (004 style): which of two responses is better.

Each pair is shown in an order drawn from (seed, the two response ids), so position bias
cancels over many pairs and a resumed run shows every pair exactly as before (its calls are
then cache hits). With ``both_orders`` each pair is asked both ways; P(first better) is the
mean of the two answers and the pair's *position consistency* says whether both answers
favoured the same response. A pair whose every answer failed (error, or neither letter in the
answer) is re-asked ``max_retries`` times with a new request seed, then reported as a failure.

Registered as judge kind ``pairwise`` (``judge: {kind: pairwise, both_orders: true, model:
{...}}``); :meth:`PairwiseJudge.judge` keeps the call shape of TRL's former pairwise judges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from activepref.backends.base import BackendError, ChatBackend, ChatRequest, ChatResult, SamplingParams
from activepref.core.cache import CachedBackend
from activepref.core.determinism import Stage, stage_rng, text_key
from activepref.errors import JudgeError
from activepref.judges import CompareRequest, Comparison, JudgeResources, register_judge
from activepref.judges.rubrics import pairwise_messages
from activepref.pools.records import Prompt, Response, content_id

if TYPE_CHECKING:
    from activepref.config import JudgeConfig

LETTERS = ("A", "B")


def first_wins_probability(result: ChatResult) -> float | None:
    """P(A) renormalised over the letters A/B in the first token's log-probabilities, or from
    the answer text when no log-probabilities came back; None when neither letter appears."""
    mass = [0.0, 0.0]
    for token, logprob in result.first_token_logprobs.items():
        t = token.strip().upper()
        if t in LETTERS:
            mass[LETTERS.index(t)] += math.exp(logprob)
    if sum(mass) > 0:
        return mass[0] / sum(mass)
    head = result.text.strip()[:1].upper()
    return {"A": 1.0, "B": 0.0}.get(head)


def shown_swapped(seed: int, first_id: str, second_id: str) -> bool:
    """Whether the pair is shown second-response-first (its one-order presentation)."""
    return bool(stage_rng(seed, 0, Stage.PAIR_ORDER, text_key(first_id), text_key(second_id)).random() < 0.5)


def pairwise_request(prompt: str, first: str, second: str, attempt: int) -> ChatRequest:
    """The call asking which of two responses (shown first/second) is better."""
    params = SamplingParams(temperature=0.0, max_tokens=1, top_logprobs=20, score_tokens=LETTERS, seed=attempt)
    return ChatRequest.from_messages(pairwise_messages(prompt, first, second), params)


class PairwiseJudge:
    compares = True
    batch_size = 128  # pairs committed together (each call is committed to the cache as it returns)

    def __init__(self, backend: ChatBackend, both_orders: bool = False, seed: int = 0, max_retries: int = 2) -> None:
        self.backend = backend  # a CachedBackend in a run: each answer is committed as it arrives
        self.both_orders = both_orders
        self.seed = seed
        self.max_retries = max_retries
        self.name = f"pairwise|{backend.endpoint}"
        self.last_position_consistency: float | None = None

    def _request(self, prompt: str, first: str, second: str, attempt: int) -> ChatRequest:
        return pairwise_request(prompt, first, second, attempt)

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Comparison | JudgeError]:
        """P(first better) per pair; every call of the batch goes out together."""
        return self._compare(requests, [shown_swapped(self.seed, r.first.id, r.second.id) for r in requests])

    def _compare(self, requests: Sequence[CompareRequest], swap: Sequence[bool]) -> list[Comparison | JudgeError]:
        n = len(requests)
        p_first: list[list[float]] = [[] for _ in range(n)]  # per order asked
        errors: list[str] = ["no result"] * n
        pending = list(range(n))
        for attempt in range(self.max_retries + 1):
            calls, owners = [], []  # owners: (pair index, whether this call shows the pair swapped)
            for i in pending:
                req = requests[i]
                orders = [swap[i], not swap[i]] if self.both_orders else [swap[i]]
                for swapped in orders:
                    first, second = (req.second, req.first) if swapped else (req.first, req.second)
                    calls.append(self._request(req.prompt.text, first.text, second.text, attempt))
                    owners.append((i, swapped))
            results: dict[int, ChatResult | BackendError] = {}
            self.backend.complete(calls, results.__setitem__)
            for j, (i, swapped) in enumerate(owners):
                res = results.get(j)
                p = first_wins_probability(res) if isinstance(res, ChatResult) else None
                if p is not None:
                    p_first[i].append(1.0 - p if swapped else p)
                elif isinstance(res, ChatResult):
                    errors[i] = f"neither A nor B in the judge's answer ({res.text[:20]!r})"
                else:
                    errors[i] = str(res) if res is not None else "no result"
            if self.both_orders:  # a pair counts only when both orders answered
                pending = [i for i in pending if len(p_first[i]) < 2]
                for i in pending:
                    p_first[i] = []
            else:
                pending = [i for i in pending if not p_first[i]]
            if not pending:
                break
        out: list[Comparison | JudgeError] = []
        agree = []
        for i, probs in enumerate(p_first):
            if not probs:
                out.append(JudgeError(
                    f"pair ({requests[i].first.id!r}, {requests[i].second.id!r}): after {self.max_retries + 1} attempts, {errors[i]}"
                ))
                continue
            consistent = (probs[0] >= 0.5) == (probs[1] >= 0.5) if len(probs) == 2 else None
            if consistent is not None:
                agree.append(consistent)
            out.append(Comparison(float(np.mean(probs)), consistent))
        self.last_position_consistency = float(np.mean(agree)) if agree else None
        return out

    def judge(self, prompts: Sequence[str], completion_pairs: Sequence[tuple[str, str]], shuffle_order: bool = True) -> list[int]:
        """TRL-style call: 0 if the first completion of a pair is preferred, 1 if the second,
        -1 if the judge failed or the answers cancel (P = 0.5). ``shuffle_order=False`` shows
        every pair as given."""
        requests = []
        for k, (prompt, (a, b)) in enumerate(zip(prompts, completion_pairs)):
            pid = content_id(prompt)
            first, second = Response(content_id(pid, a), pid, "", a), Response(content_id(pid, b), pid, "", b)
            requests.append(CompareRequest(2 * k, 2 * k + 1, Prompt(pid, prompt), first, second))
        results = self.compare_batch(requests) if shuffle_order else self._compare(requests, [False] * len(requests))
        return [-1 if not isinstance(r, Comparison) or r.p_first == 0.5 else (0 if r.p_first > 0.5 else 1) for r in results]


def pairwise_requests(config: JudgeConfig, prompt: str, responses: Sequence[str]) -> list[ChatRequest]:
    """The first-attempt calls for one pair: one, or two with ``both_orders``."""
    first, second = responses
    calls = [pairwise_request(prompt, first, second, 0)]
    return calls + [pairwise_request(prompt, second, first, 0)] if config.both_orders else calls


@register_judge(
    "pairwise",
    "Pairwise judge: which of two responses is better (A/B log-probabilities), order drawn per pair; both_orders for position consistency.",
    compares=True,
    requests_for=pairwise_requests,
)
def make_pairwise_judge(config: JudgeConfig, resources: JudgeResources) -> PairwiseJudge:
    backend = CachedBackend(resources.chat_backend(config), resources.cache(), "judge")
    return PairwiseJudge(backend, both_orders=config.both_orders, seed=resources.seed, max_retries=config.max_retries)
