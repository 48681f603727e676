"""Bayesian designs over candidate comparisons: bald, batchbald (Kirsch et al. 2019) and
balpm (003), against the slow references in tests/references/bayesian_reference.py."""

from __future__ import annotations

import math

import bayesian_reference as ref
import numpy as np
import pytest
from acq_helpers import PROPERTY, seeds, with_declared_inputs_only
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from activepref.acquisition import get_method, make_selector
from activepref.acquisition.bayesian import (
    BALPM_DISTANCE_EPSILON,
    bald_scores,
    balpm_select,
    batchbald_select,
    conditional_entropies,
    digamma_of_count,
    joint_configurations,
    knn_entropy,
    preference_probabilities,
)
from activepref.acquisition.comparisons import ComparisonSet, candidate_pairs
from activepref.errors import ConfigError

# Brute-force BatchBALD and the O(P²) kNN references are slow in Python: fewer examples.
SLOW_PROPERTY = settings(PROPERTY, max_examples=max(10, PROPERTY.max_examples // 2))

TIE_REWARDS = (-1.0, 0.0, 0.5, 2.0)
LATTICE = (-1.0, 0.0, 0.5, 1.0)  # exact distances, so duplicate and equidistant prompts tie exactly


@st.composite
def comparison_sets(draw, max_n: int = 7, max_heads: int = 4, max_prompts: int = 4, cross=None) -> ComparisonSet:
    """Random rewards [K, n] (frequent exact ties, identical heads included), prompts, pairs
    (in-prompt, or cross-prompt subsampled by candidate_pairs), prompt features [P, q] and an
    acquired set [a, q] with duplicates and lattice points."""
    k = draw(st.integers(1, max_heads), label="K")
    n = draw(st.integers(2, max_n), label="n")
    n_prompts = draw(st.integers(1, max_prompts), label="prompts")
    prompt_of = draw(arrays(np.int64, n, elements=st.integers(0, n_prompts - 1)), label="prompt_of")
    values = st.one_of(st.sampled_from(TIE_REWARDS), st.floats(-6, 6, allow_nan=False))
    rewards = draw(arrays(np.float64, (k, n), elements=values), label="rewards")
    if draw(st.booleans(), label="identical heads"):
        rewards[:] = rewards[0]
    cross = draw(st.booleans(), label="cross") if cross is None else cross
    pair_seed = draw(seeds, label="pair seed")
    max_pairs = draw(st.integers(1, 12), label="max_pairs")
    pairs = candidate_pairs(prompt_of, cross_prompt=cross, rng=np.random.default_rng(pair_seed), max_pairs=max_pairs)
    assume(len(pairs) > 0)
    q = draw(st.integers(1, 3), label="q")
    coords = st.one_of(st.sampled_from(LATTICE), st.floats(-3, 3, allow_nan=False))
    features = draw(arrays(np.float64, (n_prompts, q), elements=coords), label="prompt_features")
    a = draw(st.integers(0, 5), label="a")
    acquired = draw(arrays(np.float64, (a, q), elements=coords), label="acquired")
    if a and draw(st.booleans(), label="acquired duplicates a candidate"):
        acquired[0] = features[0]
    u = draw(st.integers(0, 6), label="unlabelled pool")
    pool = draw(arrays(np.float64, (u, q), elements=coords), label="pool")
    if u and draw(st.booleans(), label="pool duplicates a candidate"):
        pool[0] = features[-1]
    return ComparisonSet(np.zeros((n, 1)), rewards, prompt_of, pairs, features, acquired if a else None,
                         pool_prompt_features=pool if u else None)


def head_probs(cs: ComparisonSet) -> list[list[float]]:
    return ref.head_probabilities(cs.rewards.tolist(), cs.pairs.tolist())


def assert_greedy(fast: np.ndarray, scores_after, budget: int, tol: float = ref.FLOAT_TOL) -> None:
    """``budget`` distinct int64 indices, each optimal (within tol) for the reference scores
    given the fast prefix; where the optimum is unique it is that one, so fast equals the
    reference greedy sequence whenever no floating-point near-tie occurs."""
    assert fast.dtype == np.int64 and fast.shape == (budget,)
    assert len(set(fast.tolist())) == budget
    prefix: list[int] = []
    for j in fast.tolist():
        scores = scores_after(prefix)
        best = max(scores)
        near = [i for i, s in enumerate(scores) if s >= best - tol * max(1.0, abs(best))]
        if len(near) == 1:
            assert j == near[0], f"step {len(prefix)}: fast {j}, reference {near[0]}"
        else:
            event("near-tie: several optimal picks")
            assert j in near, f"step {len(prefix)}: fast {j} not among optimal {near}"
        prefix.append(j)


# ------------------------------------------------------------------ BALD


@PROPERTY
@given(cs=comparison_sets(), budget_frac=st.floats(0, 1))
def test_bald_matches_reference(cs, budget_frac):
    probs = head_probs(cs)
    expected = ref.bald(probs)
    got = bald_scores(cs)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert (got >= 0).all()
    budget = int(budget_frac * len(cs.pairs))
    fast = make_selector("bald")(cs, budget, np.random.default_rng(0))
    assert_greedy(fast, lambda prefix: [-math.inf if i in prefix else s for i, s in enumerate(expected)], budget)


@PROPERTY
@given(rewards=arrays(np.float64, (5, 6), elements=st.floats(-800, 800, allow_nan=False)))
def test_bald_is_nonnegative_and_finite_for_extreme_rewards(rewards):
    cs = ComparisonSet(
        np.zeros((6, 1)), rewards, np.zeros(6, dtype=np.int64), candidate_pairs(np.zeros(6, dtype=np.int64))
    )
    got = bald_scores(cs)
    assert np.isfinite(got).all() and (got >= 0).all() and (got <= math.log(2) + 1e-12).all()


def test_bald_exact_ties_go_to_the_lowest_index():
    cs = ComparisonSet(
        np.zeros((4, 1)), np.zeros((3, 4)), np.zeros(4, dtype=np.int64), candidate_pairs(np.zeros(4, dtype=np.int64))
    )
    for name in ("bald", "batchbald", "balpm"):
        cs_named = (
            cs if name != "balpm" else ComparisonSet(cs.phi, cs.rewards, cs.prompt_of, cs.pairs, np.zeros((1, 2)))
        )
        assert make_selector(name)(cs_named, 4, np.random.default_rng(0)).tolist() == [0, 1, 2, 3], name


# ------------------------------------------------------------------ BatchBALD


@SLOW_PROPERTY
@given(cs=comparison_sets(max_n=6), budget=st.integers(0, 4), lazy_block=st.integers(1, 4))
def test_batchbald_matches_brute_force_greedy(cs, budget, lazy_block):
    budget = min(budget, len(cs.pairs))
    probs = head_probs(cs)
    fast = make_selector("batchbald")(cs, budget, np.random.default_rng(0))
    assert_greedy(fast, lambda prefix: ref.batchbald_scores(probs, prefix), budget)
    # lazy evaluation in blocks smaller than M (the design's block exceeds these M) is exact,
    # and the gains sum to the joint mutual information of the batch, enumerated by brute force
    p, q = preference_probabilities(cs)
    chosen, gains = batchbald_select(p, q, budget, np.random.default_rng(0), lazy_block=lazy_block)
    assert_greedy(chosen, lambda prefix: ref.batchbald_scores(probs, prefix), budget)
    assert math.isclose(gains.sum(), ref.joint_mutual_information(probs, chosen.tolist()), rel_tol=1e-9, abs_tol=1e-12)
    for t, j in enumerate(chosen.tolist()):
        expected = ref.batchbald_scores(probs, chosen[:t].tolist())[j]
        assert math.isclose(gains[t], expected, rel_tol=1e-9, abs_tol=1e-12)


@PROPERTY
@given(cs=comparison_sets(), pool_size=st.sampled_from([1, 2, 3, 1024]), budget=st.integers(1, 3))
def test_batchbald_first_pick_is_balds_top_and_stays_in_the_pool(cs, pool_size, budget):
    budget = min(budget, len(cs.pairs))
    bald = ref.bald(head_probs(cs))
    fast = make_selector("batchbald", {"pool_size": pool_size})(cs, budget, np.random.default_rng(0))
    assert bald[fast[0]] >= max(bald) - 1e-12
    top = set(ref.top_k(bald, max(pool_size, budget)))
    cutoff = sorted(bald, reverse=True)[min(max(pool_size, budget), len(bald)) - 1]
    for j in fast.tolist():  # in the pool, up to floating-point ties at the cut-off
        assert j in top or abs(bald[j] - cutoff) <= 1e-12


def test_batchbald_avoids_a_duplicate_comparison_that_bald_takes_twice():
    # Heads 1,2 vs 3,4 disagree on comparison A (and its exact duplicate A'); heads 1,3 vs 2,4 on
    # B, which has lower BALD. After A, the duplicate A' is worth little, B still a lot.
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    a = [logit(x) for x in (0.95, 0.95, 0.05, 0.05)]
    b = [logit(x) for x in (0.9, 0.1, 0.9, 0.1)]
    rewards = np.array([[a[k], 0.0, a[k], 0.0, b[k], 0.0] for k in range(4)])  # [4, 6]
    pairs = np.array([[0, 1], [2, 3], [4, 5]])  # A, A', B
    cs = ComparisonSet(np.zeros((6, 1)), rewards, np.zeros(6, dtype=np.int64), pairs)
    assert make_selector("bald")(cs, 2, np.random.default_rng(0)).tolist() == [0, 1]
    assert make_selector("batchbald")(cs, 2, np.random.default_rng(0)).tolist() == [0, 2]
    probs = head_probs(cs)
    assert ref.batchbald_scores(probs, [0])[1] < ref.batchbald_scores(probs, [0])[2] < ref.bald(probs)[1]


def test_sampled_configurations_estimate_the_exact_conditional_entropies():
    rng = np.random.default_rng(3)
    logit = rng.normal(scale=2.0, size=(5, 14))
    p, q = 1 / (1 + np.exp(-logit)), 1 / (1 + np.exp(logit))
    sel, cand = slice(0, 6), slice(6, 14)
    exact = joint_configurations(p[:, sel], q[:, sel], rng, max_exact_configurations=64)
    assert exact.heads is None and exact.posterior.shape[1] <= 64
    expected = conditional_entropies(exact, p[:, cand])
    for cap in (1, 8, 32):  # sampling starts at the 1st, 4th, 6th comparison and extends after
        sampled = joint_configurations(
            p[:, sel], q[:, sel], np.random.default_rng(4), max_exact_configurations=cap, num_samples=50_000
        )
        assert sampled.heads is not None and sampled.posterior.shape[1] == 50_000
        np.testing.assert_allclose(conditional_entropies(sampled, p[:, cand]), expected, atol=0.01)
    # exact: E_{y_S} H(y_i | y_S) = H(y_S, y_i) - H(y_S) by enumeration
    probs = p.tolist()  # [K][M]
    for i in range(6, 14):
        s = list(range(6))
        h = ref.joint_mutual_information(probs, s + [i]) - ref.joint_mutual_information(probs, s)
        aleatoric = sum(ref.entropy([probs[k][i], 1 - probs[k][i]]) for k in range(5)) / 5
        assert math.isclose(conditional_entropies(exact, p[:, [i]])[0], h + aleatoric, rel_tol=1e-9)


@PROPERTY
@given(cs=comparison_sets(max_n=12, max_prompts=3), seed=seeds, budget=st.integers(1, 12))
def test_batchbald_sampled_regime_is_distinct_and_deterministic(cs, seed, budget):
    budget = min(budget, len(cs.pairs))
    options = {"max_exact_configurations": 4, "num_samples": 64}
    first = make_selector("batchbald", options)(cs, budget, np.random.default_rng(seed))
    again = make_selector("batchbald", options)(cs, budget, np.random.default_rng(seed))
    assert first.dtype == np.int64 and len(set(first.tolist())) == budget
    assert first.tolist() == again.tolist()


# ------------------------------------------------------------------ kNN entropy


@SLOW_PROPERTY
@given(
    points=st.integers(2, 10).flatmap(lambda n: arrays(np.float64, (n, 2), elements=st.floats(-5, 5, allow_nan=False))),
    k=st.integers(1, 3),
)
def test_knn_entropy_matches_reference(points, k):
    assume(k < len(points))
    rows = points.tolist()
    assume(all(ref.distance(u, v) > 1e-6 for i, u in enumerate(rows) for v in rows[:i]))  # log ρ needs ρ > 0
    assert math.isclose(knn_entropy(points, k), ref.knn_entropy(points.tolist(), k), rel_tol=1e-9, abs_tol=1e-9)


def test_knn_entropy_of_a_large_gaussian_sample_is_close_to_the_analytic_entropy():
    cov = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.5], [0.0, 0.5, 0.5]])
    x = np.random.default_rng(0).multivariate_normal(np.zeros(3), cov, size=3000)
    analytic = 0.5 * math.log((2 * math.pi * math.e) ** 3 * np.linalg.det(cov))
    assert abs(knn_entropy(x, k=4) - analytic) < 0.1


