"""Dueling-bandit and active-delta-learning methods (001 §4.3, App. C, Algorithms 1-5):
infomax, deltaucb, dts, drts, maxminlcb."""

from __future__ import annotations

import math

import acquisition_reference as ref
import numpy as np
import pytest
from acq_helpers import (
    PROPERTY,
    assert_matches_reference,
    assert_same_stream_position,
    candidate_batches,
    check_invariants,
    pairs_of,
    repeated,
    seeds,
    single_prompt,
)
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from activepref.acquisition import CandidateBatch, make_selector, ucb_preference_prob
from activepref.acquisition.base import lcb_preference_prob
from activepref.errors import ConfigError


def s(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------ fast == reference


@PROPERTY
@given(batch=candidate_batches(), seed=seeds, name=st.sampled_from(["infomax", "deltaucb"]))
def test_argmax_methods_match_reference(batch, seed, name):
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = make_selector(name)(batch, rng_fast)
    assert_matches_reference(fast, ref.propose(name, batch, rng_ref), batch)
    assert_same_stream_position(rng_fast, rng_ref)  # deterministic: neither touches the stream
    check_invariants(name, fast, batch)


@PROPERTY
@given(
    batch=candidate_batches(),
    seed=seeds,
    name=st.sampled_from(["dts", "drts"]),
    maxiter=st.sampled_from([None, 1, 2, 3, 30]),
)
def test_thompson_methods_match_reference(batch, seed, name, maxiter):
    options = {} if maxiter is None else {"maxiter": maxiter}
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = make_selector(name, options)(batch, rng_fast)
    reference = ref.propose(name, batch, rng_ref, **options)
    assert_matches_reference(fast, reference, batch)  # includes info["fallbacks"]
    assert_same_stream_position(rng_fast, rng_ref)
    check_invariants(name, fast, batch)


@PROPERTY
@given(batch=candidate_batches(), seed=seeds, epsilon=st.sampled_from([None, 1e-3, 0.05, 0.3]))
def test_maxminlcb_matches_reference(batch, seed, epsilon):
    options = {} if epsilon is None else {"epsilon": epsilon}
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = make_selector("maxminlcb", options)(batch, rng_fast)
    assert_matches_reference(fast, ref.propose("maxminlcb", batch, rng_ref, **options), batch)
    assert_same_stream_position(rng_fast, rng_ref)
    check_invariants("maxminlcb", fast, batch)


# ------------------------------------------------------------------------ hand cases

# mean [0, 1, 2], std [1, 0, 0.5], beta 1 -> lower [-1, 1, 1.5], upper [1, 1, 2.5]
HAND = single_prompt([0.0, 1.0, 2.0], [1.0, 0.0, 0.5], beta=1.0)


def test_deltaucb_hand_case():
    # optimistic gaps upper_j - lower_j':
    #   (0,1) 1-1 = 0    (0,2) 1-1.5 = -0.5   (1,0) 1+1 = 2
    #   (1,2) 1-1.5 = -0.5  (2,0) 2.5+1 = 3.5   (2,1) 2.5-1 = 1.5
    # -> (2, 0) with UCB preference s(3.5) = 0.970688
    proposal = make_selector("deltaucb")(HAND, np.random.default_rng(0))
    assert pairs_of(proposal) == [(2, 0)]
    assert ucb_preference_prob(HAND.lower, HAND.upper)[0, 2, 0] == pytest.approx(0.9706877692, abs=1e-9)
    assert proposal.annotate.tolist() == [[True, False, True]]


def test_infomax_hand_case():
    # width(j, j') = s(upper_j - lower_j') - s(lower_j - upper_j'), symmetric in (j, j'):
    #   {0,1}: s(1-1) - s(-1-1)       = 0.5      - 0.119203 = 0.380797
    #   {0,2}: s(1-1.5) - s(-1-2.5)   = 0.377541 - 0.029312 = 0.348228
    #   {1,2}: s(1-1.5) - s(1-2.5)    = 0.377541 - 0.182426 = 0.195115
    # -> the pair {0, 1} (either order: the score is symmetric).
    proposal = make_selector("infomax")(HAND, np.random.default_rng(0))
    assert set(pairs_of(proposal)[0]) == {0, 1}
    width = ucb_preference_prob(HAND.lower, HAND.upper) - lcb_preference_prob(HAND.lower, HAND.upper)
    assert width[0, 0, 1] == pytest.approx(0.3807970780, abs=1e-9)
    assert width[0, 0, 2] == pytest.approx(0.3482284380, abs=1e-9)
    assert width[0, 1, 2] == pytest.approx(0.1951151450, abs=1e-9)


def test_deltaucb_depends_on_beta():
    # mean [2, 0, 0.5], std [0, 0, 1]: gap(0,1) = 2, gap(0,2) = 1.5 + beta, gap(2,1) = 0.5 + beta,
    # every other gap is smaller. beta = 0.25: 2 > 1.75 -> (0, 1); beta = 2: 3.5 > 2 -> (0, 2).
    mean, std = [2.0, 0.0, 0.5], [0.0, 0.0, 1.0]
    rng = np.random.default_rng(0)
    assert pairs_of(make_selector("deltaucb")(single_prompt(mean, std, beta=0.25), rng)) == [(0, 1)]
    assert pairs_of(make_selector("deltaucb")(single_prompt(mean, std, beta=2.0), rng)) == [(0, 2)]


def test_infomax_depends_on_beta():
    # mean [0, 0, 4], std [0.5, 0.6, 1.5]; width of a pair with mean gap d and w = beta*(std_j + std_j'):
    # s(d + w) - s(d - w).
    #   beta 0.1: {0,1}: d 0, w 0.11 -> 0.054945; {0,2}: d 4, w 0.2 -> 0.007107; {1,2}: w 0.21 -> 0.007467
    #   beta 5:   {0,1}: w 5.5 -> 0.991860;  {0,2}: w 10 -> 0.997527;  {1,2}: w 10.5 -> 0.998498
    # a close, uncertain pair wins at small beta, the far but wider pair at large beta.
    mean, std = [0.0, 0.0, 4.0], [0.5, 0.6, 1.5]
    rng = np.random.default_rng(0)
    assert set(pairs_of(make_selector("infomax")(single_prompt(mean, std, beta=0.1), rng))[0]) == {0, 1}
    assert set(pairs_of(make_selector("infomax")(single_prompt(mean, std, beta=5.0), rng))[0]) == {1, 2}


def test_maxminlcb_hand_case():
    # mean [0, 2, 5], std 0.5, beta 1 -> lower [-0.5, 1.5, 4.5], upper [0.5, 2.5, 5.5]
    # L[j,j'] = s(lower_j - upper_j'):
    #   L[0,1] = s(-3) = 0.0474, L[0,2] = s(-6) = 0.0025 -> min_0 = s(-6)
    #   L[1,0] = s(1)  = 0.7311, L[1,2] = s(-4) = 0.0180 -> min_1 = s(-4)
    #   L[2,0] = s(4)  = 0.9820, L[2,1] = s(2)  = 0.8808 -> min_2 = s(2)
    # j1 = 2 (largest worst case); j2 = argmin_j L[2, j] = 1 (its closest competitor, not the worst).
    proposal = make_selector("maxminlcb")(single_prompt([0.0, 2.0, 5.0], [0.5] * 3), np.random.default_rng(0))
    assert pairs_of(proposal) == [(2, 1)]
    # Same prompt with padding slots in between and the candidates permuted.
    batch = single_prompt([2.0, 99.0, 0.0, -99.0, 5.0], [0.5, 0.0, 0.5, 9.0, 0.5], mask=[1, 0, 1, 0, 1])
    assert pairs_of(make_selector("maxminlcb")(batch, np.random.default_rng(0))) == [(4, 0)]


def test_maxminlcb_breaks_ties_uniformly():
    # mean [1, 1, 0], std 0: min_0 = min(s(0), s(1)) = 0.5 = min_1, min_2 = s(-1): j1 in {0, 1}
    # uniformly, and j2 is the other tied candidate (L = s(0) = 0.5 < s(1)).
    n = 4000
    batch = repeated(single_prompt([1.0, 1.0, 0.0], [0.0] * 3), n)
    pairs = pairs_of(make_selector("maxminlcb")(batch, np.random.default_rng(3)))
    assert set(pairs) == {(0, 1), (1, 0)}
    assert abs(pairs.count((0, 1)) / n - 0.5) < 0.03
    # mean [2, 0, 0], std 0: j1 = 0; L[0,1] = L[0,2] = s(2): j2 uniform over {1, 2}.
    batch = repeated(single_prompt([2.0, 0.0, 0.0], [0.0] * 3), n)
    pairs = pairs_of(make_selector("maxminlcb")(batch, np.random.default_rng(4)))
    assert set(pairs) == {(0, 1), (0, 2)}
    assert abs(pairs.count((0, 1)) / n - 0.5) < 0.03


def test_thompson_with_zero_width_intervals():
    # beta = 0: every draw equals the mean. DTS: first = argmax mean; every resample repeats it,
    # so the second is the uniform fallback. DRTS: second = argmin mean, never a fallback.
    batch = repeated(single_prompt([0.3, 1.0, -2.0, 0.0], [1.0, 1.0, 1.0, 1.0], beta=0.0), 3000)
    proposal = make_selector("dts")(batch, np.random.default_rng(0))
    pairs = np.array(pairs_of(proposal))
    assert (pairs[:, 0] == 1).all()
    assert proposal.info["fallbacks"] == 3000
    assert stats.chisquare(np.bincount(pairs[:, 1], minlength=4)[[0, 2, 3]]).pvalue > 1e-3
    proposal = make_selector("drts")(batch, np.random.default_rng(0))
    assert set(pairs_of(proposal)) == {(1, 2)}
    assert proposal.info["fallbacks"] == 0


def test_thompson_on_disjoint_intervals():
    # Disjoint intervals [-0.1, 0.1], [0.9, 1.1], [1.9, 2.1], [2.9, 3.1] (slot 2 padding).
    batch = repeated(single_prompt([0.0, 1.0, 50.0, 2.0, 3.0], [0.1] * 5, mask=[1, 1, 0, 1, 1]), 3000)
    dts_ = make_selector("dts")(batch, np.random.default_rng(1))
    pairs = np.array(pairs_of(dts_))
    assert (pairs[:, 0] == 4).all()  # the sampled best is always the best
    assert dts_.info["fallbacks"] == 3000  # a resample can never differ: always the uniform fallback
    assert stats.chisquare(np.bincount(pairs[:, 1], minlength=5)[[0, 1, 3]]).pvalue > 1e-3
    drts_ = make_selector("drts")(batch, np.random.default_rng(1))
    assert set(pairs_of(drts_)) == {(4, 0)}  # sampled best vs sampled worst
    assert drts_.info["fallbacks"] == 0


# ------------------------------------------------------------------------ statistics

# Overlapping intervals (slot 1 padding): [-0.5, 0.5], [-0.1, 0.7], [0.3, 0.9], [-0.4, 0.8]
OVERLAP = single_prompt([0.0, 7.0, 0.3, 0.6, 0.2], [0.5, 0.0, 0.4, 0.3, 0.6], mask=[1, 0, 1, 1, 1])
REALS = [0, 2, 3, 4]


def _monte_carlo(batch: CandidateBatch, n: int = 400_000, seed: int = 99):
    """P(argmax) and P(argmin) of independent U(lower_j, upper_j) draws over the real candidates."""
    rng = np.random.default_rng(seed)
    lower, upper = batch.lower[0, REALS], batch.upper[0, REALS]
    draws = lower + rng.random((n, len(REALS))) * (upper - lower)
    p_max = np.bincount(draws.argmax(axis=1), minlength=len(REALS)) / n
    p_min = np.bincount(draws.argmin(axis=1), minlength=len(REALS)) / n
    return p_max, p_min


def _joint_counts(pairs) -> np.ndarray:
    index = {j: a for a, j in enumerate(REALS)}
    counts = np.zeros((len(REALS), len(REALS)))
    for j, k in pairs:
        counts[index[j], index[k]] += 1
    return counts


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(len(matrix), dtype=bool)]


