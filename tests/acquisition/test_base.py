"""Shared acquisition machinery: resolve_pairs, the preference-probability bounds,
random_valid_index, argmax_ordered_pair, and the method registry."""

from __future__ import annotations

import math
import warnings

import acquisition_reference as ref
import numpy as np
import pytest
from acq_helpers import MODEL_NAMES, PROPERTY, candidate_batches, seeds
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from activepref.acquisition import (
    REGISTRY,
    CandidateBatch,
    PairRule,
    Proposal,
    available,
    get_method,
    lcb_preference_prob,
    make_selector,
    resolve_pairs,
    ucb_preference_prob,
)
from activepref.acquisition.base import (
    NO_CANDIDATE,
    annotate_pair,
    argmax_ordered_pair,
    random_valid_index,
    sigmoid,
)
from activepref.errors import ConfigError

NAN = float("nan")

# ----------------------------------------------------------------------- resolve_pairs


@st.composite
def proposals_and_scores(draw):
    """An arbitrary proposal of any rule (annotate anywhere, distinct pairs or none) and judge
    scores with frequent ties and NaN (not scored / judge failure)."""
    b = draw(st.integers(1, 6))
    m = draw(st.integers(1, 6))
    rule = draw(st.sampled_from(list(PairRule)))
    annotate = draw(arrays(np.bool_, (b, m)))
    rows = []
    for _ in range(b):
        if m < 2 or draw(st.booleans()):
            rows.append((NO_CANDIDATE, NO_CANDIDATE))
        else:
            j = draw(st.integers(0, m - 1))
            k = draw(st.integers(0, m - 2))
            rows.append((j, k if k < j else k + 1))
    pair = np.array(rows, dtype=np.int64).reshape(b, 2)
    values = st.one_of(st.sampled_from([1.0, 2.0, 3.0, 4.5, NAN]), st.floats(1, 5))
    scores = draw(arrays(np.float64, (b, m), elements=values))
    return Proposal(annotate, pair, rule), scores


def _assert_resolved_equal(fast, expected: ref.RefResolved) -> None:
    assert fast.chosen.tolist() == expected.chosen
    assert fast.rejected.tolist() == expected.rejected
    assert fast.status.tolist() == expected.status


@PROPERTY
@given(case=proposals_and_scores(), seed=seeds)
def test_resolve_pairs_matches_reference(case, seed):
    proposal, scores = case
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = resolve_pairs(proposal, scores, rng_fast)
    _assert_resolved_equal(fast, ref.resolve_pairs(proposal, scores, rng_ref))
    assert rng_fast.bit_generator.state == rng_ref.bit_generator.state


@PROPERTY
@given(
    batch=candidate_batches(with_models=True, min_m=1),
    seed=seeds,
    name=st.sampled_from(sorted(ref.METHODS)),
    data=st.data(),
)
def test_propose_then_resolve_end_to_end(batch, seed, name, data):
    """Every method's proposal resolves, identically to the reference, into pairs of two
    distinct real candidates with the higher-scored one chosen (judged ones only)."""
    options = {"strong": MODEL_NAMES[0], "weak": MODEL_NAMES[1]} if name == "delta_pair" else {}
    b, m = batch.shape
    values = st.one_of(st.sampled_from([1.0, 2.0, 3.0, NAN]), st.floats(1, 5))
    scores = data.draw(arrays(np.float64, (b, m), elements=values), label="scores")
    rng = np.random.default_rng(seed)
    proposal = make_selector(name, options)(batch, rng)
    scores = np.where(proposal.annotate, scores, NAN)  # the judge only scores what was asked
    state = rng.bit_generator.state
    resolved = resolve_pairs(proposal, scores, rng)
    rng_ref = np.random.default_rng()
    rng_ref.bit_generator.state = state
    _assert_resolved_equal(resolved, ref.resolve_pairs(proposal, scores, rng_ref))
    for i in range(b):
        c, r, status = int(resolved.chosen[i]), int(resolved.rejected[i]), resolved.status[i]
        assert status in {"ok", "tie", "failed", "skipped"}
        if status != "ok":
            assert c == r == NO_CANDIDATE
            continue
        assert c != r and batch.mask[i, c] and batch.mask[i, r]
        if proposal.rule is not PairRule.FIXED:
            assert proposal.annotate[i, c] and proposal.annotate[i, r]
            assert scores[i, c] > scores[i, r]


