"""APL's acquisitions (004 §3.1): which of a round's sampled prompts go to the judge.

A small registry of its own (the main loop's methods rank *responses* by an ENN; these rank
*prompts* by the policy's own log-probabilities). An entry says how many completions it
needs per prompt (``samples``: 2, or N = ``entropy_samples`` for the entropy estimate), how
many times S prompts it samples (``oversample``: hybrid's J), and picks with
``select(inputs, m, rng) -> (indices, score or None)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from activepref.apl.scores import top_m
from activepref.registry import Registry


@dataclass(frozen=True)
class RoundScores:
    """Per sampled prompt: entropy [P] (eq. 8, NaN-free only with N > 2 samples), certainty
    [P] (eq. 9); prompts_per_round: S."""

    entropy: np.ndarray
    certainty: np.ndarray
    prompts_per_round: int


Select = Callable[[RoundScores, int, np.random.Generator], "tuple[np.ndarray, np.ndarray | None]"]


@dataclass(frozen=True)
class APLAcquisition:
    name: str
    description: str
    select: Select
    many_samples: bool = False  # needs N = entropy_samples completions per prompt (else 2)
    oversample: bool = False  # samples J*S prompts (hybrid_factor) instead of S


ACQUISITIONS: Registry[APLAcquisition] = Registry("APL acquisition")


def register_apl_acquisition(
    name: str, description: str, *, many_samples: bool = False, oversample: bool = False
) -> Callable[[Select], Select]:
    def wrap(fn: Select) -> Select:
        ACQUISITIONS.add(APLAcquisition(name, description, fn, many_samples, oversample))
        return fn

    return wrap


@register_apl_acquisition("random", "M prompts drawn at random from the S sampled (plain DPO on fresh policy samples)")
def random_prompts(s: RoundScores, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    return rng.permutation(len(s.certainty))[:m], None


@register_apl_acquisition(
    "entropy", "top M of S prompts by predictive entropy -(1/N) sum_n log p(y_n|x) (004 eq. 8)", many_samples=True
)
def entropy_prompts(s: RoundScores, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    return top_m(s.entropy, m, rng), s.entropy


@register_apl_acquisition("certainty", "top M of S prompts by |r(x,y1) - r(x,y2)|, r = beta log p_theta/p_theta0 (004 eq. 9)")
def certainty_prompts(s: RoundScores, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    return top_m(s.certainty, m, rng), s.certainty


@register_apl_acquisition(
    "hybrid", "top S of J*S prompts by entropy, then top M of those by certainty (004 sec. 3.1.3)", many_samples=True, oversample=True
)
def hybrid_prompts(s: RoundScores, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    top = top_m(s.entropy, s.prompts_per_round, rng)
    return top[top_m(s.certainty[top], m, rng)], s.certainty
