"""Bench metrics against scipy and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from activepref.bench import metrics as M


def _groups(sizes: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def test_pairwise_accuracy_hand_computed() -> None:
    # prompt 0: ref 3 > 2 > 1, pred orders (0,1) right, (0,2) right, (1,2) wrong -> 2/3
    # prompt 1: ref tie (not counted) ; prompt 2: one pair, pred tie counts as wrong
    ref = [3, 2, 1, 5, 5, 2, 1]
    pred = [0.9, 0.1, 0.5, 0.0, 1.0, 0.3, 0.3]
    groups = [0, 0, 0, 1, 1, 2, 2]
    assert M.pairwise_accuracy(pred, ref, groups) == pytest.approx(2 / 4)
    assert math.isnan(M.pairwise_accuracy([1.0], [1.0], [0]))


def test_pairwise_accuracy_never_compares_across_prompts() -> None:
    ref = [1.0, 0.0, 10.0, 9.0]
    pred = [1.0, 0.0, -5.0, -6.0]  # right within each prompt, wrong across
    assert M.pairwise_accuracy(pred, ref, [0, 0, 1, 1]) == 1.0


def test_pairwise_accuracy_matches_loop_heldout_accuracy() -> None:
    from activepref.core.metrics import heldout_accuracy

    rng = np.random.default_rng(0)
    groups = _groups([4, 5, 3, 6])
    ref = np.round(rng.normal(size=len(groups)), 1)  # some ties
    pred = rng.normal(size=len(groups))
    pairs = M.ordered_pairs(groups, ref, [0, 1, 2, 3])
    assert M.pairwise_accuracy(pred, ref, groups) == pytest.approx(heldout_accuracy(pred, pairs))


@pytest.mark.parametrize("seed", range(5))
def test_rankdata_and_spearman_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, size=9).astype(float)  # many ties
    b = rng.normal(size=9)
    np.testing.assert_allclose(M.rankdata(a), stats.rankdata(a))
    assert M.spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)


def test_spearman_loss_matches_scipy_per_prompt_mean() -> None:
    rng = np.random.default_rng(3)
    sizes = [5, 2, 7, 1, 4, 3]
    groups = _groups(sizes)
    ref = rng.integers(0, 3, size=len(groups)).astype(float)
    ref[groups == 5] = 2.0  # constant reference: skipped
    pred = rng.normal(size=len(groups))
    expected = []
    for g, n in enumerate(sizes):
        idx = groups == g
        if n < 2 or np.all(ref[idx] == ref[idx][0]):
            continue
        expected.append(1 - stats.spearmanr(pred[idx], ref[idx]).statistic)
    assert M.spearman_loss(pred, ref, groups) == pytest.approx(np.mean(expected))


def test_spearman_loss_hand_cases() -> None:
    g = [0, 0, 0]
    assert M.spearman_loss([1, 2, 3], [10, 20, 30], g) == pytest.approx(0.0)
    assert M.spearman_loss([3, 2, 1], [10, 20, 30], g) == pytest.approx(2.0)
    assert M.spearman_loss([1, 1, 1], [10, 20, 30], g) == pytest.approx(1.0)  # constant prediction
    assert math.isnan(M.spearman_loss([1, 2], [5, 5], [0, 0]))  # constant reference only
    # NaN reference drops that candidate: prompt 0 keeps 2 candidates
    assert M.spearman_loss([1, 2, 9], [1, 2, np.nan], g) == pytest.approx(0.0)


def test_best_of_n_hand_computed() -> None:
    ref = [1.0, 3.0, 2.0, 0.0, 4.0]
    pred = [0.5, 0.1, 0.9, 2.0, 1.0]
    groups = [0, 0, 0, 1, 1]
    # prompt 0 picks idx 2 (ref 2), prompt 1 picks idx 3 (ref 0)
    assert M.best_of_n(pred, ref, groups) == pytest.approx(1.0)
    s = M.best_of_n_stats(pred, ref, groups)
    assert s.oracle_max == pytest.approx(3.5)
    assert s.oracle_mean == pytest.approx((2.0 + 2.0) / 2)
    assert s.regret == pytest.approx(2.5)
    # normalized: prompt 0 (2-2)/(3-2) = 0, prompt 1 (0-2)/(4-2) = -1
    assert s.normalized == pytest.approx(-0.5)
    assert s.prompts == 2


def test_score_stats_table21() -> None:
    s = M.score_stats([5.0, 4.0, np.nan], [3.0, 1.0, 2.0])
    assert s.n == 2
    assert (s.chosen_mean, s.rejected_mean, s.diff_mean) == pytest.approx((4.5, 2.0, 2.5))
    assert (s.chosen_std, s.rejected_std, s.diff_std) == pytest.approx((0.5, 1.0, 0.5))
    assert s.overall_mean == pytest.approx(3.25)
    assert M.score_stats([], []).n == 0


def test_annotations_to_reach() -> None:
    ann, acc = [10, 20, 30, 40], [0.50, 0.60, 0.58, 0.70]
    assert M.annotations_to_reach(ann, acc, 0.55) == pytest.approx(15.0)
    assert M.annotations_to_reach(ann, acc, 0.60) == pytest.approx(20.0)
    assert M.annotations_to_reach(ann, acc, 0.64) == pytest.approx(35.0)  # first crossing after the dip
    assert M.annotations_to_reach(ann, acc, 0.40) == pytest.approx(10.0)
    assert M.annotations_to_reach(ann, acc, 0.71) is None
    assert M.annotations_to_reach([], [], 0.5) is None


def test_mean_ci_matches_scipy_t_interval() -> None:
    for n in (2, 3, 5, 12, 31, 200):
        v = np.random.default_rng(n).normal(size=n)
        mean, half = M.mean_ci(v)
        lo, hi = stats.t.interval(0.95, n - 1, loc=v.mean(), scale=stats.sem(v))
        assert mean == pytest.approx(v.mean())
        assert half == pytest.approx((hi - lo) / 2, rel=3e-3)
    assert math.isnan(M.mean_ci([1.0])[1])


def test_mean_curve_gap_by_hand() -> None:
    from activepref.bench.metrics import mean_curve_gap

    # constant offset of 0.1 over the shared range
    assert mean_curve_gap([0, 10, 20], [0.6, 0.7, 0.8], [0, 10, 20], [0.5, 0.6, 0.7]) == pytest.approx(0.1)
    # the method is below by 0.2 on [0, 10] and above by 0.2 on [10, 20], linearly in between: mean 0
    assert mean_curve_gap([0, 20], [0.4, 0.8], [0, 20], [0.6, 0.6]) == pytest.approx(0.0)
    # only the shared range [10, 20] counts; the reference is interpolated at 15
    assert mean_curve_gap([10, 20], [1.0, 1.0], [0, 20], [0.0, 1.0]) == pytest.approx(0.25)
    assert math.isnan(mean_curve_gap([0, 5], [1, 1], [10, 20], [1, 1]))
    assert mean_curve_gap([5, 9], [0.7, float("nan")], [5, 9], [0.5, 0.9]) == pytest.approx(0.2)  # one shared point


def test_paired_efficiency_fractions_and_gap() -> None:
    from activepref.bench.report import paired_efficiency

    def curve(method, seed, ys, calls_per_prompt):
        return [{"method": method, "seed": seed, "iteration": i, "prompts_consumed": 10.0 * (i + 1),
                 "judge_calls": calls_per_prompt * 10.0 * (i + 1), "rm_accuracy": y} for i, y in enumerate(ys)]

    rows = (curve("random", 0, [0.5, 0.6, 0.7], 2) + curve("random", 1, [0.5, 0.55, 0.6], 2)
            + curve("fast", 0, [0.6, 0.7, 0.8], 2) + curve("fast", 1, [0.6, 0.65, 0.7], 2)
            + curve("never", 0, [0.4, 0.4, 0.4], 30) + curve("never", 1, [0.4, 0.45, 0.5], 30))
    pe = paired_efficiency(rows, "rm_accuracy")
    assert pe is not None
    # fast reaches random's final 0.7 (seed 0) at 20 of 30 prompts, 0.6 (seed 1) at 10 of 30
    assert pe["fast"]["prompts"][0] == pytest.approx(np.mean([20 / 30, 10 / 30]))
    assert pe["fast"]["calls"][0] == pytest.approx(np.mean([20 / 30, 10 / 30]))  # same calls per prompt as random
    assert pe["fast"]["gap"][0] == pytest.approx(np.mean([0.1, 0.1]))
    assert (pe["fast"]["reached"], pe["fast"]["seeds"]) == (2, 2)
    assert pe["random"]["prompts"][0] == pytest.approx(1.0) and pe["random"]["gap"][0] == pytest.approx(0.0)
    assert pe["never"]["reached"] == 0 and math.isnan(pe["never"]["prompts"][0]) and pe["never"]["gap"][0] < 0
    assert paired_efficiency([r for r in rows if r["method"] != "random"], "rm_accuracy") is None


# -- model-pair coverage --------------------------------------------------------------------------

def _coverage_reference(chosen, rejected):
    counts: dict[frozenset, int] = {}
    for x, y in zip(chosen, rejected):
        key = frozenset((x, y))
        counts[key] = counts.get(key, 0) + 1
    n = len(chosen)
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    top = sum(sorted(counts.values(), reverse=True)[:10]) / n
    return len(counts), entropy, top


def test_model_pair_coverage_by_hand():
    cov = M.model_pair_coverage(["a", "b", "a", "c"], ["b", "a", "a", "a"])
    # {a,b} twice (order ignored), {a,a} once, {a,c} once
    assert (cov.distinct, cov.pairs) == (3, 4)
    assert cov.entropy_bits == pytest.approx(1.5)
    assert cov.top10_share == 1.0
    empty = M.model_pair_coverage([], [])
    assert empty.distinct == 0 and math.isnan(empty.entropy_bits)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 14), st.integers(0, 14)), min_size=1, max_size=200))
def test_model_pair_coverage_matches_a_loop(pairs):
    chosen = [f"m{a}" for a, _ in pairs]
    rejected = [f"m{b}" for _, b in pairs]
    cov = M.model_pair_coverage(chosen, rejected)
    distinct, entropy, top = _coverage_reference(chosen, rejected)
    assert cov.distinct == distinct
    assert cov.entropy_bits == pytest.approx(entropy, abs=1e-9)
    assert cov.top10_share == pytest.approx(top, abs=1e-12)
