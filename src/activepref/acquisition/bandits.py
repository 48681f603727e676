"""Dueling-bandit and active-delta-learning methods on ENN confidence bounds (001 §4.3, App. C):
infomax, dts, drts, maxminlcb, deltaucb.

Bounds: lower = mean - beta*std, upper = mean + beta*std per candidate; the preference
probability bounds are the sigmoids of 001 eqs. 3-4, so every method depends on beta.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from activepref.acquisition import register
from activepref.acquisition.base import (
    NO_CANDIDATE,
    CandidateBatch,
    PairRule,
    Proposal,
    annotate_pair,
    argmax_ordered_pair,
    lcb_preference_prob,
    random_valid_index,
)

THOMPSON_MAXITER = 30  # resamples before the uniform fallback of DTS/DRTS (001 Alg. 2, 4)
MAXMIN_EPSILON = 1e-6  # tie tolerance of MaxMinLCB (001 Alg. 3)


def _proposal(pair: np.ndarray, m: int, **info: float) -> Proposal:
    return Proposal(annotate_pair(pair, m), pair, PairRule.ORDER_BY_SCORE, dict(info))


@register("infomax", "InfoMax: ordered pair with the widest preference-probability interval (UCB - LCB).")
def infomax(batch: CandidateBatch, rng: np.random.Generator) -> Proposal:
    """argmax over j != j' of s(u_j - l_j') - s(l_j - u_j') (001 Alg. 1).

    The width is symmetric in (j, j'), so only pairs j < j' are scored (row-major order,
    which keeps the first-pair tie rule), in log space so that widths whose sigmoids round
    to 0 or 1 still compare correctly.
    """
    mask = batch.mask
    b, m = mask.shape
    pair = np.full((b, 2), NO_CANDIDATE, dtype=np.int64)
    if m < 2:
        return _proposal(pair, m)
    ju, ku = np.triu_indices(m, 1)  # [P] pairs j < k in row-major order
    width = log_preference_width(batch.lower[:, ju], batch.upper[:, ju], batch.lower[:, ku], batch.upper[:, ku])  # [b, P]
    valid = mask[:, ju] & mask[:, ku]
    best = np.where(valid, np.maximum(width, np.finfo(np.float64).min), -np.inf).argmax(axis=1)  # [b]
    pair = np.stack([ju[best], ku[best]], axis=1).astype(np.int64)
    pair[mask.sum(axis=1) < 2] = NO_CANDIDATE
    return _proposal(pair, m)


def log_preference_width(lower_j: np.ndarray, upper_j: np.ndarray, lower_k: np.ndarray, upper_k: np.ndarray) -> np.ndarray:
    """log(s(x) - s(y)) with x = u_j - l_k >= y = l_j - u_k, elementwise; accurate where the
    sigmoids round to 0 or 1.

    The pair is first put in the orientation x + y >= 0 (swapping j and k maps (x, y) to
    (-y, -x) and leaves the width unchanged), so (j, k) and (k, j) round identically. Then
    x >= 0 and the width is 1 - s(-x) - s(y) when those tails are small (through log1p),
    else s(x) - s(y) written with whichever tails are exact.
    """
    x = upper_j - lower_k
    y = lower_j - upper_k
    flip = (x + y) < 0
    x, y = np.where(flip, -y, x), np.where(flip, -x, y)
    ex, ey = np.exp(-x), np.exp(-np.abs(y))  # x >= 0, so exp(-x) <= 1
    s_neg_x = ex / (1.0 + ex)  # s(-x)
    ry = 1.0 / (1.0 + ey)
    s_y = np.where(y >= 0, ry, ey * ry)  # s(y)
    tails = s_neg_x + s_y
    direct = np.where(y > 0, ey * ry - s_neg_x, 1.0 / (1.0 + ex) - s_y)  # s(-y) - s(-x) or s(x) - s(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tails < 0.5, np.log1p(-np.minimum(tails, 0.5)), np.log(np.maximum(direct, 0.0)))


@register("deltaucb", "DeltaUCB: ordered pair with the largest optimistic preference probability s(u_j - l_j').")
def deltaucb(batch: CandidateBatch, rng: np.random.Generator) -> Proposal:
    # s(.) is increasing, so argmax of s(u_j - l_j') is argmax of u_j - l_j'; comparing the
    # logits avoids sigmoids that round to 1.0 for large gaps.
    gap = batch.upper[:, :, None] - batch.lower[:, None, :]  # [b, m, m] logit of ucb_preference_prob
    return _proposal(argmax_ordered_pair(gap, batch.mask), batch.mask.shape[1])


def _thompson_pair(
    batch: CandidateBatch, rng: np.random.Generator, maxiter: int, reverse_second: bool
) -> Proposal:
    """First candidate: argmax of a draw u ~ U(lower, upper) per candidate. Second: argmax of
    fresh draws (DTS) or argmin of fresh draws (DRTS, i.e. TS on (-upper, -lower)), resampled up
    to ``maxiter`` times until it differs from the first, then uniform over the others.

    Random stream, in order: u [maxiter + 1, b, m] uniforms, then fallback [b] uniforms.
    """
    mask = batch.mask
    b, m = mask.shape
    lower, upper = batch.lower, batch.upper
    u = rng.random((maxiter + 1, b, m))
    fallback_u = rng.random(b)
    draws = lower[None] + u * (upper - lower)[None]  # [T, b, m]
    first = np.where(mask, draws[0], -np.inf).argmax(axis=1)  # [b]
    if reverse_second:
        # TS on (-upper, -lower): -upper + u*(upper - lower) = -(upper - u*(upper - lower)); take argmax.
        rev = -(upper[None] - u[1:] * (upper - lower)[None])
        seconds = np.where(mask[None], rev, -np.inf).argmax(axis=2)  # [maxiter, b]
    else:
        seconds = np.where(mask[None], draws[1:], -np.inf).argmax(axis=2)  # [maxiter, b]
    differs = seconds != first[None]  # [maxiter, b]
    found = differs.any(axis=0)
    second = seconds[differs.argmax(axis=0), np.arange(b)] if maxiter > 0 else np.zeros(b, dtype=np.int64)
    others = mask.copy()
    others[np.arange(b), first] = False
    fallback = random_valid_index(others, fallback_u)
    second = np.where(found, second, fallback)
    pair = np.stack([first, second], axis=1).astype(np.int64)
    enough = mask.sum(axis=1) >= 2
    pair[~enough] = NO_CANDIDATE
    fallbacks = float((~found & enough).sum())
    return _proposal(pair, m, fallbacks=fallbacks)


MaxIter = Annotated[int, Field(ge=0, description="redraws of the second sample until it differs from the first")]


@register("dts", "Double Thompson sampling: two independent draws in [lower, upper], distinct argmaxes.")
def dts(batch: CandidateBatch, rng: np.random.Generator, maxiter: MaxIter = THOMPSON_MAXITER) -> Proposal:
    return _thompson_pair(batch, rng, maxiter, reverse_second=False)


@register("drts", "Double reverse Thompson sampling: sampled best vs sampled worst (active delta learning).")
def drts(batch: CandidateBatch, rng: np.random.Generator, maxiter: MaxIter = THOMPSON_MAXITER) -> Proposal:
    return _thompson_pair(batch, rng, maxiter, reverse_second=True)


def _tie_break(candidates: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Uniform choice among True entries of candidates [b, m] via random keys [b, m]."""
    return np.where(candidates, keys, -1.0).argmax(axis=1)


@register("maxminlcb", "MaxMinLCB: j1 maximises its worst-case LCB preference prob; j2 is j1's weakest opponent.")
def maxminlcb(
    batch: CandidateBatch, rng: np.random.Generator,
    epsilon: Annotated[float, Field(ge=0, description="tie tolerance of the LCB comparisons (001 Alg. 3)")] = MAXMIN_EPSILON,
) -> Proposal:
    """Random stream, in order: tie-break keys for j1 [b, m], then for j2 [b, m]."""
    mask = batch.mask
    b, m = mask.shape
    keys1 = rng.random((b, m))
    keys2 = rng.random((b, m))
    with np.errstate(invalid="ignore"):  # inf - inf on padding rows is masked out below
        return _maxminlcb(batch, keys1, keys2, epsilon)


def _maxminlcb(batch: CandidateBatch, keys1: np.ndarray, keys2: np.ndarray, epsilon: float) -> Proposal:
    mask = batch.mask
    b, m = mask.shape
    lcb = lcb_preference_prob(batch.lower, batch.upper)  # [b, m, m]
    opponent = mask[:, None, :] & ~np.eye(m, dtype=bool)[None]  # [b, m, m] valid j' != j
    worst = np.where(opponent, lcb, np.inf).min(axis=2)  # [b, m] min over j' of L[j, j']
    worst = np.where(mask, worst, -np.inf)
    best_worst = worst.max(axis=1, keepdims=True)
    j1 = _tie_break(mask & (np.abs(worst - best_worst) <= epsilon), keys1)  # [b]
    row = np.where(opponent[np.arange(b), j1], lcb[np.arange(b), j1], np.inf)  # [b, m] L[j1, j]
    row_min = row.min(axis=1, keepdims=True)
    j2 = _tie_break(np.isfinite(row) & (np.abs(row - row_min) <= epsilon), keys2)
    pair = np.stack([j1, j2], axis=1).astype(np.int64)
    pair[mask.sum(axis=1) < 2] = NO_CANDIDATE
    return _proposal(pair, m)
