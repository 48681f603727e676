"""Slow, obviously-correct reference implementations of the batch designs of 002 §3
(``activepref.acquisition.designs``): dopt, pa_dopt, xtx, entropy, maxdiff, coreset.

Written as plain Python loops over comparisons with a scalar ``math.exp`` sigmoid, explicit
outer products, ``np.linalg.slogdet`` / ``np.linalg.inv`` recomputed from scratch at every
step, and ``math.dist`` for distances. Nothing here is incremental.

* The determinant criterion of a subset C is S(C) = log|B + Σ_{i∈C} a_i ΔΦ_i ΔΦ_iᵀ| with
  B = prior_precision · I (+ past_information for pa_dopt, + Σ_h ΔΦ_h ΔΦ_hᵀ over
  past_differences for xtx) and a_i = p̂_i(1 - p̂_i) (dopt, pa_dopt) or 1 (xtx).
* gradient: the top ``budget`` of a_i ΔΦ_iᵀ A⁻¹ ΔΦ_i, A = B + Σ_{all i} a_i ΔΦ_i ΔΦ_iᵀ
  (002 §3.2); also available as central finite differences of S(w) (``finite_difference``).
* greedy: at each step, S(selected + {i}) by slogdet for every unselected i; first argmax.
* entropy: top binary entropy -p log p - (1-p) log(1-p) (002 eq. 5); maxdiff: top |r̂1 - r̂2|.
* coreset: k-center greedy; the first pick is ``rng.integers(M)`` without history.

Per-head Φ (what the loop passes): phi [K, n, p] holds each head's own last hidden layer, with
past_information [K, p, p] and past_differences [K, H, p]. Each head is then its own problem,
built by ``head_sets``: a 2-D comparison set with that head's Φ, history and rewards alone
(so a_i comes from the head's own p̂). A determinant design's criterion, gradient score and
greedy gain are the means over heads of the single-head ones; coreset measures distances in
the concatenated layer [Φ_1, ..., Φ_K] (the space in which the ensemble-mean reward is linear);
entropy and maxdiff use the ensemble-mean rewards as before.

Exact ties go to the lowest index (``sorted`` is stable). Because the fast code evaluates the
same quantities by other floating-point routes, the tests compare selections step by step
with ``step_scores``: at each step the fast pick must score within a tolerance of the best
remaining score (and is then exactly the reference's pick whenever that best is unique).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

OPTIMISERS = ("gradient", "greedy")
DETERMINANT = {  # design -> (weighted by p̂(1-p̂), past_information in B, past_differences in B)
    "dopt": (True, False, False),
    "pa_dopt": (True, True, False),
    "xtx": (False, False, True),
}


# ----------------------------------------------------------------------------- helpers


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def mean_rewards(comparisons) -> list[float]:
    rewards = comparisons.rewards.tolist()  # [K][n]
    k, n = len(rewards), len(rewards[0])
    return [sum(rewards[h][j] for h in range(k)) / k for j in range(n)]


def reward_gaps(comparisons) -> list[float]:
    r = mean_rewards(comparisons)
    return [r[int(a)] - r[int(b)] for a, b in comparisons.pairs.tolist()]


def head_sets(comparisons) -> list:
    """One 2-D comparison set per head (just ``[comparisons]`` when phi is [n, p])."""
    phi = np.asarray(comparisons.phi, dtype=np.float64)
    if phi.ndim == 2:
        return [comparisons]
    out = []
    for k in range(phi.shape[0]):
        info = None if comparisons.past_information is None else np.asarray(comparisons.past_information)[k]
        past = None if comparisons.past_differences is None else np.asarray(comparisons.past_differences)[k]
        out.append(
            type(comparisons)(
                phi[k], np.asarray(comparisons.rewards)[k : k + 1], comparisons.prompt_of, comparisons.pairs,
                past_information=info, past_differences=past, prior_precision=comparisons.prior_precision,
            )
        )
    return out


def concatenated(rows_per_head: list[list[float]]) -> list[float]:
    return [v for row in rows_per_head for v in row]


def differences(comparisons) -> list[np.ndarray]:
    """[M] of [p] ΔΦ_i = Φ_i1 - Φ_i2, one comparison at a time (per-head Φ: the heads'
    differences concatenated, [K p])."""
    phi = np.asarray(comparisons.phi, dtype=np.float64)
    if phi.ndim == 3:
        return [np.array(concatenated([(phi[k, int(a)] - phi[k, int(b)]).tolist() for k in range(len(phi))]))
                for a, b in comparisons.pairs.tolist()]
    return [phi[int(a)] - phi[int(b)] for a, b in comparisons.pairs.tolist()]


def past_rows(comparisons) -> list[list[float]]:
    """The labelled ΔΦ rows (per-head: concatenated over heads)."""
    if comparisons.past_differences is None:
        return []
    past = np.asarray(comparisons.past_differences, dtype=np.float64)
    if past.ndim == 3:
        return [concatenated([past[k, h].tolist() for k in range(len(past))]) for h in range(past.shape[1])]
    return past.tolist()


def weights(comparisons, weighted: bool) -> list[float]:
    """a_i = p̂_i(1 - p̂_i) with p̂_i = s(r̂_1 - r̂_2) (002 eq. 3), or 1."""
    if not weighted:
        return [1.0] * len(comparisons.pairs)
    return [sigmoid(g) * sigmoid(-g) for g in reward_gaps(comparisons)]


def base(comparisons, past_information: bool, past_differences: bool) -> np.ndarray:
    p = comparisons.phi.shape[1]
    out = comparisons.prior_precision * np.eye(p)
    if past_information and comparisons.past_information is not None:
        out = out + np.asarray(comparisons.past_information, dtype=np.float64)
    if past_differences and comparisons.past_differences is not None:
        for h in np.asarray(comparisons.past_differences, dtype=np.float64):
            out = out + np.outer(h, h)
    return out


def problem(name: str, comparisons) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """(B [p, p], ΔΦ [M] of [p], a [M]) of a determinant design on a 2-D comparison set."""
    weighted, past_info, past_diff = DETERMINANT[name]
    return base(comparisons, past_info, past_diff), differences(comparisons), weights(comparisons, weighted)


def problems(name: str, comparisons) -> list[tuple[np.ndarray, list[np.ndarray], list[float]]]:
    """One ``problem`` per head."""
    return [problem(name, head) for head in head_sets(comparisons)]


def mean_over(values: list) -> list | float:
    """Elementwise mean of per-head lists (None stays None), or the mean of floats."""
    if not isinstance(values[0], list):
        return sum(values) / len(values)
    return [None if column[0] is None else sum(column) / len(column) for column in zip(*values)]


def log_det(matrix: np.ndarray) -> float:
    sign, value = np.linalg.slogdet(matrix)
    assert sign > 0, "information matrix is not positive definite"
    return float(value)


def information(b: np.ndarray, diffs: list[np.ndarray], a: list[float], chosen) -> np.ndarray:
    """B + Σ_{i∈chosen} a_i ΔΦ_i ΔΦ_iᵀ, summed from scratch."""
    out = b.copy()
    for i in chosen:
        out = out + a[i] * np.outer(diffs[i], diffs[i])
    return out


def criterion(b, diffs, a, chosen) -> float:
    """S(C) = log|B + Σ_{i∈C} c_i|."""
    return log_det(information(b, diffs, a, chosen))


def top(scores: list[float], budget: int) -> list[int]:
    """Indices of the largest scores, best first; exact ties by lowest index (stable sort)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:budget]


