"""Baseline heuristics (001 §4.3): random, maxmin, ultrafeedback, delta_pair."""

from __future__ import annotations

import itertools

import acquisition_reference as ref
import numpy as np
import pytest
from acq_helpers import (
    MODEL_NAMES,
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

from activepref.acquisition import CandidateBatch, PairRule, make_selector, resolve_pairs
from activepref.acquisition.base import NO_CANDIDATE
from activepref.errors import ConfigError

# ------------------------------------------------------------------ fast == reference


@PROPERTY
@given(batch=candidate_batches(min_m=1), seed=seeds)
def test_random_matches_reference(batch, seed):
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = make_selector("random")(batch, rng_fast)
    assert_matches_reference(fast, ref.propose("random", batch, rng_ref), batch)
    assert_same_stream_position(rng_fast, rng_ref)
    check_invariants("random", fast, batch)


@PROPERTY
@given(batch=candidate_batches(), seed=seeds)
def test_maxmin_matches_reference(batch, seed):
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = make_selector("maxmin")(batch, rng_fast)
    assert_matches_reference(fast, ref.propose("maxmin", batch, rng_ref), batch)
    assert_same_stream_position(rng_fast, rng_ref)
    check_invariants("maxmin", fast, batch)


@PROPERTY
@given(batch=candidate_batches(max_m=8), seed=seeds, sample_size=st.sampled_from([None, 2, 3, 4, 5]))
def test_ultrafeedback_matches_reference(batch, seed, sample_size):
    options = {} if sample_size is None else {"sample_size": sample_size}
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = make_selector("ultrafeedback", options)(batch, rng_fast)
    assert_matches_reference(fast, ref.propose("ultrafeedback", batch, rng_ref, **options), batch)
    assert_same_stream_position(rng_fast, rng_ref)
    check_invariants("ultrafeedback", fast, batch, options)


@PROPERTY
@given(
    batch=candidate_batches(with_models=True),
    seed=seeds,
    names=st.lists(st.sampled_from(MODEL_NAMES), min_size=2, max_size=2, unique=True),
)
def test_delta_pair_matches_reference(batch, seed, names):
    options = {"strong": names[0], "weak": names[1]}
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = make_selector("delta_pair", options)(batch, rng_fast)
    assert_matches_reference(fast, ref.propose("delta_pair", batch, rng_ref, **options), batch)
    assert_same_stream_position(rng_fast, rng_ref)
    check_invariants("delta_pair", fast, batch, options)


def test_random_with_a_single_candidate_slot():
    batch = CandidateBatch(np.zeros((2, 1)), np.zeros((2, 1)), np.array([[True], [False]]))
    proposal = make_selector("random")(batch, np.random.default_rng(0))
    assert pairs_of(proposal) == [(NO_CANDIDATE, NO_CANDIDATE)] * 2
    assert not proposal.annotate.any()


# ------------------------------------------------------------------------ statistics


def test_random_ordered_pairs_are_uniform():
    # 5 real candidates with padding in between -> 20 ordered pairs, each with probability 1/20.
    mask = [True, False, True, True, False, True, True]
    batch = repeated(single_prompt([0.0] * 7, [1.0] * 7, mask=mask), 20_000)
    pairs = pairs_of(make_selector("random")(batch, np.random.default_rng(2024)))
    reals = [j for j, real in enumerate(mask) if real]
    cells = [(j, k) for j in reals for k in reals if j != k]
    counts = {cell: 0 for cell in cells}
    for pair in pairs:
        assert pair in counts, f"{pair} is not a pair of distinct real candidates"
        counts[pair] += 1
    observed = np.array([counts[c] for c in cells])
    # Expected 1000 per cell; the p-value of a uniform draw is U(0, 1), fixed by the seed.
    assert stats.chisquare(observed).pvalue > 1e-3
    assert np.abs(observed / len(pairs) - 1 / 20).max() < 0.01


def test_ultrafeedback_annotates_a_uniform_subset_and_rejects_uniformly():
    # 6 real candidates (padding at slots 1 and 4): each is among the 4 judged w.p. 4/6.
    mask = [True, False, True, True, False, True, True, True]
    n_prompts = 12_000
    batch = repeated(single_prompt([0.0] * 8, [1.0] * 8, mask=mask), n_prompts)
    rng = np.random.default_rng(7)
    proposal = make_selector("ultrafeedback")(batch, rng)
    per_slot = proposal.annotate.sum(axis=0)
    assert per_slot[[1, 4]].sum() == 0
    assert np.abs(per_slot[np.array(mask)] / n_prompts - 4 / 6).max() < 0.02
    # All 4-subsets of the 6 real candidates (15) equally likely.
    subsets = {}
    for row in proposal.annotate:
        key = tuple(np.nonzero(row)[0])
        subsets[key] = subsets.get(key, 0) + 1
    assert len(subsets) == 15
    assert stats.chisquare(list(subsets.values())).pvalue > 1e-3

    # Judge scores = slot index: the best judged is chosen; rejected uniform over the other 3.
    scores = np.tile(np.arange(8, dtype=np.float64), (n_prompts, 1))
    resolved = resolve_pairs(proposal, scores, rng)
    assert (resolved.status == "ok").all()
    best = np.where(proposal.annotate, scores, -np.inf).argmax(axis=1)
    assert (resolved.chosen == best).all()
    # rank of the rejected among the 3 non-best judged candidates (0 = lowest score)
    ranks = []
    for row, rejected in zip(proposal.annotate, resolved.rejected):
        judged = list(np.nonzero(row)[0])[:-1]  # drop the best (highest slot index)
        ranks.append(judged.index(rejected))
    observed = np.bincount(ranks, minlength=3)
    assert stats.chisquare(observed).pvalue > 1e-3
    assert np.abs(observed / n_prompts - 1 / 3).max() < 0.02


# ------------------------------------------------------------------------ hand cases


def test_maxmin_judges_everything_and_picks_true_best_and_worst():
    # prompt 0: 4 real candidates; prompt 1: padding at slot 0 and 2, real 1 and 3;
    # prompt 2: a single real candidate -> nothing to judge.
    mask = np.array([[True, True, True, True], [False, True, False, True], [False, False, True, False]])
    batch = CandidateBatch(np.zeros((3, 4)), np.zeros((3, 4)), mask)
    proposal = make_selector("maxmin")(batch, np.random.default_rng(0))
    assert proposal.rule is PairRule.BEST_VS_WORST
    assert (proposal.annotate == np.array([[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]], dtype=bool)).all()
    scores = np.array([[2.5, 4.75, 1.25, 3.0], [np.nan, 1.5, np.nan, 2.0], [np.nan, np.nan, 5.0, np.nan]])
    resolved = resolve_pairs(proposal, scores, np.random.default_rng(0))
    # prompt 0: best 4.75 at slot 1, worst 1.25 at slot 2; prompt 1: 2.0 (slot 3) beats 1.5 (slot 1)
    assert resolved.chosen.tolist() == [1, 3, NO_CANDIDATE]
    assert resolved.rejected.tolist() == [2, 1, NO_CANDIDATE]
    assert resolved.status.tolist() == ["ok", "ok", "skipped"]


def test_ultrafeedback_with_fewer_than_four_candidates_judges_all_of_them():
    mask = np.array([[True, False, True, False, True], [True, True, True, True, True], [False, True, False, False, False]])
    batch = CandidateBatch(np.zeros((3, 5)), np.zeros((3, 5)), mask)
    proposal = make_selector("ultrafeedback")(batch, np.random.default_rng(3))
    assert proposal.annotate[0].tolist() == [True, False, True, False, True]  # 3 real -> all 3
    assert proposal.annotate[1].sum() == 4
    assert not proposal.annotate[2].any()  # a single candidate: no pair possible


def test_delta_pair_strong_chosen_over_weak_and_skips_prompts_missing_a_model():
    models = np.array(
        [
            ["qwen3-32b", "qwen3-0.6b", "llama"],  # both: strong slot 0, weak slot 1
            ["llama", "qwen3-0.6b", "qwen3-32b"],  # both, reversed order: (2, 1)
            ["llama", "qwen3-32b", "gemma"],  # weak missing -> skipped
            ["qwen3-0.6b", "qwen3-32b", "qwen3-32b"],  # strong twice: the first real one, slot 1
            ["qwen3-32b", "qwen3-0.6b", "qwen3-32b"],  # weak only in a padding slot -> skipped
        ],
        dtype=object,
    )
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 1]], dtype=bool)
    batch = CandidateBatch(np.zeros((5, 3)), np.zeros((5, 3)), mask, models=models)
    proposal = make_selector("delta_pair", {"strong": "qwen3-32b", "weak": "qwen3-0.6b"})(
        batch, np.random.default_rng(0)
    )
    assert proposal.rule is PairRule.FIXED
    assert not proposal.annotate.any()  # DeltaQwen needs no judge
    assert pairs_of(proposal) == [(0, 1), (2, 1), (-1, -1), (1, 0), (-1, -1)]
    resolved = resolve_pairs(proposal, np.full((5, 3), np.nan), np.random.default_rng(0))
    assert resolved.chosen.tolist() == [0, 2, -1, 1, -1]
    assert resolved.rejected.tolist() == [1, 1, -1, 0, -1]
    assert resolved.status.tolist() == ["ok", "ok", "skipped", "ok", "skipped"]