def test_digamma_of_count_matches_the_recurrence():
    expected = [ref.digamma_int(n + 1) for n in range(40)]
    np.testing.assert_allclose(digamma_of_count(np.arange(40)), expected, rtol=0, atol=1e-13)
    assert math.isclose(digamma_of_count(np.array([0]))[0], -0.5772156649015329)


# ------------------------------------------------------------------ BAL-PM


balpm_options = st.fixed_dictionaries(
    {
        "beta": st.one_of(st.sampled_from([0.0, 0.01, 1.0]), st.floats(0, 5, allow_nan=False)),
        "k": st.integers(1, 4),
        "dimension": st.sampled_from([1.0, 0.5, 3.0]),
        "estimator": st.sampled_from(["ksg", "kl"]),
        "normalize_entropy": st.booleans(),
        "selection": st.sampled_from(["greedy", "softmax"]),
        "gumbel_beta": st.sampled_from([1.0, 8.0]),
    }
)


@SLOW_PROPERTY
@given(cs=comparison_sets(max_n=7), options=balpm_options, seed=seeds, budget=st.integers(0, 5))
def test_balpm_matches_reference(cs, options, seed, budget):
    budget = min(budget, len(cs.pairs))
    fast = make_selector("balpm", options)(cs, budget, np.random.default_rng(seed))
    again = make_selector("balpm", options)(cs, budget, np.random.default_rng(seed))
    assert fast.tolist() == again.tolist()  # deterministic given the seed
    m = len(cs.pairs)
    noise = None
    if options["selection"] == "softmax":  # the documented stream: one Gumbel draw per comparison
        noise = (np.random.default_rng(seed).gumbel(size=m) / options["gumbel_beta"]).tolist()
    bald = ref.bald(head_probs(cs))
    pair_prompts = [tuple(pp) for pp in cs.prompt_of[cs.pairs].tolist()]
    acquired = [] if cs.acquired_prompt_features is None else cs.acquired_prompt_features.tolist()
    pool = [] if cs.pool_prompt_features is None else cs.pool_prompt_features.tolist()
    tables = ref.distance_tables(cs.prompt_features.tolist(), acquired, pool)

    def scores(prefix, with_noise=True):
        return ref.balpm_scores(
            bald,
            pair_prompts,
            cs.prompt_features.tolist(),
            acquired,
            prefix,
            beta=options["beta"],
            k=options["k"],
            dimension=options["dimension"],
            epsilon=BALPM_DISTANCE_EPSILON,
            estimator=options["estimator"],
            normalize_entropy=options["normalize_entropy"],
            noise=noise if with_noise else None,
            tables=tables,
        )

    assert_greedy(fast, scores, budget)
    # the scores at pick time (without the Gumbel perturbation) match too
    sel_options = {key: v for key, v in options.items()}
    acquired_arr = np.zeros((0, cs.prompt_features.shape[1])) if not acquired else np.asarray(acquired)
    chosen, picked = balpm_select(
        bald_scores(cs),
        cs.prompt_of[cs.pairs],
        cs.prompt_features,
        acquired_arr,
        budget,
        np.random.default_rng(seed),
        **sel_options,
        pool_features=cs.pool_prompt_features,
    )
    assert chosen.tolist() == fast.tolist()
    for t, j in enumerate(chosen.tolist()):
        assert math.isclose(picked[t], scores(chosen[:t].tolist(), with_noise=False)[j], rel_tol=1e-9, abs_tol=1e-9)


