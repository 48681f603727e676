"""The four upstream selectors (UPSTREAM_METHODS.md): deltaquantile, infogain, ids, rucb --
fast == slow reference on random batches (same random stream), plus hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
import upstream_reference as uref
from acq_helpers import (
    PROPERTY,
    assert_matches_reference,
    assert_same_stream_position,
    candidate_batches,
    seeds,
    single_prompt,
)
from hypothesis import given
from hypothesis import strategies as st

from activepref.acquisition import get_method, make_selector, resolve_pairs
from activepref.acquisition.base import NO_CANDIDATE

OPTIONS = {
    "deltaquantile": st.sampled_from([{}, {"quantile": 0.0}, {"quantile": 0.3, "half_width": 0.1}, {"quantile": 1.0}]),
    "infogain": st.just({}),
    "rucb": st.sampled_from([{}, {"buffer": 0.6}, {"tolerance": 0.5}]),
    "ids": st.sampled_from([{}, {"grid": 7}, {"buffer": 1.0, "rho2": 0.5}, {"tolerance": 0.3}]),
}


@PROPERTY
@given(data=st.data(), batch=candidate_batches(), seed=seeds, name=st.sampled_from(sorted(OPTIONS)))
def test_upstream_methods_match_reference(data, batch, seed, name):
    options = data.draw(OPTIONS[name], label="options")
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = make_selector(name, options)(batch, rng_fast)
    assert_matches_reference(fast, uref.METHODS[name](batch, rng_ref, **options), batch)
    assert_same_stream_position(rng_fast, rng_ref)
    for i, (j, k) in enumerate(fast.pair.tolist()):  # a pair is two distinct real candidates, or none
        assert (j, k) == (NO_CANDIDATE, NO_CANDIDATE) or (j != k and batch.mask[i, j] and batch.mask[i, k])


def test_all_four_are_registered_per_prompt_methods():
    for name in ("deltaquantile", "infogain", "ids", "rucb"):
        method = get_method(name)
        assert method.kind == "per_prompt" and method.uses_reward_model and method.description


def test_deltaquantile_takes_the_pair_at_the_quantile_rank():
    # u = mean (std 0): gaps u_j - l_k = mean_j - mean_k; 4 candidates -> 12 ordered pairs.
    batch = single_prompt([3.0, 2.0, 1.0, 0.0], [0.0] * 4)
    sel = make_selector("deltaquantile", {"quantile": 0.0})
    assert sel(batch, np.random.default_rng(0)).pair.tolist() == [[0, 3]]  # the largest gap (3)
    # q = 0.25: rank floor(12 * 0.25) = 3; ranked gaps: (0,3)=3, (0,2)=2, (1,3)=2, (0,1)=1, (1,2)=1, (2,3)=1, ...
    sel = make_selector("deltaquantile", {"quantile": 0.25})
    assert sel(batch, np.random.default_rng(0)).pair.tolist() == [[0, 1]]
    # q +- 0.1: ranks floor(1.8) = 1 to floor(4.2) = 4 (exclusive): (0,2), (1,3), (0,1); the highest
    # u_j is candidate 0's, and of its pairs (0, 2) ranks best
    sel = make_selector("deltaquantile", {"quantile": 0.25, "half_width": 0.1})
    assert sel(batch, np.random.default_rng(0)).pair.tolist() == [[0, 2]]


def test_infogain_second_response_has_the_widest_interval_against_the_first():
    # beta 0 makes the first response the highest mean; widths depend on the stds.
    batch = single_prompt([2.0, 0.0, 0.0, 0.0], [0.0, 0.1, 2.0, 0.5])
    batch = type(batch)(batch.mean, batch.std, batch.mask, beta=0.0)
    assert make_selector("infogain")(batch, np.random.default_rng(0)).pair.tolist()[0][0] == 0
    batch = type(batch)(batch.mean, batch.std, batch.mask, beta=1.0)
    pairs = {tuple(make_selector("infogain")(batch, np.random.default_rng(s)).pair[0]) for s in range(40)}
    assert all(k == 2 for j, k in pairs if j == 0)  # against 0, candidate 2 (std 2) is the most uncertain


def test_rucb_draws_the_second_response_among_plausible_ones_and_skips_a_single_one():
    batch = single_prompt([0.0, 1.0, 2.0, 3.0], [0.0] * 4)  # u > 0.5: candidates 1, 2, 3
    seen = {tuple(make_selector("rucb")(batch, np.random.default_rng(s)).pair[0]) for s in range(200)}
    assert seen == {(3, 1), (3, 2), (2, 3)}  # k uniform in {1, 2, 3}; j = best upper bound other than k
    lonely = single_prompt([0.0, 0.0, 3.0], [0.0] * 3)  # only candidate 2 passes: upstream's self-pair
    prop = make_selector("rucb")(lonely, np.random.default_rng(0))
    assert prop.pair.tolist() == [[NO_CANDIDATE, NO_CANDIDATE]] and not prop.annotate.any() and prop.info["self_pairs"] == 1
    resolved = resolve_pairs(prop, np.full((1, 3), np.nan), np.random.default_rng(0))
    assert resolved.status.tolist() == ["skipped"]  # recorded as skipped, not a tie


def test_ids_pairs_the_greedy_response_with_the_cheapest_information():
    # greedy g = 2 (highest mean > 0.5); candidates 0, 1 pass u > 0.5; with equal stds the
    # lower mean gives the smaller regret term, so j = 0; p = 1 minimises ((1-p) U + p D)^2 / p here
    batch = single_prompt([0.4, 0.45, 2.0], [0.5, 0.5, 0.5])
    prop = make_selector("ids")(batch, np.random.default_rng(0))
    assert prop.pair.tolist() == [[2, 0]]
    assert prop.info["mean_p"] == pytest.approx(0.01 * np.argmin([((1 - p) * 2.5 + p * 2.9) ** 2 / p for p in np.arange(1, 101) / 100] ) + 0.01)