def test_delta_pair_needs_models_and_both_names():
    batch = single_prompt([0.0, 1.0], [0.0, 0.0])
    with pytest.raises((ValueError, ConfigError)):
        make_selector("delta_pair", {"strong": "a", "weak": "b"})(batch, np.random.default_rng(0))
    batch = single_prompt([0.0, 1.0], [0.0, 0.0], models=["a", "b"])
    with pytest.raises((ValueError, ConfigError)):
        make_selector("delta_pair", {"strong": "a"})(batch, np.random.default_rng(0))


def test_delta_pair_rejects_identical_strong_and_weak():
    batch = single_prompt([0.0, 1.0], [0.0, 0.0], models=["a", "b"])
    try:
        proposal = make_selector("delta_pair", {"strong": "a", "weak": "a"})(batch, np.random.default_rng(0))
    except (ValueError, ConfigError):
        return
    for j, k in pairs_of(proposal):
        assert j != k or j == NO_CANDIDATE


@pytest.mark.parametrize("name", ["random", "ultrafeedback"])
def test_random_baselines_are_reproducible_per_seed(name):
    batch = repeated(single_prompt([0.0] * 6, [1.0] * 6, mask=[1, 1, 0, 1, 1, 1]), 50)
    a = make_selector(name)(batch, np.random.default_rng(11))
    b = make_selector(name)(batch, np.random.default_rng(11))
    c = make_selector(name)(batch, np.random.default_rng(12))
    assert (a.pair == b.pair).all() and (a.annotate == b.annotate).all()
    assert not ((a.pair == c.pair).all() and (a.annotate == c.annotate).all())


def test_every_ordered_pair_is_reachable_by_random():
    # Small sanity check that no ordered pair is structurally excluded (m = 3, padding first).
    batch = repeated(single_prompt([0.0] * 4, [0.0] * 4, mask=[0, 1, 1, 1]), 600)
    seen = set(pairs_of(make_selector("random")(batch, np.random.default_rng(5))))
    assert seen == set(itertools.permutations([1, 2, 3], 2))