@PROPERTY
@given(
    cs=comparison_sets(max_n=8),
    budget_frac=st.floats(0, 1),
    k=st.integers(1, 20),
    estimator=st.sampled_from(["ksg", "kl"]),
)
def test_balpm_with_beta_zero_is_bald_top_k(cs, budget_frac, k, estimator):
    budget = int(budget_frac * len(cs.pairs))
    rng = np.random.default_rng(0)
    options = {"beta": 0.0, "k": k, "estimator": estimator}
    assert make_selector("balpm", options)(cs, budget, rng).tolist() == make_selector("bald")(cs, budget, rng).tolist()


def clustered_prompts(seed: int = 0):
    """20 candidate prompts near an acquired cluster at the origin, 20 far from it (at 5),
    3 responses each with the same rewards in every prompt, so BALD ties across prompts."""
    rng = np.random.default_rng(seed)
    near = rng.normal(scale=0.3, size=(20, 2))
    far = 5.0 + rng.normal(scale=0.3, size=(20, 2))
    features = np.concatenate([near, far])  # [40, 2]: prompts 0-19 near, 20-39 far
    acquired = rng.normal(scale=0.3, size=(40, 2))
    prompt_of = np.repeat(np.arange(40), 3)
    per_prompt = rng.normal(size=(4, 3))  # [K, 3]
    rewards = np.tile(per_prompt, (1, 40))  # [4, 120]
    return ComparisonSet(np.zeros((120, 1)), rewards, prompt_of, candidate_pairs(prompt_of), features, acquired)