def test_dts_first_pick_and_pair_match_monte_carlo():
    n = 20_000
    p_max, _ = _monte_carlo(OVERLAP)
    proposal = make_selector("dts")(repeated(OVERLAP, n), np.random.default_rng(2025))
    counts = _joint_counts(pairs_of(proposal))
    first = counts.sum(axis=1)
    assert np.abs(first / n - p_max).max() < 0.015
    assert stats.chisquare(first, p_max * n).pvalue > 1e-3
    # The second pick is the first resample whose argmax differs: P(j, k) = p_j p_k / (1 - p_j).
    expected = p_max[:, None] * p_max[None, :] / (1 - p_max[:, None])
    np.fill_diagonal(expected, 0.0)
    assert np.abs(counts / n - expected).max() < 0.015
    assert stats.chisquare(_off_diagonal(counts), _off_diagonal(expected) * n * (1 / expected.sum())).pvalue > 1e-3
    assert proposal.info["fallbacks"] == 0


def test_drts_second_pick_is_the_sampled_worst():
    n = 20_000
    p_max, p_min = _monte_carlo(OVERLAP)
    seed = 31
    proposal = make_selector("drts")(repeated(OVERLAP, n), np.random.default_rng(seed))
    pairs = pairs_of(proposal)
    counts = _joint_counts(pairs)
    # P(j, k) = P(argmax = j) P(argmin = k) / (1 - P(argmin = j)) for k != j.
    expected = p_max[:, None] * p_min[None, :] / (1 - p_min[:, None])
    np.fill_diagonal(expected, 0.0)
    assert np.abs(counts / n - expected).max() < 0.015
    assert stats.chisquare(_off_diagonal(counts), _off_diagonal(expected) * n * (1 / expected.sum())).pvalue > 1e-3
    # Replaying the documented stream: the second pick is the argmin of the first fresh
    # U(lower, upper) draw (y = upper - u (upper - lower)) whenever that differs from the first pick.
    batch = repeated(OVERLAP, n)
    u = np.random.default_rng(seed).random((ref.THOMPSON_MAXITER + 1, n, 5))
    lower, upper = batch.lower, batch.upper
    first = np.where(batch.mask, lower + u[0] * (upper - lower), -np.inf).argmax(axis=1)
    worst = np.where(batch.mask, upper - u[1] * (upper - lower), np.inf).argmin(axis=1)
    pairs = np.array(pairs)
    assert (pairs[:, 0] == first).all()
    differs = worst != first
    assert differs.mean() > 0.8
    assert (pairs[differs, 1] == worst[differs]).all()


