"""Benchmark metrics: pure numpy functions of predicted and reference rewards.

Conventions shared by every function that takes ``(pred, ref, groups)``:

* ``pred``: [n] float, the learned reward of each candidate (e.g. the ENN mean);
* ``ref``: [n] float, the reference reward (hidden oracle or judge score); NaN = unknown,
  such candidates are ignored;
* ``groups``: [n] labels (any hashable numpy dtype), the prompt each candidate answers.

Comparisons only ever happen inside one prompt. An empty input gives NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def _prepare(pred: Any, ref: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not (len(pred) == len(ref) == len(groups)):
        raise ValueError(f"pred, ref and groups must have the same length (got {len(pred)}, {len(ref)}, {len(groups)})")
    keep = np.isfinite(ref) & np.isfinite(pred)
    return pred[keep], ref[keep], groups[keep]


def _by_group(groups: np.ndarray) -> list[np.ndarray]:
    """Index arrays of each group, in order of first label (np.unique order)."""
    if len(groups) == 0:
        return []
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return np.split(order, np.cumsum(counts)[:-1])


def pairwise_accuracy(pred: Any, ref: Any, groups: Any) -> float:
    """Share of within-prompt pairs strictly ordered by ``ref`` that ``pred`` orders the same
    way (strictly; a tie in ``pred`` counts as wrong, as in ``core.metrics.heldout_accuracy``).

    pred, ref, groups: [n]. Returns a float in [0, 1], NaN when there is no ordered pair.
    """
    pred, ref, groups = _prepare(pred, ref, groups)
    right = total = 0
    for idx in _by_group(groups):
        r, p = ref[idx], pred[idx]
        better = r[:, None] > r[None, :]  # [m, m] i strictly better than j
        total += int(better.sum())
        right += int((better & (p[:, None] > p[None, :])).sum())
    return right / total if total else float("nan")


def rankdata(x: Any) -> np.ndarray:
    """Ranks 1..n of x [n], ties get the average of their ranks (scipy's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or xs[end] != xs[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman_rho(a: Any, b: Any) -> float:
    """Spearman's rho of a [n] and b [n]: Pearson correlation of average ranks.
    NaN when either side is constant or n < 2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return float("nan")
    ra, rb = rankdata(a) - (len(a) + 1) / 2.0, rankdata(b) - (len(b) + 1) / 2.0
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else float("nan")


def spearman_loss(pred: Any, ref: Any, groups: Any) -> float:
    """Mean over prompts of 1 - Spearman rho(pred, ref) (002), in [0, 2]; 0 = same ranking.

    pred, ref, groups: [n]. Only prompts with >= 2 candidates of known reference and a
    non-constant reference count. Within such a prompt a constant ``pred`` (no ranking
    at all) has rho := 0, i.e. loss 1. NaN when no prompt counts.
    """
    pred, ref, groups = _prepare(pred, ref, groups)
    losses = []
    for idx in _by_group(groups):
        r, p = ref[idx], pred[idx]
        if len(idx) < 2 or np.all(r == r[0]):
            continue
        rho = spearman_rho(p, r)
        losses.append(1.0 - (0.0 if math.isnan(rho) else rho))
    return float(np.mean(losses)) if losses else float("nan")


@dataclass(frozen=True)
class BestOfN:
    """Best-of-N selection quality, each a mean over prompts.

    mean: reference reward of the candidate ``pred`` ranks first (ties: the first such
    candidate); oracle_max / oracle_mean: the prompt's best / average reference reward;
    regret = oracle_max - mean; normalized = (mean - oracle_mean) / (oracle_max - oracle_mean)
    averaged over prompts whose reference is not constant (1 = always the best, 0 = no
    better than a random pick, negative = worse)."""

    mean: float
    oracle_max: float
    oracle_mean: float
    regret: float
    normalized: float
    prompts: int


def best_of_n_stats(pred: Any, ref: Any, groups: Any) -> BestOfN:
    """pred, ref, groups: [n] -> :class:`BestOfN` over the prompts with a known reference."""
    pred, ref, groups = _prepare(pred, ref, groups)
    picked, best, avg, norm = [], [], [], []
    for idx in _by_group(groups):
        r, p = ref[idx], pred[idx]
        choice = float(r[int(np.argmax(p))])
        picked.append(choice)
        best.append(float(r.max()))
        avg.append(float(r.mean()))
        if r.max() > r.mean():
            norm.append((choice - r.mean()) / (r.max() - r.mean()))
    if not picked:
        nan = float("nan")
        return BestOfN(nan, nan, nan, nan, nan, 0)
    return BestOfN(
        mean=float(np.mean(picked)),
        oracle_max=float(np.mean(best)),
        oracle_mean=float(np.mean(avg)),
        regret=float(np.mean(best) - np.mean(picked)),
        normalized=float(np.mean(norm)) if norm else float("nan"),
        prompts=len(picked),
    )


def best_of_n(pred: Any, ref: Any, groups: Any) -> float:
    """Mean over prompts of the reference reward of the candidate with the highest ``pred``.
    pred, ref, groups: [n] -> float (NaN when empty). See :func:`best_of_n_stats` for the
    same number relative to each prompt's oracle best and average."""
    return best_of_n_stats(pred, ref, groups).mean


@dataclass(frozen=True)
class ScoreStats:
    """Seed 001 Table 21 style statistics of a preference dataset: mean and (population)
    std of the chosen scores, the rejected scores and the per-pair difference, and the mean
    over both sides ("Mean Score")."""

    n: int
    chosen_mean: float
    chosen_std: float
    rejected_mean: float
    rejected_std: float
    diff_mean: float
    diff_std: float
    overall_mean: float


def score_stats(chosen: Any, rejected: Any) -> ScoreStats:
    """chosen, rejected: [n] scores of each pair's two responses (NaN pairs are dropped)."""
    c = np.asarray(chosen, dtype=np.float64).reshape(-1)
    r = np.asarray(rejected, dtype=np.float64).reshape(-1)
    if len(c) != len(r):
        raise ValueError(f"chosen and rejected must have the same length (got {len(c)}, {len(r)})")
    keep = np.isfinite(c) & np.isfinite(r)
    c, r = c[keep], r[keep]
    if len(c) == 0:
        nan = float("nan")
        return ScoreStats(0, nan, nan, nan, nan, nan, nan, nan)
    d = c - r
    return ScoreStats(
        n=len(c),
        chosen_mean=float(c.mean()), chosen_std=float(c.std()),
        rejected_mean=float(r.mean()), rejected_std=float(r.std()),
        diff_mean=float(d.mean()), diff_std=float(d.std()),
        overall_mean=float(np.concatenate([c, r]).mean()),
    )


def annotations_to_reach(curve_annotations: Any, curve_accuracy: Any, target: float) -> float | None:
    """First annotation count at which a learning curve reaches ``target``.

    curve_annotations: [T] non-decreasing annotation counts after each iteration;
    curve_accuracy: [T] the metric there (NaN points are skipped). Between two iterations
    the curve is linearly interpolated; if the first point already reaches the target its
    annotation count is returned. None when the curve never reaches the target.
    """
    x = np.asarray(curve_annotations, dtype=np.float64).reshape(-1)
    y = np.asarray(curve_accuracy, dtype=np.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"curve lengths differ ({len(x)} vs {len(y)})")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) == 0 or not math.isfinite(target):
        return None
    if y[0] >= target:
        return float(x[0])
    for k in range(1, len(x)):
        if y[k] >= target:
            frac = (target - y[k - 1]) / (y[k] - y[k - 1])  # y[k-1] < target <= y[k]
            return float(x[k - 1] + frac * (x[k] - x[k - 1]))
    return None