def test_balpm_entropy_term_prefers_prompts_far_from_the_acquired_set():
    cs = clustered_prompts()
    prompt_of_pick = lambda idx: cs.prompt_of[cs.pairs[idx, 0]].tolist()  # noqa: E731
    bald_pick = prompt_of_pick(make_selector("bald")(cs, 4, np.random.default_rng(0)))
    assert all(p < 20 for p in bald_pick)  # BALD ties everywhere: lowest indices, near prompts
    for estimator in ("ksg", "kl"):
        picks = prompt_of_pick(
            make_selector("balpm", {"beta": 1.0, "estimator": estimator})(cs, 4, np.random.default_rng(0))
        )
        assert all(p >= 20 for p in picks), (estimator, picks)  # far from the acquired cluster
        assert len(set(picks)) == 4, (estimator, picks)  # and the batch spreads over prompts


def test_balpm_cross_prompt_comparisons_use_and_acquire_both_prompts():
    # Prompt 0 sits on the acquired point, prompts 1 and 2 far away. The cross comparison
    # (prompts 0, 2) has the largest BALD and goes first with the mean of both prompts' terms;
    # it acquires prompt 2 too, so the next pick is prompt 1's comparison although prompt 2's
    # comparison has the lower index and would tie otherwise.
    features = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    prompt_of = np.array([0, 0, 1, 1, 2, 2])
    pairs = np.array([[0, 4], [4, 5], [2, 3]])  # cross (0, 2), in 2, in 1
    acquired = np.array([[0.0, 0.0]])
    bald = np.array([20.0, 0.0, 0.0])
    chosen, picked = balpm_select(
        bald, prompt_of[pairs], features, acquired, 3, np.random.default_rng(0), beta=1.0, k=1
    )
    e = ref.ksg_terms(features.tolist(), acquired.tolist(), [], 1, 1.0, BALPM_DISTANCE_EPSILON)
    assert chosen.tolist() == [0, 2, 1]
    assert math.isclose(picked[0], 20.0 + (e[0] + e[2]) / 2, rel_tol=1e-12)
    after = ref.ksg_terms(features.tolist(), acquired.tolist(), [0, 2], 1, 1.0, BALPM_DISTANCE_EPSILON)
    assert after[2] < after[1]  # prompt 2 lost more: it was acquired itself
    assert math.isclose(picked[1], after[1], rel_tol=1e-12)
    only_first = ref.ksg_terms(features.tolist(), acquired.tolist(), [0], 1, 1.0, BALPM_DISTANCE_EPSILON)
    assert only_first[2] == only_first[1]  # acquiring prompt 0 alone would leave a tie -> index 1


