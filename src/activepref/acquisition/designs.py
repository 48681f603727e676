"""Batch designs over candidate comparisons (002 §3): D-opt, PA D-opt, det(XᵀX), entropy,
maxdiff and coreset.

Every design is ``design(comparisons, budget, rng, **options) -> [budget]`` distinct int64
indices into ``comparisons.pairs``, in selection order (see ``comparisons.ComparisonSet``).
Feature-based designs work on the reward model's last hidden layer Φ (002 §3.3) through the
comparison differences ΔΦ_i = Φ_i1 - Φ_i2 [M, p]; nothing assumes in-prompt pairs, so
cross-prompt candidates (002 §3.4) need only be present in ``pairs``.

Per-head Φ. 002 has one reward model, linear in its last hidden layer. The ENN has K heads,
each linear in its *own* last hidden layer (hidden units of different heads are unrelated, so
averaging them across heads would not be a feature space of any model). The loop therefore
passes phi [K, n, p] (``ComparisonSet.phi``), past_information [K, p, p] and
past_differences [K, H, p], and:

* the determinant designs use each head's Fisher information: head k is a logistic model
  in its Φ_k with weights a_ik = p̂_ik(1 - p̂_ik) from its own reward gap, and the criterion
  is the mean over heads, S(C) = (1/K) Σ_k log|B_k + Σ_{i∈C} a_ik ΔΦ_ik ΔΦ_ikᵀ| (the
  expected information gain over the ensemble's posterior samples); its gradient score and
  greedy gains are the head means of the single-head ones below;
* coreset measures distances in the concatenated layer [Φ_1, ..., Φ_K], the space in which
  the ensemble-mean reward (1/K) Σ_k w_kᵀΦ_k is linear;
* a 2-D phi [n, p] is a single model (K = 1) weighted by the ensemble-mean gap, as before.

Determinant designs (002 eqs. 4, 7 and PA D-opt). With contributions c_i = a_i ΔΦ_i ΔΦ_iᵀ,
a_i = p̂_i(1 - p̂_i) (D-opt, PA D-opt) or a_i = 1 (det(XᵀX)), and a base information

    B = prior_precision · I  (+ past_information for PA D-opt, + Σ_h ΔΦ_h ΔΦ_hᵀ over
                              past_differences for det(XᵀX)),

the criterion of a subset C is S(C) = log |B + Σ_{i∈C} c_i| (the log of the paper's
determinant: same maximiser). Two optimisers (option ``method``):

* ``gradient`` (default, 002 §3.2 eqs. 8-10): weight every candidate, S(w) = log |A(w)| with
  A(w) = B + Σ_i w_i c_i, and take the top ``budget`` of the sensitivity
  ∂S/∂w_i |_{w=1} = tr(A⁻¹ c_i) = a_i ΔΦ_iᵀ A⁻¹ ΔΦ_i (A = A(1) holds *all* candidates).
  Ranking by ∂|A|/∂w_i = |A| · ∂S/∂w_i, the paper's literal score, gives the same order.
  Cost O(M p + n p²) through the n candidates (``pair_information``).
* ``greedy``: exact greedy maximisation of S, one comparison at a time. By the matrix
  determinant lemma the gain of adding i to the current information G is
  log(1 + a_i q_i) with q_i = ΔΦ_iᵀ G⁻¹ ΔΦ_i; after adding k (u = G⁻¹ ΔΦ_k,
  s = a_k / (1 + a_k q_k)) Sherman–Morrison gives G⁻¹ ← G⁻¹ - s u uᵀ and hence
  q_i ← q_i - s (ΔΦ_i · u)². Cost O(M p²) once for q (O(M p) when B = λI), then
  O(M p + p²) per selected comparison; no determinant is ever recomputed.

Ties (exactly equal scores) go to the lowest index everywhere: top-k designs use a stable
sort on the negated score, greedy designs take the first argmax.

``budget`` must lie in [0, M]: a larger budget raises ``ValueError`` (a design never
silently returns fewer comparisons than asked).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import Field

from activepref.acquisition import register_design
from activepref.acquisition.comparisons import ComparisonSet
from activepref.errors import ConfigError

Optimiser = Annotated[
    Literal["gradient", "greedy"],  # 002 §3.2 sensitivity approximation; exact greedy
    Field(description="gradient: 002 §3.2's first-order score, top budget; greedy: exact greedy log-det"),
]
OPTIMISERS = get_args(get_args(Optimiser)[0])
DEFAULT_OPTIMISER = "gradient"  # what 002 §3.2 uses for D-opt, PA D-opt and det(XᵀX)
HISTORY_CHUNK = 2048  # rows of past_differences per distance block in coreset
COMPARISON_BLOCK = 256  # comparisons per block of coreset's history distances: [block, chunk] stays in cache


# ----------------------------------------------------------------------------- helpers


def check_budget(budget: int, n_candidates: int, design: str) -> int:
    """The budget as an int, or ValueError if it is negative or exceeds the M candidates."""
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"{design}: budget must be >= 0 (got {budget})")
    if budget > n_candidates:
        raise ValueError(
            f"{design}: budget {budget} exceeds the {n_candidates} candidate comparisons; "
            "lower the batch size or generate more candidates (e.g. cross-prompt pairs)"
        )
    return budget


def top_by_score(scores: np.ndarray, budget: int) -> np.ndarray:
    """[M] -> [budget] indices of the largest scores, best first; exact ties by lowest index."""
    return np.argsort(-scores, kind="stable")[:budget].astype(np.int64)


def reward_gap(comparisons: ComparisonSet) -> np.ndarray:
    """[M] r̂_1 - r̂_2 under the ensemble mean (float64)."""
    r = comparisons.rewards.astype(np.float64, copy=False).mean(axis=0)  # [n]
    pairs = comparisons.pairs
    return r[pairs[:, 0]] - r[pairs[:, 1]]


def bernoulli_variance(gap: np.ndarray) -> np.ndarray:
    """[M] p̂(1 - p̂) with p̂ = s(gap), as e^{-|gap|} / (1 + e^{-|gap|})² so that confident
    comparisons keep a small positive weight instead of rounding to 0 (002 eq. 3)."""
    e = np.exp(-np.abs(gap))
    return e / (1.0 + e) ** 2


def head_count(comparisons: ComparisonSet) -> int:
    """K' = the number of per-head Φ layers (1 for a 2-D phi); ValueError on a shape mismatch."""
    phi = comparisons.phi
    if phi.ndim == 2:
        return 1
    if phi.ndim != 3 or phi.shape[0] != comparisons.rewards.shape[0]:
        raise ValueError(
            f"phi has shape {phi.shape}; expected [n, p] or [K, n, p] with K = {comparisons.rewards.shape[0]} heads as in rewards"
        )
    for name in ("past_information", "past_differences"):
        value = getattr(comparisons, name)
        if value is not None and (np.ndim(value) != 3 or len(value) != phi.shape[0]):
            raise ValueError(f"{name} has shape {np.shape(value)}; per-head phi needs one per head, [K, ...]")
    return int(phi.shape[0])


