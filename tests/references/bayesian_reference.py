"""Slow, obviously-correct references of the Bayesian designs (bald, batchbald, balpm) and of
the k-nearest-neighbour entropy estimators, written as plain Python loops with scalar math.

* BALD by its definition: H[y_i] - E_θ H[y_i | θ], every entropy a sum over the two outcomes,
  the predictive distribution the average of the K heads (equally weighted posterior samples).
* BatchBALD: the joint mutual information I(y_S; θ) = H(y_S) - Σ_{j∈S} E_θ H(y_j | θ) by
  enumerating all 2^|S| outcome configurations, p(y_S) = (1/K) Σ_k Π_j p(y_j | θ_k).
* kNN entropies: Kozachenko–Leonenko by sorting every point's distances; BAL-PM's per-prompt
  terms (003, see activepref.acquisition.bayesian) by explicit distance lists and counts.
* Greedy designs are checked step by step: ``greedy_scores`` functions return every
  candidate's score given the already-selected prefix, and the tests require the fast pick to
  be optimal up to FLOAT_TOL at each step (so fast == reference greedy whenever the optimum is
  unique, and one of the optimal picks otherwise).

ψ at integers: ψ(n) = -γ + Σ_{j=1}^{n-1} 1/j.
"""

from __future__ import annotations

import math
from itertools import product

EULER_GAMMA = 0.5772156649015329
FLOAT_TOL = 1e-9  # far above the ~1e-15 disagreement of vectorised and scalar sums
NORMALIZE_FLAT = 1e-12  # a spread below this (relative) counts as no spread at all


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def entropy(distribution: list[float]) -> float:
    """-Σ p log p over a finite distribution, 0 log 0 = 0."""
    return -sum(p * math.log(p) for p in distribution if p > 0)


def digamma_int(n: int) -> float:
    return -EULER_GAMMA + sum(1.0 / j for j in range(1, n))


def head_probabilities(rewards, pairs) -> list[list[float]]:
    """p[k][i] = s(r_k(a_i) - r_k(b_i)), from nested lists rewards [K][n], pairs [M][2]."""
    return [[sigmoid(row[a] - row[b]) for a, b in pairs] for row in rewards]


# ----------------------------------------------------------------------------- BALD


def bald(probs: list[list[float]]) -> list[float]:
    """[M] BALD of every comparison from p[k][i]."""
    k_heads = len(probs)
    out = []
    for i in range(len(probs[0])):
        predictive = [0.0, 0.0]  # p(y = 1), p(y = 0)
        expected = 0.0
        for k in range(k_heads):
            outcome = [probs[k][i], 1.0 - probs[k][i]]
            for y in range(2):
                predictive[y] += outcome[y] / k_heads
            expected += entropy(outcome) / k_heads
        out.append(entropy(predictive) - expected)
    return out


def top_k(scores: list[float], budget: int) -> list[int]:
    """Indices of the largest scores, ties by lowest index."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:budget]


# ----------------------------------------------------------------------------- BatchBALD


def joint_mutual_information(probs: list[list[float]], subset: list[int]) -> float:
    """I(y_S; θ) by enumerating the 2^|S| configurations of y_S."""
    k_heads = len(probs)
    joint = []
    for config in product((1, 0), repeat=len(subset)):
        total = 0.0
        for k in range(k_heads):
            like = 1.0
            for j, y in zip(subset, config):
                like *= probs[k][j] if y == 1 else 1.0 - probs[k][j]
            total += like / k_heads
        joint.append(total)
    aleatoric = 0.0
    for j in subset:
        for k in range(k_heads):
            aleatoric += entropy([probs[k][j], 1.0 - probs[k][j]]) / k_heads
    return entropy(joint) - aleatoric


def batchbald_scores(probs: list[list[float]], prefix: list[int]) -> list[float]:
    """Every candidate's greedy score given the selected prefix: the gain
    I(y_{prefix ∪ i}; θ) - I(y_prefix; θ) = H(y_prefix, y_i) - H(y_prefix) - E_θ H(y_i | θ),
    -inf for candidates already selected. The joint entropies enumerate all configurations;
    the per-head likelihoods of the prefix's 2^c configurations are tabulated once."""
    k_heads = len(probs)
    table = []  # [2^c][K] Π_{j∈prefix} p(y_j | θ_k)
    for config in product((1, 0), repeat=len(prefix)):
        row = []
        for k in range(k_heads):
            like = 1.0
            for j, y in zip(prefix, config):
                like *= probs[k][j] if y == 1 else 1.0 - probs[k][j]
            row.append(like)
        table.append(row)
    h_prefix = entropy([sum(row) / k_heads for row in table])
    scores = []
    for i in range(len(probs[0])):
        if i in prefix:
            scores.append(-math.inf)
            continue
        joint = []
        for row in table:
            for y in (1, 0):
                joint.append(
                    sum(row[k] * (probs[k][i] if y == 1 else 1.0 - probs[k][i]) for k in range(k_heads)) / k_heads
                )
        aleatoric = sum(entropy([probs[k][i], 1.0 - probs[k][i]]) for k in range(k_heads)) / k_heads
        scores.append(entropy(joint) - h_prefix - aleatoric)
    return scores