# ------------------------------------------------------------------ options and errors


@PROPERTY
@given(cs=comparison_sets(), name=st.sampled_from(["bald", "batchbald", "balpm"]), seed=seeds, data=st.data())
def test_declared_inputs_are_all_a_design_reads(cs, name, seed, data):
    """The loop builds only the inputs a design declares: leaving the others out changes no pick."""
    budget = data.draw(st.integers(0, len(cs.pairs)), label="budget")
    select = make_selector(name)
    full = select(cs, budget, np.random.default_rng(seed))
    assert full.tolist() == select(with_declared_inputs_only(cs, name), budget, np.random.default_rng(seed)).tolist()


def test_registered_options_and_defaults():
    assert get_method("bald").kind == get_method("batchbald").kind == get_method("balpm").kind == "design"
    assert get_method("balpm").options() == {
        "beta": 0.01,
        "k": 13,
        "dimension": 1.0,
        "estimator": "ksg",
        "normalize_entropy": False,
        "selection": "greedy",
        "gumbel_beta": 1.0,
    }
    assert set(get_method("batchbald").options()) == {"pool_size", "max_exact_configurations", "num_samples"}
    # the reference's design entry point (used by benchmarks/design_speed.py) has the same defaults
    assert ref.BALPM_DEFAULTS == get_method("balpm").options()
    assert ref.BATCHBALD_POOL_SIZE == get_method("batchbald").options()["pool_size"]
    assert ref.BALPM_DISTANCE_EPSILON == BALPM_DISTANCE_EPSILON