def head_history(value: np.ndarray | None, head: int, heads_axis: bool) -> np.ndarray | None:
    """Head ``head``'s slice of past_information / past_differences (the whole value for 2-D phi)."""
    if value is None:
        return None
    return np.asarray(value, dtype=np.float64)[head] if heads_axis else np.asarray(value, dtype=np.float64)


def head_layer(comparisons: ComparisonSet, head: int) -> np.ndarray:
    """[n, p] Φ of head ``head`` (the single layer for a 2-D phi), float64."""
    phi = comparisons.phi if comparisons.phi.ndim == 2 else comparisons.phi[head]
    return phi.astype(np.float64, copy=False)


def head_weights(comparisons: ComparisonSet, head: int, weighted: bool) -> np.ndarray:
    """[M] a_i: p̂(1 - p̂) from head ``head``'s own gap (per-head phi) or the ensemble-mean
    gap (2-D phi); all ones when not weighted."""
    if not weighted:
        return np.ones(len(comparisons.pairs))
    if comparisons.phi.ndim == 2:
        return bernoulli_variance(reward_gap(comparisons))
    r = comparisons.rewards[head].astype(np.float64, copy=False)
    return bernoulli_variance(r[comparisons.pairs[:, 0]] - r[comparisons.pairs[:, 1]])


def concatenated_past_differences(comparisons: ComparisonSet) -> np.ndarray | None:
    """[H, p] labelled ΔΦ (per-head [K, H, p] concatenated into [H, K p]), or None."""
    past = comparisons.past_differences
    if past is None:
        return None
    past = np.asarray(past, dtype=np.float64)
    return past if past.ndim == 2 else np.concatenate(list(past), axis=1)