def check_budget(budget: int, m: int) -> None:
    if budget < 0 or budget > m:
        raise ValueError(f"budget {budget} outside [0, {m}]")


# --------------------------------------------------------------------- determinant designs


def sensitivity(b, diffs, a) -> list[float]:
    """a_i ΔΦ_iᵀ A⁻¹ ΔΦ_i with A = B + Σ_all c_i (002 §3.2)."""
    inv = np.linalg.inv(information(b, diffs, a, range(len(diffs))))
    return [a[i] * float(diffs[i] @ inv @ diffs[i]) for i in range(len(diffs))]


def finite_difference(b, diffs, a, step: float = 1e-4) -> list[float]:
    """Central differences of S(w) = log|B + Σ_j w_j c_j| in w_i at w = 1."""
    full = information(b, diffs, a, range(len(diffs)))
    out = []
    for i in range(len(diffs)):
        c = a[i] * np.outer(diffs[i], diffs[i])
        out.append((log_det(full + step * c) - log_det(full - step * c)) / (2 * step))
    return out


def greedy_gains(b, diffs, a, chosen: list[int]) -> list[float | None]:
    """S(chosen + {i}) - S(chosen) for every i not in chosen (None for chosen ones)."""
    now = criterion(b, diffs, a, chosen)
    return [None if i in chosen else criterion(b, diffs, a, [*chosen, i]) - now for i in range(len(diffs))]


def greedy(b, diffs, a, budget: int) -> list[int]:
    """Exact greedy by recomputation: each step adds the first argmax of S(chosen + {i})."""
    chosen: list[int] = []
    for _ in range(budget):
        gains = greedy_gains(b, diffs, a, chosen)
        best = max(g for g in gains if g is not None)
        chosen.append(next(i for i, g in enumerate(gains) if g is not None and g == best))
    return chosen


def mean_criterion(heads, chosen) -> float:
    """S(C) averaged over heads: (1/K) Σ_k log|B_k + Σ_{i∈C} a_ik ΔΦ_ik ΔΦ_ikᵀ|."""
    return mean_over([criterion(*h, chosen) for h in heads])