@pytest.mark.parametrize(
    "name, options",
    [
        ("bald", {}),
        ("batchbald", {}),
        ("batchbald", {"pool_size": 10}),
        ("balpm", {}),
        ("balpm", {"beta": 0.5, "k": 3}),
        ("balpm", {"beta": 0.5, "estimator": "kl", "selection": "softmax", "normalize_entropy": True}),
    ],
)
def test_reference_design_entry_point_agrees_with_the_fast_design(name, options):
    rng = np.random.default_rng(7)
    prompt_of = np.repeat(np.arange(6), 4)  # 6 prompts x 4 responses
    pairs = candidate_pairs(prompt_of, cross_prompt=True, rng=rng, max_pairs=60)
    cs = ComparisonSet(
        np.zeros((24, 1)), rng.normal(size=(5, 24)), prompt_of, pairs, rng.normal(size=(6, 8)), rng.normal(size=(9, 8))
    )
    fast = make_selector(name, options)(cs, 5, np.random.default_rng(1)).tolist()
    assert fast == ref.design(name, cs, 5, np.random.default_rng(1), **options)


def test_invalid_options_and_inputs_raise_readable_errors():
    cs = clustered_prompts()
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="selection"):
        make_selector("balpm", {"selection": "boltzmann"})(cs, 2, rng)
    with pytest.raises(ConfigError, match="estimator"):
        make_selector("balpm", {"estimator": "kde"})(cs, 2, rng)
    with pytest.raises(ConfigError, match="not an option"):
        make_selector("batchbald", {"beta": 1.0})
    with pytest.raises(ConfigError, match="pool_size"):
        make_selector("batchbald", {"pool_size": 0})(cs, 2, rng)
    with pytest.raises(ValueError, match="exceeds"):
        make_selector("bald")(cs, len(cs.pairs) + 1, rng)
    no_features = ComparisonSet(cs.phi, cs.rewards, cs.prompt_of, cs.pairs)
    with pytest.raises(ValueError, match="prompt_features"):
        make_selector("balpm")(no_features, 2, rng)
    too_few = ComparisonSet(
        cs.phi, cs.rewards, cs.prompt_of, cs.pairs, cs.prompt_features[:10], cs.acquired_prompt_features
    )
    with pytest.raises(ValueError, match="prompt_features has 10 rows"):
        make_selector("balpm")(too_few, 2, rng)
    wrong_width = ComparisonSet(cs.phi, cs.rewards, cs.prompt_of, cs.pairs, cs.prompt_features, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="acquired_prompt_features has shape"):
        make_selector("balpm")(wrong_width, 2, rng)
    for name in ("bald", "batchbald", "balpm"):
        assert make_selector(name)(cs, 0, rng).shape == (0,)


def test_balpm_radius_sees_the_unlabelled_pool():
    """Two candidate prompts at 0 and 10 with equal BALD: alone they are each other's nearest
    neighbour (a tie, lowest index). With unlabelled pool prompts crowding the first, its
    kNN radius shrinks (0.1 vs 9.9), its entropy term drops, and BAL-PM takes the second."""
    rewards = np.zeros((2, 4))
    prompt_of = np.array([0, 0, 1, 1])
    pairs = np.array([[0, 1], [2, 3]])
    features = np.array([[0.0], [10.0]])
    alone = ComparisonSet(np.zeros((4, 1)), rewards, prompt_of, pairs, features, None)
    crowded = ComparisonSet(np.zeros((4, 1)), rewards, prompt_of, pairs, features, None,
                            pool_prompt_features=np.array([[0.1], [-0.1], [0.2]]))
    options = {"beta": 1.0, "k": 1}
    assert make_selector("balpm", options)(alone, 1, np.random.default_rng(0)).tolist() == [0]
    assert make_selector("balpm", options)(crowded, 1, np.random.default_rng(0)).tolist() == [1]
    wrong = ComparisonSet(np.zeros((4, 1)), rewards, prompt_of, pairs, features, None, pool_prompt_features=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="pool_prompt_features has shape \\(2, 3\\); expected \\[u, 1\\]"):
        make_selector("balpm", options)(wrong, 1, np.random.default_rng(0))