def base_information(comparisons: ComparisonSet, past_information: bool, past_differences: bool, head: int = 0) -> np.ndarray | None:
    """[p, p] B = prior_precision · I + the requested history (of head ``head`` for per-head
    phi), or None when B is only the prior (so callers can use the cheap diagonal path)."""
    heads_axis = comparisons.phi.ndim == 3
    p = comparisons.phi.shape[-1]
    extra = []
    info = head_history(comparisons.past_information, head, heads_axis)
    if past_information and info is not None:
        extra.append(info)
    past = head_history(comparisons.past_differences, head, heads_axis)
    if past_differences and past is not None and len(past):
        extra.append(past.T @ past)  # [H, p] -> [p, p]
    if not extra:
        return None
    base = comparisons.prior_precision * np.eye(p) + sum(extra)
    return 0.5 * (base + base.T)  # exact symmetry for the Cholesky factor


def _inverse_cholesky(matrix: np.ndarray, design: str) -> np.ndarray:
    """[p, p] L⁻¹ with matrix = L Lᵀ; ValueError naming the fix if it is not positive definite."""
    try:
        chol = np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"{design}: the information matrix is not positive definite; check that Φ and rewards are "
            "finite and past_information is a symmetric positive semi-definite [p, p] matrix"
        ) from None
    return np.linalg.inv(chol)


def _prior_precision(comparisons: ComparisonSet, design: str) -> float:
    lam = float(comparisons.prior_precision)
    if not lam > 0:
        raise ValueError(f"{design}: prior_precision must be > 0 (got {lam}); it keeps log|B + Σ c_i| finite")
    return lam