# ----------------------------------------------------------------------------- kNN entropies


def distance(u, v) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def knn_entropy(points, k: int) -> float:
    """Kozachenko–Leonenko: ψ(N) - ψ(k) + log V_q + (q/N) Σ_i log ρ_k(i)."""
    n, dim = len(points), len(points[0])
    log_rho = 0.0
    for i in range(n):
        dists = sorted(distance(points[i], points[j]) for j in range(n) if j != i)
        log_rho += math.log(dists[k - 1])
    log_volume = 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)
    return digamma_int(n) - digamma_int(k) + log_volume + dim * log_rho / n


def distance_tables(prompts, initial_acquired, pool=()):
    """(between [P][P], to_initial [P][a], to_pool [P][u]) Euclidean distances, each computed
    once; ``pool``: the unlabelled prompts outside the batch (neighbours for ρ_k only)."""
    between = [[distance(u, v) for v in prompts] for u in prompts]
    to_initial = [[distance(u, a) for a in initial_acquired] for u in prompts]
    to_pool = [[distance(u, w) for w in pool] for u in prompts]
    return between, to_initial, to_pool


def ksg_terms(
    prompts, initial_acquired, added: list[int], k: int, dimension: float, epsilon: float, tables=None
) -> list[float]:
    """[P] e(x) for every candidate prompt; ``added``: candidate prompts picked so far in the
    batch (with repetition). ρ_k(x) over the other candidates, the unlabelled pool and the
    initially acquired points; n(x) counts initial acquired points and added prompts within ρ_k(x)."""
    between, to_initial, to_pool = tables or distance_tables(prompts, initial_acquired)
    out = []
    for x in range(len(prompts)):
        others = [between[x][j] for j in range(len(prompts)) if j != x]
        everyone = sorted(others + to_initial[x] + to_pool[x])
        k_eff = min(k, len(everyone))
        rho = everyone[k_eff - 1] if k_eff > 0 else 0.0
        n = sum(1 for d in to_initial[x] if d <= rho)
        n += sum(1 for j in added if between[x][j] <= rho)
        out.append(math.log(2.0 * rho + epsilon) - digamma_int(n + 1) / dimension)
    return out


def kl_terms(prompts, initial_acquired, added: list[int], k: int, epsilon: float, tables=None) -> list[float]:
    """[P] log(2 ρ_k^A(x) + ε), ρ_k^A the k-th nearest point of the acquired multiset A
    (initial points, then added prompts); 0 while A is empty; k clipped to |A|."""
    between, to_initial, _ = tables or distance_tables(prompts, initial_acquired)
    out = []
    for x in range(len(prompts)):
        dists = list(to_initial[x]) + [between[x][j] for j in added]
        if not dists:
            out.append(0.0)
            continue
        dists.sort()
        out.append(math.log(2.0 * dists[min(k, len(dists)) - 1] + epsilon))
    return out


# ----------------------------------------------------------------------------- BAL-PM