# Two-sided 95% Student-t critical values t_{0.975, df}, df = 1..30 (no scipy at runtime).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_critical_95(df: int) -> float:
    """t_{0.975, df} (two-sided 95%): exact table to df 30, then linear in 1/df between
    the df 40, 60, 120 and infinity (1.96) values (within 0.1% of the exact quantile)."""
    if df < 1:
        return float("nan")
    if df <= 30:
        return _T975[df - 1]
    knots = ((30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960))
    for (d0, t0), (d1, t1) in zip(knots, knots[1:]):
        if df <= d1:
            w = (1 / df - 1 / d1) / (1 / d0 - 1 / d1)  # 1 at d0, 0 at d1
            return t1 + w * (t0 - t1)
    return 1.960


def mean_ci(values: Any) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval) of values [n] (NaNs dropped); half-width
    is NaN for fewer than two values."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), t_critical_95(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))


def mean_curve_gap(x_method: Any, y_method: Any, x_ref: Any, y_ref: Any) -> float:
    """Area between two learning curves over their shared x range, divided by its length:
    the mean of y_method - y_ref along x (trapezoids on the union of both curves' points,
    each curve linearly interpolated; NaN points skipped). NaN when they share no range;
    the difference at that point when the shared range is a single point.

    x_*: [T] non-decreasing (e.g. prompts consumed); y_*: [T] the metric there."""
    xm, ym = np.asarray(x_method, dtype=np.float64), np.asarray(y_method, dtype=np.float64)
    xr, yr = np.asarray(x_ref, dtype=np.float64), np.asarray(y_ref, dtype=np.float64)
    km, kr = np.isfinite(xm) & np.isfinite(ym), np.isfinite(xr) & np.isfinite(yr)
    xm, ym, xr, yr = xm[km], ym[km], xr[kr], yr[kr]
    if len(xm) == 0 or len(xr) == 0:
        return float("nan")
    lo, hi = max(xm[0], xr[0]), min(xm[-1], xr[-1])
    if lo > hi:
        return float("nan")
    grid = np.unique(np.concatenate([xm, xr, [lo, hi]]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    gap = np.interp(grid, xm, ym) - np.interp(grid, xr, yr)
    if len(grid) == 1:
        return float(gap[0])
    area = float(np.sum((gap[1:] + gap[:-1]) * np.diff(grid)) / 2.0)  # trapezoids (numpy >= 1.26 has no trapezoid)
    return area / (hi - lo)


def ordered_pairs(prompt_index: Any, reference: Any, prompts: Any) -> np.ndarray:
    """[k, 2] (better, worse) response rows: every same-prompt pair of the given prompts that
    the reference orders strictly (NaN references skipped), prompt by prompt.

    prompt_index: [n] prompt of each response; reference: [n]; prompts: prompt indices."""
    prompt_index = np.asarray(prompt_index, dtype=np.int64)
    reference = np.asarray(reference, dtype=np.float64)
    chosen_prompts = np.asarray(list(prompts), dtype=np.int64)
    size = max(int(prompt_index.max()) if len(prompt_index) else -1, int(chosen_prompts.max()) if len(chosen_prompts) else -1) + 1
    wanted = np.zeros(size, dtype=bool)
    wanted[chosen_prompts] = True
    rows = np.nonzero(wanted[prompt_index])[0]
    order = rows[np.argsort(prompt_index[rows], kind="stable")]
    groups = np.split(order, np.nonzero(np.diff(prompt_index[order]))[0] + 1) if len(order) else []
    pairs = []
    for idx in groups:  # one small [c, c] block per prompt; c = candidates of that prompt
        a, b = np.triu_indices(len(idx), k=1)
        i, j = idx[a], idx[b]
        keep = (reference[i] != reference[j]) & np.isfinite(reference[i]) & np.isfinite(reference[j])
        i, j = i[keep], j[keep]
        swap = reference[i] < reference[j]
        pairs.append(np.stack([np.where(swap, j, i), np.where(swap, i, j)], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class PairCoverage:
    """How widely a dataset's pairs spread over pairs of generating models."""

    distinct: int  # unordered model pairs that occur
    entropy_bits: float  # entropy of the unordered model-pair distribution
    top10_share: float  # share of pairs taken by the 10 most frequent model pairs
    pairs: int


def model_pair_coverage(chosen_models: Any, rejected_models: Any) -> PairCoverage:
    """chosen_models, rejected_models: [N] model labels of each pair's two responses.

    The pair {a, b} is unordered (who won does not matter); a pair of two responses of the
    same model counts as {a, a}. Empty input: zeros and NaN."""
    a = np.asarray(chosen_models, dtype=object)
    b = np.asarray(rejected_models, dtype=object)
    if len(a) == 0:
        return PairCoverage(0, float("nan"), float("nan"), 0)
    keys = np.asarray([f"{x}\x00{y}" if str(x) <= str(y) else f"{y}\x00{x}" for x, y in zip(a, b)], dtype=object)
    _, counts = np.unique(keys, return_counts=True)
    p = counts / counts.sum()
    top = np.sort(counts)[::-1][:10].sum() / counts.sum()
    return PairCoverage(int(len(counts)), float(-(p * np.log2(p)).sum()), float(top), int(len(a)))
