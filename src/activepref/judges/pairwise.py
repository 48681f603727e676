"""Pairwise judge (004 style): which of two responses is better, with the order randomised
to cancel position bias, optionally asked in both orders to report position consistency.

Call shape familiar from TRL's former judges: ``judge(prompts, completion_pairs,
shuffle_order=True) -> list[int]`` (index of the preferred completion, -1 on failure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from activepref.backends.base import BackendError, ChatBackend, ChatRequest, ChatResult, SamplingParams
from activepref.judges.rubrics import pairwise_messages

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


class PairwiseJudge:
    def __init__(
        self, backend: ChatBackend, both_orders: bool = False, seed: int = 0, max_retries: int = 0
    ) -> None:
        self.backend = backend  # a CachedBackend in a run: each answer is committed as it arrives
        self.both_orders = both_orders
        self.seed = seed
        self.max_retries = max_retries
        self.name = f"pairwise|{backend.endpoint}"
        self.last_position_consistency: float | None = None
        # P(first completion better) per pair of the last call, averaged over the orders asked
        # (None where the judge failed): 0.5 exactly is a tie the 0/1 answer cannot show
        self.last_probabilities: list[float | None] = []

    def _request(self, prompt: str, first: str, second: str, attempt: int = 0) -> ChatRequest:
        params = SamplingParams(temperature=0.0, max_tokens=1, top_logprobs=20, score_tokens=LETTERS, seed=attempt)
        return ChatRequest.from_messages(pairwise_messages(prompt, first, second), params)

    def judge(self, prompts: Sequence[str], completion_pairs: Sequence[tuple[str, str]], shuffle_order: bool = True) -> list[int]:
        """0 if the first completion of a pair is preferred, 1 if the second, -1 if the judge
        failed. A pair whose every answer failed (error, or no A/B in the answer) is asked
        again up to ``max_retries`` times with a new request seed before it counts as failed."""
        n = len(prompts)
        rng = np.random.default_rng(self.seed)
        swap = rng.random(n) < 0.5 if shuffle_order else np.zeros(n, dtype=bool)
        p_first: list[list[float]] = [[] for _ in range(n)]  # P(completion 0 better), per order asked
        pending = list(range(n))
        for attempt in range(self.max_retries + 1):
            calls, owners = [], []  # owners: (pair index, whether this call shows the pair swapped)
            for i in pending:
                prompt, (c0, c1) = prompts[i], completion_pairs[i]
                orders = [bool(swap[i]), not swap[i]] if self.both_orders else [bool(swap[i])]
                for swapped in orders:
                    first, second = (c1, c0) if swapped else (c0, c1)
                    calls.append(self._request(prompt, first, second, attempt))
                    owners.append((i, swapped))
            results: dict[int, ChatResult | BackendError] = {}
            self.backend.complete(calls, results.__setitem__)
            for j, (i, swapped) in enumerate(owners):
                res = results.get(j)
                if isinstance(res, ChatResult):
                    p = first_wins_probability(res)
                    if p is not None:
                        p_first[i].append(1.0 - p if swapped else p)
            pending = [i for i in pending if not p_first[i]]
            if not pending:
                break
        out = []
        agree = []
        self.last_probabilities = [float(np.mean(probs)) if probs else None for probs in p_first]
        for probs in p_first:
            if not probs:
                out.append(-1)
                continue
            out.append(0 if float(np.mean(probs)) >= 0.5 else 1)
            if len(probs) == 2:
                agree.append((probs[0] >= 0.5) == (probs[1] >= 0.5))
        self.last_position_consistency = float(np.mean(agree)) if agree else None
        return out
