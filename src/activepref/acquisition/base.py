"""Shared types of the acquisition methods: the candidate batch, proposals and pair resolution.

A method looks at one batch of prompts with up to ``m`` candidates each and returns a
:class:`Proposal`: which candidates the judge must score, and (for most methods) the
pair it wants compared. :func:`resolve_pairs` then turns the judge's scores into
(chosen, rejected) pairs according to the proposal's rule. Keeping the rule as data
means a new method is one function plus one registration.

Shapes: ``b`` prompts, ``m`` candidate slots per prompt; ``mask[i, j]`` is False for
padding slots of prompts with fewer than ``m`` candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

NO_CANDIDATE = -1


class PairRule(str, Enum):
    """How the judge's scores turn a proposal into a (chosen, rejected) pair."""

    ORDER_BY_SCORE = "order_by_score"  # the proposed pair, higher score chosen
    BEST_VS_WORST = "best_vs_worst"  # MaxMin: best and worst of all annotated
    BEST_VS_RANDOM = "best_vs_random"  # UltraFeedback: best vs a uniform other annotated
    FIXED = "fixed"  # DeltaQwen-style: first element is chosen, no annotation


@dataclass(frozen=True)
class CandidateBatch:
    """ENN predictions for one batch of prompts.

    mean: [b, m] ensemble mean reward; std: [b, m] ensemble std;
    mask: [b, m] bool, True where a real candidate sits; models: [b, m] model names
    (object array, only needed by ``delta_pair``); beta scales the std into bounds.
    """

    mean: np.ndarray
    std: np.ndarray
    mask: np.ndarray
    beta: float = 1.0
    models: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.shape != self.mask.shape:
            raise ValueError(
                f"mean {self.mean.shape}, std {self.std.shape} and mask {self.mask.shape} must share [b, m]"
            )

    @property
    def lower(self) -> np.ndarray:
        """[b, m] lower confidence bound mean - beta * std."""
        return self.mean - self.beta * self.std

    @property
    def upper(self) -> np.ndarray:
        """[b, m] upper confidence bound mean + beta * std."""
        return self.mean + self.beta * self.std

    @property
    def shape(self) -> tuple[int, int]:
        return self.mean.shape  # type: ignore[return-value]