def test_dts_rarely_falls_back_on_overlapping_intervals():
    # Prompts of up to 6 candidates (a third of the slots padding) with means N(0, 0.3) and
    # interval half-widths U(0.5, 1), kept only if all real intervals share a common point.
    rng = np.random.default_rng(8)
    b, m = 8000, 6
    mask = rng.random((b, m)) > 0.33
    mean, std = rng.normal(0, 0.3, (b, m)), rng.uniform(0.5, 1.0, (b, m))
    common = np.where(mask, mean - std, -np.inf).max(axis=1) < np.where(mask, mean + std, np.inf).min(axis=1)
    keep = common & (mask.sum(axis=1) >= 2)
    batch = CandidateBatch(mean[keep], std[keep], mask[keep], beta=1.0)
    n = int(keep.sum())
    assert n > 7000
    proposal = make_selector("dts")(batch, np.random.default_rng(9))
    assert proposal.info["fallbacks"] / n < 0.01  # 13 / 7795 = 0.17% with these seeds
    # With a single resample (maxiter=1) the fallback is common: the bound above is meaningful.
    one = make_selector("dts", {"maxiter": 1})(batch, np.random.default_rng(9))
    assert one.info["fallbacks"] / n > 0.2


def test_dts_fallback_rate_matches_theory():
    # The fallback happens when the first pick j and all maxiter resamples agree:
    # P(fallback) = sum_j p_j^(1 + maxiter), p_j = P(argmax = j).
    n = 20_000
    p_max, _ = _monte_carlo(OVERLAP)
    for maxiter in (1, 2, 3):
        proposal = make_selector("dts", {"maxiter": maxiter})(repeated(OVERLAP, n), np.random.default_rng(maxiter))
        expected = float((p_max ** (1 + maxiter)).sum())
        assert abs(proposal.info["fallbacks"] / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 0.003


# ------------------------------------------------------------------- known weaknesses


def test_deltaucb_picks_the_largest_gap_even_when_the_sigmoid_saturates():
    # gaps: (1,0) 40, (2,0) 80, (2,1) 40 -> (2, 0); s(40) == s(80) == 1.0 in float64.
    proposal = make_selector("deltaucb")(single_prompt([0.0, 40.0, 80.0], [0.0] * 3), np.random.default_rng(0))
    assert pairs_of(proposal) == [(2, 0)]


def test_infomax_picks_the_widest_pair_even_when_the_sigmoid_saturates():
    # equal means: width = tanh(beta (std_j + std_j') / 2), increasing in std_j + std_j' -> {1, 2}.
    proposal = make_selector("infomax")(single_prompt([0.0] * 3, [10.0, 20.0, 30.0]), np.random.default_rng(0))
    assert set(pairs_of(proposal)[0]) == {1, 2}


def test_maxminlcb_epsilon_zero_is_exact_ties_or_rejected():
    batch = single_prompt([0.0, 1.0, 2.0], [1.0] * 3, mask=[0, 1, 1])
    try:
        proposal = make_selector("maxminlcb", {"epsilon": 0.0})(batch, np.random.default_rng(0))
    except ConfigError:
        return
    check_invariants("maxminlcb", proposal, batch)


@pytest.mark.parametrize("name", ["dts", "drts"])
def test_thompson_maxiter_zero_falls_back_or_is_rejected(name):
    batch = single_prompt([0.0, 1.0, 2.0], [1.0] * 3)
    try:
        proposal = make_selector(name, {"maxiter": 0})(batch, np.random.default_rng(0))
    except ConfigError:
        return
    check_invariants(name, proposal, batch)
    assert proposal.info["fallbacks"] == 1