def greedy_over_heads(heads, budget: int) -> list[int]:
    """Exact greedy on the head-averaged criterion, by recomputation (first argmax)."""
    if len(heads) == 1:
        return greedy(*heads[0], budget)
    chosen: list[int] = []
    for _ in range(budget):
        gains = mean_over([greedy_gains(*h, chosen) for h in heads])
        best = max(g for g in gains if g is not None)
        chosen.append(next(i for i, g in enumerate(gains) if g is not None and g == best))
    return chosen


def brute_force_optimum(b, diffs, a, budget: int) -> tuple[float, tuple[int, ...]]:
    """max over all subsets of size budget of S(C) (first subset in lexicographic order on ties)."""
    best_value, best_set = -math.inf, ()
    for subset in itertools.combinations(range(len(diffs)), budget):
        value = criterion(b, diffs, a, subset)
        if value > best_value:
            best_value, best_set = value, subset
    return best_value, best_set


# ------------------------------------------------------------------------- score designs


def binary_entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)


def entropy_scores(comparisons) -> list[float]:
    """H(p̂_i) (002 eq. 5)."""
    return [binary_entropy(sigmoid(g)) for g in reward_gaps(comparisons)]


def maxdiff_scores(comparisons) -> list[float]:
    """|r̂_1 - r̂_2| (002 eq. 6)."""
    return [abs(g) for g in reward_gaps(comparisons)]


# ---------------------------------------------------------------------------------- coreset


def comparison_distance(x, y, sign_invariant: bool) -> float:
    d = math.dist(x, y)
    return min(d, math.dist(x, [-v for v in y])) if sign_invariant else d


def coreset_distances(comparisons, chosen: list[int], sign_invariant: bool = True) -> list[float | None]:
    """Distance of every unselected comparison to its nearest selected or labelled one
    (math.inf when there is neither; None for selected ones)."""
    diffs = [d.tolist() for d in differences(comparisons)]
    past = past_rows(comparisons)
    out: list[float | None] = []
    for i, x in enumerate(diffs):
        if i in chosen:
            out.append(None)
            continue
        others = [diffs[j] for j in chosen] + past
        out.append(min((comparison_distance(x, y, sign_invariant) for y in others), default=math.inf))
    return out


def coreset(comparisons, budget: int, rng: np.random.Generator, sign_invariant: bool = True) -> list[int]:
    m = len(comparisons.pairs)
    has_history = len(past_rows(comparisons)) > 0
    chosen: list[int] = []
    for t in range(budget):
        if t == 0 and not has_history:
            chosen.append(int(rng.integers(m)))
            continue
        dist = coreset_distances(comparisons, chosen, sign_invariant)
        best = max(d for d in dist if d is not None)
        chosen.append(next(i for i, d in enumerate(dist) if d is not None and d == best))
    return chosen


# ------------------------------------------------------------------------------- dispatch


def design(name: str, comparisons, budget: int, rng: np.random.Generator, **options) -> list[int]:
    """The reference selection of design ``name`` (same signature as the registered design)."""
    check_budget(budget, len(comparisons.pairs))
    if name in DETERMINANT:
        method = options.pop("method", "gradient")
        assert not options and method in OPTIMISERS, (method, options)
        heads = problems(name, comparisons)
        if method == "greedy":
            return greedy_over_heads(heads, budget)
        return top(mean_over([sensitivity(*h) for h in heads]), budget)
    if name == "entropy":
        return top(entropy_scores(comparisons), budget)
    if name == "maxdiff":
        return top(maxdiff_scores(comparisons), budget)
    if name == "coreset":
        return coreset(comparisons, budget, rng, **options)
    raise KeyError(f"no reference for design {name!r}")


def step_scores(name: str, comparisons, chosen: list[int], **options) -> list[float | None]:
    """The score the reference maximises at the step after ``chosen`` (None: already chosen).

    Top-k designs: their fixed scores; greedy: the log-det gain; coreset: the distance to the
    nearest selected/labelled comparison. Used to check a fast selection step by step.
    """
    if name in DETERMINANT:
        method = options.get("method", "gradient")
        heads = problems(name, comparisons)
        if method == "greedy":
            return mean_over([greedy_gains(*h, chosen) for h in heads])
        scores = mean_over([sensitivity(*h) for h in heads])
    elif name == "entropy":
        scores = entropy_scores(comparisons)
    elif name == "maxdiff":
        scores = maxdiff_scores(comparisons)
    elif name == "coreset":
        return coreset_distances(comparisons, chosen, options.get("sign_invariant", True))
    else:
        raise KeyError(f"no reference for design {name!r}")
    return [None if i in chosen else s for i, s in enumerate(scores)]