@dataclass
class Proposal:
    """What a method asks for. annotate: [b, m] bool; pair: [b, 2] int (NO_CANDIDATE where the
    pair is decided from scores or the prompt is skipped); info: method statistics."""

    annotate: np.ndarray
    pair: np.ndarray
    rule: PairRule
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class ResolvedPairs:
    """chosen, rejected: [b] candidate indices (NO_CANDIDATE where no pair); status: [b] str,
    one of ``ok``, ``tie``, ``failed`` (judge failed on a needed candidate) or ``skipped``."""

    chosen: np.ndarray
    rejected: np.ndarray
    status: np.ndarray


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def ucb_preference_prob(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Optimistic P(j > j'): s(upper_j - lower_j'), 001 eq. 3. [b, m] -> [b, m, m]."""
    return sigmoid(upper[:, :, None] - lower[:, None, :])


def lcb_preference_prob(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Pessimistic P(j > j'): s(lower_j - upper_j'), 001 eq. 4. [b, m] -> [b, m, m]."""
    return sigmoid(lower[:, :, None] - upper[:, None, :])


def valid_pair_mask(mask: np.ndarray) -> np.ndarray:
    """[b, m] -> [b, m, m] bool: both candidates real and distinct."""
    m = mask.shape[1]
    return mask[:, :, None] & mask[:, None, :] & ~np.eye(m, dtype=bool)[None]


def argmax_ordered_pair(score: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Best ordered pair j != j' of a [b, m, m] score among real candidates -> [b, 2].

    Ties go to the first pair in row-major order. Prompts with fewer than two candidates
    get NO_CANDIDATE.
    """
    b, m, _ = score.shape
    # A valid pair scored -inf (e.g. a zero log-width) must still beat every invalid pair.
    masked = np.where(valid_pair_mask(mask), np.maximum(score, np.finfo(np.float64).min), -np.inf)
    flat = masked.reshape(b, m * m).argmax(axis=1)  # [b]
    pair = np.stack([flat // m, flat % m], axis=1)
    pair[mask.sum(axis=1) < 2] = NO_CANDIDATE
    return pair


def annotate_pair(pair: np.ndarray, m: int) -> np.ndarray:
    """[b, 2] pair -> [b, m] bool mask of the two candidates to annotate."""
    b = pair.shape[0]
    annotate = np.zeros((b, m), dtype=bool)
    ok = pair[:, 0] >= 0
    rows = np.nonzero(ok)[0]
    annotate[rows, pair[ok, 0]] = True
    annotate[rows, pair[ok, 1]] = True
    return annotate


def random_valid_index(mask: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Pick uniformly among the True entries of each row of mask [b, m] using u [b] in [0, 1).

    Returns [b] indices (NO_CANDIDATE for empty rows). The k-th True entry with
    k = floor(u * count) is taken, so the draw is exactly uniform over the row's entries.
    """
    count = mask.sum(axis=1)
    k = np.minimum((u * count).astype(np.int64), np.maximum(count - 1, 0))  # [b]
    rank = np.cumsum(mask, axis=1) - 1  # [b, m] rank of each True entry
    hit = mask & (rank == k[:, None])
    out = hit.argmax(axis=1)
    out[count == 0] = NO_CANDIDATE
    return out


def resolve_pairs(proposal: Proposal, scores: np.ndarray, rng: np.random.Generator) -> ResolvedPairs:
    """Turn judge scores into (chosen, rejected) pairs following the proposal's rule.

    scores: [b, m] float, NaN where a candidate was not scored or its judge call failed.
    A proposed pair with a NaN score is ``failed``; equal scores are a ``tie`` (no pair:
    a preference between equally scored responses carries no signal).
    """
    b, m = scores.shape
    chosen = np.full(b, NO_CANDIDATE, dtype=np.int64)
    rejected = np.full(b, NO_CANDIDATE, dtype=np.int64)
    status = np.full(b, "skipped", dtype=object)
    rows = np.arange(b)
    rule = proposal.rule

    if rule is PairRule.FIXED:
        ok = proposal.pair[:, 0] >= 0
        chosen[ok], rejected[ok] = proposal.pair[ok, 0], proposal.pair[ok, 1]
        status[ok] = "ok"
        return ResolvedPairs(chosen, rejected, status)

    if rule is PairRule.ORDER_BY_SCORE:
        has = proposal.pair[:, 0] >= 0
        first = np.where(has, proposal.pair[:, 0], 0)
        second = np.where(has, proposal.pair[:, 1], 0)
        s1, s2 = scores[rows, first], scores[rows, second]
        failed = has & (np.isnan(s1) | np.isnan(s2))
        tie = has & ~failed & (s1 == s2)
        ok = has & ~failed & ~tie
        first_wins = s1 > s2
        chosen[ok] = np.where(first_wins, first, second)[ok]
        rejected[ok] = np.where(first_wins, second, first)[ok]
        status[failed], status[tie], status[ok] = "failed", "tie", "ok"
        return ResolvedPairs(chosen, rejected, status)

    # Rules over every annotated candidate with a valid score.
    requested = proposal.annotate.sum(axis=1)
    scored = proposal.annotate & ~np.isnan(scores)
    n_scored = scored.sum(axis=1)
    best = np.where(scored, scores, -np.inf).argmax(axis=1)
    if rule is PairRule.BEST_VS_WORST:
        other = np.where(scored, scores, np.inf).argmin(axis=1)
    elif rule is PairRule.BEST_VS_RANDOM:
        others = scored.copy()
        others[rows, best] = False
        other = random_valid_index(others, rng.random(b))
    else:  # pragma: no cover - exhaustive over PairRule
        raise ValueError(f"unknown pair rule {rule}")
    enough = n_scored >= 2
    tie = enough & (scores[rows, best] == scores[rows, np.maximum(other, 0)])
    ok = enough & ~tie
    chosen[ok], rejected[ok] = best[ok], other[ok]
    status[(requested >= 2) & ~enough] = "failed"
    status[tie], status[ok] = "tie", "ok"
    return ResolvedPairs(chosen, rejected, status)