def pair_information(layer: np.ndarray, pairs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[p, p] Σ_i a_i ΔΦ_i ΔΦ_iᵀ with ΔΦ_i = layer[a_i] - layer[b_i], through the candidates.

    layer: [n, p]; pairs: [M, 2]; weights: [M] a_i. The sum is Φᵀ L Φ with L = Σ_i a_i
    (e_a - e_b)(e_a - e_b)ᵀ the [n, n] weighted Laplacian of the comparison graph (sparse:
    4 M entries), so it costs O(M p + n p²) instead of the O(M p²) of summing the M outer
    products (M = 435 n/30 in-prompt pairs of 30 candidates: ~15x fewer flops). Adding a
    constant row to the layer changes nothing (L 1 = 0); centre it for less cancellation."""
    from scipy import sparse

    n = len(layer)
    a, b = pairs[:, 0], pairs[:, 1]
    rows = np.concatenate([a, b, a, b])
    cols = np.concatenate([a, b, b, a])
    vals = np.concatenate([weights, weights, -weights, -weights])
    laplacian = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))  # duplicates summed
    return layer.T @ np.asarray(laplacian @ layer)


def log_det_sensitivity(
    layer: np.ndarray, pairs: np.ndarray, weights: np.ndarray, base: np.ndarray | None, prior_precision: float, design: str
) -> np.ndarray:
    """∂/∂w_i log|A(w)| at w = 1 (002 §3.2, eq. 8-10).

    layer: [n, p] candidate Φ with ΔΦ_i = layer[a_i] - layer[b_i] for pairs [M, 2];
    weights: [M] a_i; base: [p, p] B, or None for B = prior_precision · I.
    A = B + Σ_i a_i ΔΦ_i ΔΦ_iᵀ (``pair_information``); returns [M] a_i ΔΦ_iᵀ A⁻¹ ΔΦ_i =
    a_i ||L⁻¹ ΔΦ_i||² (A = L Lᵀ), with L⁻¹ ΔΦ_i = y_a - y_b for y = layer L⁻ᵀ [n, p].
    """
    p = layer.shape[1]
    info = pair_information(layer, pairs, weights)  # [p, p]
    info += prior_precision * np.eye(p) if base is None else base
    info = 0.5 * (info + info.T)
    y = layer @ _inverse_cholesky(info, design).T  # [n, p] rows L⁻¹ φ_j
    z = y[pairs[:, 0]] - y[pairs[:, 1]]  # [M, p] rows L⁻¹ ΔΦ_i
    return weights * np.einsum("ij,ij->i", z, z)


def centred_layer(comparisons: ComparisonSet, head: int) -> np.ndarray:
    """[n, p] Φ of head ``head`` (the single layer for a 2-D phi), float64, minus its mean row
    (every ΔΦ is unchanged; products through the candidates then lose less to cancellation)."""
    phi = head_layer(comparisons, head)
    return phi - phi.mean(axis=0)


def greedy_log_det(
    layers: list[np.ndarray],
    pairs: np.ndarray,
    weights: list[np.ndarray],
    base: list[np.ndarray | None],
    prior_precision: float,
    budget: int,
    design: str,
) -> np.ndarray:
    """Exact greedy maximisation of the mean over heads of log|B + Σ_{i∈C} a_i ΔΦ_i ΔΦ_iᵀ|
    (module docstring; one head: the single-model criterion). Per head, one entry of each list:

    layers: [n, p] candidate Φ, with ΔΦ_i = layer[a_i] - layer[b_i] for pairs [M, 2];
    weights: [M]; base: [p, p] B, or None for B = prior_precision · I. Every quadratic form
    goes through the candidates (ΔΦ_iᵀ u = (layer u)[a_i] - (layer u)[b_i]), so a pick costs
    O(n p + M) per head. Returns [budget] indices in selection order (first argmax).
    """
    heads = len(layers)
    a, b = pairs[:, 0], pairs[:, 1]
    m, p = len(pairs), layers[0].shape[1]
    invs, qs = [], []
    for layer, bk in zip(layers, base):
        if bk is None:
            invs.append(np.eye(p) / prior_precision)  # [p, p] G⁻¹
            d = layer[a] - layer[b]
            qs.append(np.einsum("ij,ij->i", d, d) / prior_precision)  # [M]
        else:
            linv = _inverse_cholesky(bk, design)  # [p, p]
            invs.append(linv.T @ linv)
            y = layer @ linv.T  # [n, p]
            z = y[a] - y[b]  # [M, p]
            qs.append(np.einsum("ij,ij->i", z, z))
    chosen = np.empty(budget, dtype=np.int64)
    taken = np.zeros(m, dtype=bool)
    for t in range(budget):  # sequential by definition: each pick changes every gain
        if heads == 1:  # log(1 + a q) is increasing in a q: the argmax needs no log
            gain = weights[0] * qs[0]
        else:  # mean over heads of log(1 + a_k q_k) (determinant lemma per head)
            gain = sum(np.log1p(w * q) for w, q in zip(weights, qs)) / heads
        gain[taken] = -np.inf
        k = int(np.argmax(gain))
        chosen[t], taken[k] = k, True
        for layer, w, q, inv in zip(layers, weights, qs, invs):
            u = inv @ (layer[a[k]] - layer[b[k]])  # [p] G⁻¹ ΔΦ_k
            v = layer @ u  # [n]
            s = w[k] / (1.0 + w[k] * q[k])
            q -= s * (v[a] - v[b]) ** 2  # Sherman–Morrison on every quadratic form
            np.maximum(q, 0.0, out=q)  # G⁻¹ stays PSD; clip rounding below zero
            inv -= s * np.outer(u, u)
    return chosen


def _determinant_design(
    comparisons: ComparisonSet,
    budget: int,
    method: str,
    design: str,
    *,
    weighted: bool,
    past_information: bool,
    past_differences: bool,
) -> np.ndarray:
    if method not in OPTIMISERS:
        raise ConfigError(f"{design}: method must be one of {', '.join(map(repr, OPTIMISERS))} (got {method!r})")
    budget = check_budget(budget, len(comparisons.pairs), design)
    lam = _prior_precision(comparisons, design)
    heads = head_count(comparisons)
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    if method == "greedy":
        return greedy_log_det(
            [centred_layer(comparisons, k) for k in range(heads)],
            comparisons.pairs,
            [head_weights(comparisons, k, weighted) for k in range(heads)],
            [base_information(comparisons, past_information, past_differences, k) for k in range(heads)],
            lam, budget, design,
        )
    score = np.zeros(len(comparisons.pairs))
    for k in range(heads):  # one head's [M, p] differences at a time bounds the memory
        base = base_information(comparisons, past_information, past_differences, k)
        score += log_det_sensitivity(
            centred_layer(comparisons, k), comparisons.pairs, head_weights(comparisons, k, weighted), base, lam, design
        )
    return top_by_score(score / heads, budget)


# ------------------------------------------------------------------------------ designs


@register_design("dopt", "D-optimal: top comparisons by ∂ log|Fisher information + I/σ²| (002 eq. 4, §3.2).", inputs={"phi"})
def dopt(
    comparisons: ComparisonSet, budget: int, rng: np.random.Generator, method: Optimiser = DEFAULT_OPTIMISER
) -> np.ndarray:
    """Bayesian D-optimal design (002 eq. 4 with the + I/σ² prior): information of the new
    batch only, a_i = p̂_i(1 - p̂_i); ``method`` "gradient" (002 §3.2) or "greedy" (exact)."""
    return _determinant_design(
        comparisons, budget, method, "dopt", weighted=True, past_information=False, past_differences=False
    )


@register_design("pa_dopt", "Past-aware D-optimal: D-opt with the labelled comparisons' information added (002 §3.1).", inputs={"phi", "past_information"})
def pa_dopt(
    comparisons: ComparisonSet, budget: int, rng: np.random.Generator, method: Optimiser = DEFAULT_OPTIMISER
) -> np.ndarray:
    """PA D-opt (002 §3.1): maximise log|I_past + I + I/σ²|; ``past_information`` None counts
    as no history (then identical to ``dopt``)."""
    return _determinant_design(
        comparisons, budget, method, "pa_dopt", weighted=True, past_information=True, past_differences=False
    )


@register_design("xtx", "det(XᵀX): D-optimal on the design matrix of Φ differences, no p̂(1-p̂) weights (002 eq. 7).", inputs={"phi", "past_differences"})
def xtx(
    comparisons: ComparisonSet, budget: int, rng: np.random.Generator, method: Optimiser = DEFAULT_OPTIMISER
) -> np.ndarray:
    """det(XᵀX) (002 eq. 7, Mukherjee et al. 2024): a_i = 1; the labelled ``past_differences``
    join XᵀX when given; prior_precision · I is kept as a ridge so the determinant is
    defined when ΔΦ spans fewer than p directions (ReLU features often do)."""
    return _determinant_design(
        comparisons, budget, method, "xtx", weighted=False, past_information=False, past_differences=True
    )


@register_design("entropy", "Entropy: comparisons whose predicted preference p̂ is nearest 0.5 (002 eq. 5).", inputs=set())
def entropy(comparisons: ComparisonSet, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Top ``budget`` binary entropy H(p̂) (002 eq. 5). H(s(g)) is strictly decreasing in |g|,
    so the order is increasing |r̂_1 - r̂_2|, which keeps separating comparisons whose entropy
    rounds to 0 in floating point."""
    budget = check_budget(budget, len(comparisons.pairs), "entropy")
    return np.argsort(np.abs(reward_gap(comparisons)), kind="stable")[:budget].astype(np.int64)


@register_design("maxdiff", "MaxDiff: comparisons with the largest predicted reward gap |r̂1 - r̂2| (002 eq. 6).", inputs=set())
def maxdiff(comparisons: ComparisonSet, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Top ``budget`` |r̂_1 - r̂_2| under the ensemble mean (002 eq. 6)."""
    budget = check_budget(budget, len(comparisons.pairs), "maxdiff")
    return top_by_score(np.abs(reward_gap(comparisons)), budget)


def nearest_from_dots(dots: np.ndarray, norms: np.ndarray, other_norms: np.ndarray, sign_invariant: bool) -> np.ndarray:
    """[M] min over r others of ||ΔΦ_i - o||² = ||ΔΦ_i||² + ||o||² - 2 ΔΦ_i·o (sign-invariant:
    min(||ΔΦ_i - o||², ||ΔΦ_i + o||²), i.e. -2|ΔΦ_i·o|). dots: [M, r] ΔΦ_i·o, overwritten;
    norms: [M] ||ΔΦ_i||²; other_norms: [r] ||o||²."""
    if sign_invariant:
        np.abs(dots, out=dots)
    dots *= -2.0
    dots += other_norms[None, :]
    nearest = dots.min(axis=1)  # [M]
    nearest += norms
    return np.maximum(nearest, 0.0, out=nearest)  # the expansion can round below 0


def candidate_layer(comparisons: ComparisonSet) -> np.ndarray:
    """[n, p] the layer coreset measures in (per-head phi: the heads' layers side by side,
    [n, K p]), float64, centred (differences are unchanged; centring keeps the Gram matrix
    small, so its expansions lose less to cancellation)."""
    heads = 1 if comparisons.phi.ndim == 2 else len(comparisons.phi)
    layer = np.concatenate([head_layer(comparisons, k) for k in range(heads)], axis=1)
    return layer - layer.mean(axis=0)


@register_design(
    "coreset",
    "k-center greedy on Φ differences (Sener & Savarese), farthest from the selected and labelled ones; not 002's sensitivity coreset.",
    inputs={"phi", "past_differences"},
)
def coreset(
    comparisons: ComparisonSet, budget: int, rng: np.random.Generator,
    sign_invariant: Annotated[bool, Field(description="a comparison and its reverse are the same point")] = True,
) -> np.ndarray:
    """k-center greedy (Sener & Savarese 2018) on ΔΦ (per-head phi: the concatenated layer).

    Deviation: 002 §3.1 names its "Coreset" strategy after Huggins et al. (2016) and Munteanu
    et al. (2018), sensitivity-based coresets that choose a subset whose trained model
    approximates the full-data one; this is the geometric k-center heuristic instead, kept
    under the name ``coreset`` so configs keep working.

    Start from the comparison farthest from ``past_differences`` or, with no history, from
    one drawn uniformly (``rng.integers(M)``, the only draw); then repeatedly add the one
    whose minimum Euclidean distance to the selected set and the history is largest (ties:
    lowest index). ``sign_invariant`` (default) measures between comparisons, not oriented
    differences: (y1, y2) and (y2, y1) are one comparison, so the distance of ΔΦ_i to ΔΦ_j is
    min(||ΔΦ_i - ΔΦ_j||, ||ΔΦ_i + ΔΦ_j||); False gives the plain ||ΔΦ_i - ΔΦ_j||.
    """
    m = len(comparisons.pairs)
    budget = check_budget(budget, m, "coreset")
    head_count(comparisons)
    # Every ΔΦ_i = φ_a - φ_b is a difference of two of the n candidates, so all the dot
    # products come from the candidates' Gram matrix: ΔΦ_i·ΔΦ_k = G_ac - G_ad - G_bc + G_bd
    # (O(M) per pick instead of O(M p)) and ΔΦ_i·o = (Φ o)_a - (Φ o)_b for history rows o.
    layer = candidate_layer(comparisons)  # [n, P]
    gram = layer @ layer.T  # [n, n]
    a, b = comparisons.pairs[:, 0], comparisons.pairs[:, 1]
    norms = np.maximum(gram[a, a] + gram[b, b] - 2.0 * gram[a, b], 0.0)  # [M] ||ΔΦ_i||²
    nearest = np.full(m, np.inf)  # [M] squared distance to the selected set and the history
    past = concatenated_past_differences(comparisons)
    has_history = past is not None and len(past) > 0
    if has_history:
        for start in range(0, len(past), HISTORY_CHUNK):  # bounded [n, chunk] memory
            chunk = past[start : start + HISTORY_CHUNK]  # [r, P]
            projected = layer @ chunk.T  # [n, r]
            chunk_norms = np.einsum("ij,ij->i", chunk, chunk)  # [r]
            # [block, r] at a time: the M x r distances (1e8 at 64 prompts x 30 candidates and
            # 3,600 labelled pairs) are then computed in cache instead of in passes over RAM.
            for lo in range(0, m, COMPARISON_BLOCK):
                hi = min(lo + COMPARISON_BLOCK, m)
                dots = projected[a[lo:hi]] - projected[b[lo:hi]]  # [block, r]
                block = nearest_from_dots(dots, norms[lo:hi], chunk_norms, sign_invariant)
                np.minimum(nearest[lo:hi], block, out=nearest[lo:hi])
    chosen = np.empty(budget, dtype=np.int64)
    for t in range(budget):  # sequential by definition: each pick moves every distance
        if t == 0 and not has_history:
            k = int(rng.integers(m))
        else:
            k = int(np.argmax(nearest))
        chosen[t] = k
        column = gram[:, a[k]] - gram[:, b[k]]  # [n] φ_j·ΔΦ_k
        dots = (column[a] - column[b])[:, None]  # [M, 1]
        np.minimum(nearest, nearest_from_dots(dots, norms, norms[k : k + 1], sign_invariant), out=nearest)
        nearest[k] = -np.inf  # never again, even if every other candidate duplicates a chosen one
    return chosen