def balpm_scores(
    bald_values: list[float],
    pair_prompts: list[tuple[int, int]],
    prompts,
    initial_acquired,
    prefix: list[int],
    *,
    beta: float,
    k: int,
    dimension: float,
    epsilon: float,
    estimator: str = "ksg",
    normalize_entropy: bool = False,
    noise: list[float] | None = None,
    tables=None,
) -> list[float]:
    """Every comparison's BAL-PM score given the selected prefix (-inf once selected):
    BALD_i + β · (e(x1) + e(x2))/2, e from the prompts acquired before plus those of the prefix
    (x1 alone for in-prompt comparisons, both for cross-prompt ones). With ``noise`` (the
    softmax selection's Gumbel draws / gumbel_beta) the ranking score, score + noise."""
    added = []
    for i in prefix:
        x1, x2 = pair_prompts[i]
        added.append(x1)
        if x2 != x1:
            added.append(x2)
    if estimator == "ksg":
        e = ksg_terms(prompts, initial_acquired, added, k, dimension, epsilon, tables)
    else:
        e = kl_terms(prompts, initial_acquired, added, k, epsilon, tables)
    term = [(e[x1] + e[x2]) / 2.0 for x1, x2 in pair_prompts]
    if normalize_entropy:
        rest = [term[i] for i in range(len(term)) if i not in prefix]
        mean = sum(rest) / len(rest)
        std = math.sqrt(sum((t - mean) ** 2 for t in rest) / len(rest))
        flat = std <= NORMALIZE_FLAT * (1.0 + abs(mean))
        term = [0.0 if flat else (t - mean) / std for t in term]
    noise = noise or [0.0] * len(term)
    return [-math.inf if i in prefix else bald_values[i] + beta * term[i] + noise[i] for i in range(len(term))]


# ----------------------------------------------------------------------------- design entry point

BALPM_DEFAULTS = {
    "beta": 1e-2,
    "k": 13,
    "dimension": 1.0,
    "estimator": "ksg",
    "normalize_entropy": False,
    "selection": "greedy",
    "gumbel_beta": 1.0,
}
BALPM_DISTANCE_EPSILON = 1e-4
BATCHBALD_POOL_SIZE = 1024


def greedy(scores_after, budget: int) -> list[int]:
    """Greedy selection: each step the first index of the largest score given the prefix."""
    chosen: list[int] = []
    for _ in range(budget):
        scores = scores_after(chosen)
        best = max(scores)
        chosen.append(scores.index(best))
    return chosen


def design(name: str, comparisons, budget: int, rng, **options) -> list[int]:
    """The reference selection of design ``name`` (bald, batchbald, balpm) on a ComparisonSet,
    with the fast designs' options. batchbald is exact (enumeration), so it agrees with the fast
    design while budget - 1 <= log2(max_exact_configurations); balpm draws
    ``rng.gumbel(size=M)`` for ``selection="softmax"``, as the fast design documents."""
    probs = head_probabilities(comparisons.rewards.tolist(), comparisons.pairs.tolist())
    bald_values = bald(probs)
    m = len(bald_values)
    if name == "bald":
        return top_k(bald_values, budget)
    if name == "batchbald":
        pool_size = options.get("pool_size", BATCHBALD_POOL_SIZE)
        pool = list(range(m))
        if pool_size is not None and max(pool_size, budget) < m:
            pool = sorted(top_k(bald_values, max(pool_size, budget)))
        sub = [[row[i] for i in pool] for row in probs]
        return [pool[j] for j in greedy(lambda prefix: batchbald_scores(sub, prefix), budget)]
    if name == "balpm":
        o = {**BALPM_DEFAULTS, **options}
        noise = None
        if o["selection"] == "softmax":
            noise = [g / o["gumbel_beta"] for g in rng.gumbel(size=m).tolist()]
        prompts = comparisons.prompt_features.tolist()
        acquired = [] if comparisons.acquired_prompt_features is None else comparisons.acquired_prompt_features.tolist()
        pair_prompts = [tuple(pp) for pp in comparisons.prompt_of[comparisons.pairs].tolist()]
        pool = [] if comparisons.pool_prompt_features is None else comparisons.pool_prompt_features.tolist()
        tables = distance_tables(prompts, acquired, pool)
        return greedy(
            lambda prefix: balpm_scores(
                bald_values,
                pair_prompts,
                prompts,
                acquired,
                prefix,
                beta=o["beta"],
                k=o["k"],
                dimension=o["dimension"],
                epsilon=BALPM_DISTANCE_EPSILON,
                estimator=o["estimator"],
                normalize_entropy=o["normalize_entropy"],
                noise=noise,
                tables=tables,
            ),
            budget,
        )
    raise ValueError(f"no reference for design {name!r}")