def test_resolve_order_by_score_statuses():
    pair = np.array([[0, 1], [0, 1], [0, 1], [1, 0], [2, 0], [-1, -1]])
    scores = np.array(
        [
            [3.0, 3.0, 1.0],  # equal scores -> tie, no pair
            [NAN, 2.0, 1.0],  # judge failed on a proposed candidate -> failed
            [2.5, 4.0, NAN],  # NaN on an unproposed candidate is irrelevant: 1 beats 0
            [4.0, 2.5, 1.0],  # proposed (1, 0) but 0 scored higher -> chosen 0
            [1.0, 9.0, 1.5],  # 2 beats 0; candidate 1's higher score is not in the pair
            [5.0, 1.0, 2.0],  # no pair proposed -> skipped
        ]
    )
    annotate = annotate_pair(pair, 3)
    resolved = resolve_pairs(Proposal(annotate, pair, PairRule.ORDER_BY_SCORE), scores, np.random.default_rng(0))
    assert resolved.status.tolist() == ["tie", "failed", "ok", "ok", "ok", "skipped"]
    assert resolved.chosen.tolist() == [-1, -1, 1, 0, 2, -1]
    assert resolved.rejected.tolist() == [-1, -1, 0, 1, 0, -1]


def test_resolve_best_vs_worst_statuses():
    annotate = np.array([[1, 1, 1, 1]] * 6 + [[1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    scores = np.array(
        [
            [NAN, NAN, NAN, NAN],  # every judge call failed -> failed
            [NAN, 3.0, NAN, NAN],  # a single score -> failed
            [2.0, 2.0, 2.0, 2.0],  # all equal -> tie
            [4.0, 1.0, 4.0, 2.0],  # best tied at 0 and 2: the first (0); worst 1
            [NAN, 1.5, 3.5, 2.0],  # failed candidate ignored: 2 vs 1
            [1.0, 1.0, 5.0, 1.0],  # worst tied: the first (0)
            [5.0, 1.0, 1.0, 1.0],  # only one candidate requested -> skipped
            [5.0, 1.0, 1.0, 1.0],  # nothing requested -> skipped
        ]
    )
    pair = np.full((8, 2), NO_CANDIDATE)
    resolved = resolve_pairs(Proposal(annotate, pair, PairRule.BEST_VS_WORST), scores, np.random.default_rng(0))
    assert resolved.status.tolist() == ["failed", "failed", "tie", "ok", "ok", "ok", "skipped", "skipped"]
    assert resolved.chosen.tolist() == [-1, -1, -1, 0, 2, 2, -1, -1]
    assert resolved.rejected.tolist() == [-1, -1, -1, 1, 1, 0, -1, -1]


def test_resolve_best_vs_random_statuses():
    annotate = np.array([[1, 1, 1, 1, 0]] * 4, dtype=bool)
    scores = np.array(
        [
            [3.0, 3.0, 3.0, 3.0, 9.0],  # all judged equal -> tie (slot 4 was not judged)
            [4.0, 1.0, 2.0, 3.0, 9.0],  # best 0, rejected one of 1..3
            [NAN, NAN, 2.0, NAN, 9.0],  # one score left -> failed
            [NAN, 1.0, 2.0, NAN, 9.0],  # 2 beats 1 (the only other scored)
        ]
    )
    pair = np.full((4, 2), NO_CANDIDATE)
    resolved = resolve_pairs(Proposal(annotate, pair, PairRule.BEST_VS_RANDOM), scores, np.random.default_rng(0))
    assert resolved.status.tolist() == ["tie", "ok", "failed", "ok"]
    assert resolved.chosen.tolist() == [-1, 0, -1, 2]
    assert resolved.rejected[1] in (1, 2, 3)
    assert resolved.rejected[3] == 1


def test_resolve_fixed_ignores_scores():
    pair = np.array([[2, 0], [-1, -1]])
    proposal = Proposal(np.zeros((2, 3), dtype=bool), pair, PairRule.FIXED)
    resolved = resolve_pairs(proposal, np.full((2, 3), NAN), np.random.default_rng(0))
    assert resolved.chosen.tolist() == [2, -1]
    assert resolved.rejected.tolist() == [0, -1]
    assert resolved.status.tolist() == ["ok", "skipped"]


# ------------------------------------------------------------- preference-probability bounds


@PROPERTY
@given(batch=candidate_batches(max_b=3))
def test_preference_probability_bounds(batch):
    lower, upper = batch.lower, batch.upper
    ucb = ucb_preference_prob(lower, upper)
    lcb = lcb_preference_prob(lower, upper)
    b, m = batch.shape
    assert ucb.shape == lcb.shape == (b, m, m)
    point = sigmoid(batch.mean[:, :, None] - batch.mean[:, None, :])  # s(mean_j - mean_j')
    tol = 1e-12
    assert ((lcb >= 0) & (lcb <= point + tol) & (point <= ucb + tol) & (ucb <= 1)).all()
    # p_upper(j > j') + p_lower(j' > j) = s(x) + s(-x) = 1
    assert np.allclose(ucb + lcb.transpose(0, 2, 1), 1.0, atol=1e-12, rtol=0)
    for i in range(b):  # scalar spot check against the reference
        for j in range(m):
            for k in range(m):
                assert ucb[i, j, k] == pytest.approx(ref.ucb_pref(lower[i], upper[i], j, k), abs=1e-15)
                assert lcb[i, j, k] == pytest.approx(ref.lcb_pref(lower[i], upper[i], j, k), abs=1e-15)


def test_preference_bounds_equal_at_beta_zero_and_widen_with_beta():
    mean, std = np.array([[0.0, 1.0, -0.5]]), np.array([[0.3, 0.0, 1.0]])
    b0 = CandidateBatch(mean, std, np.ones((1, 3), bool), beta=0.0)
    assert np.array_equal(ucb_preference_prob(b0.lower, b0.upper), lcb_preference_prob(b0.lower, b0.upper))
    widths = []
    for beta in (0.5, 1.0, 2.0):
        bb = CandidateBatch(mean, std, np.ones((1, 3), bool), beta=beta)
        widths.append(ucb_preference_prob(bb.lower, bb.upper) - lcb_preference_prob(bb.lower, bb.upper))
    assert (widths[1] >= widths[0]).all() and (widths[2] >= widths[1]).all()
    assert (widths[2] > widths[0]).any()


def test_sigmoid_is_stable_at_extremes():
    x = np.array([-1e4, -800.0, -40.0, -0.0, 0.0, 1e-300, 40.0, 800.0, 1e4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings
        out = sigmoid(x)
    assert np.isfinite(out).all() and ((out >= 0) & (out <= 1)).all()
    assert out[0] == 0.0 and out[-1] == 1.0 and out[4] == 0.5
    assert np.allclose(out + sigmoid(-x), 1.0, atol=1e-15, rtol=0)
    assert (np.diff(out) >= 0).all()
    grid = np.linspace(-30, 30, 601)
    assert np.allclose(sigmoid(grid), [ref.sigmoid(v) for v in grid], atol=1e-15, rtol=0)


# ---------------------------------------------------------------- random_valid_index


@PROPERTY
@given(
    mask=st.integers(1, 7).flatmap(lambda m: arrays(np.bool_, st.tuples(st.integers(1, 6), st.just(m)))),
    data=st.data(),
)
def test_random_valid_index_matches_reference(mask, data):
    b = mask.shape[0]
    us = st.one_of(st.sampled_from([0.0, 0.5, 1 - 2**-53, 1 / 3, 2 / 3]), st.floats(0, 1, exclude_max=True))
    u = data.draw(arrays(np.float64, (b,), elements=us), label="u")
    out = random_valid_index(mask, u)
    for i in range(b):
        expected = ref.uniform_pick([j for j in range(mask.shape[1]) if mask[i, j]], float(u[i]))
        assert out[i] == expected
        if expected != NO_CANDIDATE:
            assert mask[i, out[i]]


def test_random_valid_index_is_uniform():
    # u on a fine regular grid of [0, 1): each of the 5 True entries gets exactly 1/5 of the grid.
    mask = np.array([[False, True, True, False, True, True, False, True]])
    u = (np.arange(10_000) + 0.5) / 10_000
    out = random_valid_index(np.repeat(mask, len(u), axis=0), u)
    counts = np.bincount(out, minlength=8)
    assert counts.tolist() == [0, 2000, 2000, 0, 2000, 2000, 0, 2000]
    assert random_valid_index(np.zeros((2, 3), bool), np.array([0.1, 0.9])).tolist() == [-1, -1]


def test_argmax_ordered_pair_tie_order_and_small_prompts():
    score = np.zeros((3, 3, 3))
    score[0] = [[9, 1, 5], [5, 9, 2], [0, 0, 9]]  # (0,2) and (1,0) tie at 5: row-major first (0, 2)
    score[1] = [[0, 7, 7], [7, 0, 7], [7, 7, 0]]  # padding slot 0 has the top scores
    mask = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=bool)
    assert argmax_ordered_pair(score, mask).tolist() == [[0, 2], [1, 2], [-1, -1]]


# ---------------------------------------------------------------------------- registry

NINE = {"random", "maxmin", "ultrafeedback", "delta_pair", "infomax", "dts", "maxminlcb", "drts", "deltaucb"}


UPSTREAM = {"deltaquantile", "infogain", "ids", "rucb"}  # the authors' code's extra selectors


def test_registry_lists_the_nine_paper_and_four_upstream_per_prompt_methods():
    methods = [m for m in available() if m.kind == "per_prompt"]
    names = [method.name for method in methods]
    assert sorted(names) == sorted(NINE | UPSTREAM) and len(names) == 13
    assert {n for n, m in REGISTRY.items() if m.kind == "per_prompt"} == NINE | UPSTREAM
    assert all(m.kind in ("design", "model") for m in available() if m.name not in NINE | UPSTREAM)
    assert all(m.name.startswith("model_") for m in available() if m.kind == "model")
    for method in methods:
        assert isinstance(method.description, str) and method.description.strip()
        assert callable(method.propose)
        assert get_method(method.name) is method
        assert method.uses_reward_model == (method.name not in {"random", "maxmin", "ultrafeedback", "delta_pair"})


def test_make_selector_options():
    assert get_method("dts").options() == {"maxiter": 30}
    assert get_method("drts").options() == {"maxiter": 30}
    assert get_method("maxminlcb").options() == {"epsilon": 1e-6}
    assert get_method("ultrafeedback").options() == {"sample_size": 4}
    assert set(get_method("delta_pair").options()) == {"strong", "weak"}
    for name in ("random", "maxmin", "infomax", "deltaucb"):
        assert get_method(name).options() == {}
    batch = CandidateBatch(np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]]), np.ones((1, 2), bool))
    assert make_selector("dts", {"maxiter": 5})(batch, np.random.default_rng(0)).pair.shape == (1, 2)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("random", {"beta": 1.0}),
        ("dts", {"max_iter": 5}),
        ("maxminlcb", {"eps": 0.1}),
        ("ultrafeedback", {"sample_size": 4, "n": 2}),
        ("delta_pair", {"strong": "a", "weak": "b", "extra": 1}),
    ],
)
def test_make_selector_rejects_unknown_options(name, options):
    with pytest.raises(ConfigError, match="not an option"):
        make_selector(name, options)


def test_make_selector_rejects_unknown_methods():
    with pytest.raises(ConfigError, match="unknown method"):
        make_selector("thompson")
    with pytest.raises(ConfigError):
        get_method("")


def test_reference_sigmoid_matches_definition():
    for x in (-50.0, -3.0, 0.0, 2.0, 50.0):
        assert ref.sigmoid(x) == pytest.approx(1 / (1 + math.exp(-x)), rel=1e-15)
