"""Bayesian batch designs over candidate comparisons: BALD, BatchBALD (Kirsch et al. 2019, a
baseline of 002 §3) and BAL-PM (003).

The K ensemble heads are equally weighted posterior samples θ_k (``comparisons.ComparisonSet``).
Comparison i = (a_i, b_i) has the binary outcome y_i = 1 ("a_i preferred") with

    p_ki = p(y_i = 1 | θ_k) = s(r_k(a_i) - r_k(b_i))                                [K, M]

computed from the logit, together with 1 - p_ki = s(-(...)), so that confident heads keep exact
tails. Entropies are in nats; H_b(p) = -p log p - (1 - p) log(1 - p) with 0 log 0 = 0.

* ``bald`` (Houlsby et al. 2011): I(y_i; θ) = H_b(mean_k p_ki) - mean_k H_b(p_ki); the top
  ``budget`` comparisons, exact ties by lowest index.
* ``batchbald`` (Kirsch et al. 2019): greedy maximisation of the joint mutual information
  I(y_S; θ) = H(y_S) - Σ_{j∈S} E_θ H(y_j | θ). By the chain rule the gain of adding i to the
  selected set S is

      I(y_{S∪i}; θ) - I(y_S; θ) = E_{y_S}[H_b(p(y_i = 1 | y_S))] - mean_k H_b(p_ki),
      p(y_i = 1 | y_S) = Σ_k w_k(y_S) p_ki,   w_k(y_S) ∝ Π_{j∈S} p(y_j | θ_k),

  so a state of "configurations" of y_S — each with its probability and its head posterior
  w(y_S) [K] — scores every candidate with one [C, K] @ [K, N] product. The configurations are
  all 2^|S| outcomes EXACTLY while 2^|S| <= ``max_exact_configurations`` (the [K, 2^|S|] matrix
  is split on y_j ∈ {1, 0} when j is selected); beyond that, ``num_samples`` configurations are
  drawn from p(y_S) = mean_k Π_j p(y_j | θ_k), stratified over the heads (sample s belongs to
  head s mod K; the count is rounded up to a multiple of K), each extended by one Bernoulli draw
  when a comparison is selected, as in Kirsch et al.'s batchbald_redux. The expectation over
  y_S then becomes the sample mean (Monte Carlo; the same samples score every candidate).
  The greedy is lazy (Minoux 1978): the objective is submodular (Kirsch et al. 2019), so a gain
  computed earlier bounds the current one and only candidates whose bound can still win are
  re-scored (exact in the enumeration regime). Candidates are restricted to the ``pool_size``
  comparisons of highest BALD (common practice; the first pick of BatchBALD is BALD's top
  anyway), which bounds the cost when many comparisons have high BALD.
* ``balpm`` (003): score_i = BALD_i + β · prompt-entropy term of comparison i, greedily, the
  term updated after every pick (003 Fig. 2: "BAL-PM selects the tuple that maximizes the
  linear combination of both scores"). The seed text of 003 stops short of §4's formulas, so
  the estimator follows the authors' released code (luckeciano/BAL-PM, ``active_learning.py``,
  selection ``batch-state-entropy``, the "KSG estimator" of its entropy-estimator ablation): a
  k-nearest-neighbour estimate in the style of Kraskov et al. 2004 of the entropy that prompt x
  adds to the acquired prompts A (acquired_prompt_features ∪ prompts picked in this batch):

      ρ_k(x) = distance from x to its k-th nearest neighbour among all prompts: candidates
               (every row of prompt_features) ∪ the rest of the unlabelled pool
               (pool_prompt_features) ∪ acquired, i.e. acquired and available points
               over the whole pool, as 003's code computes it
      n(x)   = number of points of A within ρ_k(x)
      e(x)   = log(2 ρ_k(x) + ε) - ψ(n(x) + 1) / d

  e(x) is (-log p̂_A(x)) / d up to a constant, with p̂_A(x) ∝ n(x) / ρ_k(x)^d the kNN density
  of the acquired prompts (ψ(n + 1) for log n: the Kraskov et al. bias correction; 2ρ is their
  ε). Adding x to A raises the entropy to first order by (-log p_A(x) - H(A)) / (|A| + 1), so
  e(x) ranks prompts by their entropy gain: a prompt far from everything acquired (large ρ,
  small n) scores high, one already acquired scores low. ``estimator="kl"`` is 003's ablation
  (App. D): e(x) = log(2 ρ_k^A(x) + ε) with ρ_k^A the distance to the k-th nearest point of A
  itself (the Kozachenko–Leonenko per-point term), 0 while A is empty. Differences from the
  released code: ρ_k excludes x itself (the code's top-k includes the zero self-distance, so
  its k = 13 is our k = 12) and the acquired points count as neighbours for ρ_k; no feature
  normalisation (the code's ``fts - mean / std`` is, by operator precedence, a per-column shift
  that leaves every distance unchanged).

Cross-prompt comparisons (x1 ≠ x2): the prompt term is the mean of e(x1) and e(x2) (an
in-prompt comparison reduces to e(x), so neither kind is favoured by construction), and both
prompts join A once the comparison is picked.

Stochastic acquisition. The abstract of 003 calls BAL-PM a stochastic acquisition policy, but
the selection rule it states (Fig. 2: "selects the tuple that maximizes the linear combination
of both scores") and its released code are the deterministic greedy argmax, which is the
default here. ``selection="softmax"`` is the stochastic variant of Kirsch et al. 2023 (the
stochastic baselines of 003): one Gumbel(0, 1/gumbel_beta) perturbation per comparison, drawn
once (``rng.gumbel(size=M)``), added to the score at every greedy step.

Random streams: bald and the exact regime of batchbald draw nothing. batchbald, on switching
to sampling with the selected comparisons j_1..j_c: ``rng.random((S, c))`` (sample s has
y_sj = u_sj < p_{s mod K, j}), then ``rng.random(S)`` per later pick. balpm with
``selection="softmax"``: ``rng.gumbel(size=M)`` before the first pick.

Ties (exactly equal scores) go to the lowest index: top-k uses a stable sort, greedy steps the
first argmax. ``budget`` must lie in [0, M].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import Field

from activepref.acquisition import register_design
from activepref.acquisition.comparisons import ComparisonSet
from activepref.acquisition.designs import check_budget, top_by_score
from activepref.errors import ConfigError

# BatchBALD (Kirsch et al. 2019; batchbald_redux switches from exact to sampled joint entropies
# once the configurations outnumber the samples).
MAX_EXACT_CONFIGURATIONS = 2**12  # exact enumeration while 2^|S| <= this
NUM_SAMPLES = 1024  # Monte-Carlo configurations beyond it (rounded up to a multiple of K)
POOL_SIZE = 1024  # candidates: the top comparisons by BALD; None = all
LAZY_BLOCK = 128  # candidates re-evaluated at once by the lazy greedy
LAZY_SLACK = 1e-12  # stale bounds this close to the best fresh gain are re-evaluated too
ENTRIES_PER_CHUNK = 2**18  # [C, chunk] float64 blocks of the entropy evaluation (2 MB, in cache)

# BAL-PM (003). The seed text lacks §4's constants; these are the values of the authors'
# released configuration (luckeciano/BAL-PM, run_active_learning_adapters_batch.sh:
# state_ent_beta, state_ent_k, state_ent_d at its default, normalize_entropy).
BALPM_BETA = 1e-2  # β, weight of the entropy term (the released β-robustness runs: 1e-4 .. 1)
BALPM_K = 13  # k of the kNN entropy estimator
BALPM_DIMENSION = 1.0  # d in log(2ρ + ε) - ψ(n + 1)/d (a free scale in 003's code, not dim x)
BALPM_DISTANCE_EPSILON = 1e-4  # ε in log(2ρ + ε): 003's code; keeps duplicate prompts finite
Estimator = Literal["ksg", "kl"]  # 003's estimator; its App. D ablation (Kozachenko–Leonenko)
Selection = Literal["greedy", "softmax"]  # 003's argmax; Gumbel-perturbed (Kirsch et al. 2023)
ESTIMATORS = get_args(Estimator)
SELECTIONS = get_args(Selection)
GUMBEL_BETA = 1.0  # inverse temperature of the softmax selection (Kirsch et al. 2023)
NORMALIZE_FLAT = 1e-12  # normalize_entropy: a relative spread below this is no spread (all 0)

_TINY = 1e-300  # log argument floor: x log x -> 0 at x = 0 without warnings
_EULER_GAMMA = 0.5772156649015329  # ψ(1) = -γ
_DISTANCE_BLOCK = 2**21  # entries of the [rows, m, q] difference block in pairwise_distances


# ----------------------------------------------------------------------------- shared pieces


def sigmoid_pair(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s(x), s(-x)) elementwise from one e^{-|x|}: no overflow, each tail to relative accuracy."""
    e = np.exp(-np.abs(x))
    big = 1.0 / (1.0 + e)  # s(|x|)
    small = e * big  # s(-|x|)
    positive = x >= 0
    return np.where(positive, big, small), np.where(positive, small, big)


def digamma_of_count(n: np.ndarray) -> np.ndarray:
    """ψ(n + 1) = -γ + Σ_{j=1}^{n} 1/j for integer counts n >= 0 (the only ψ BAL-PM needs)."""
    n = np.asarray(n, dtype=np.int64)
    top = int(n.max()) if n.size else 0
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, top + 1))])  # [top + 1]
    return harmonic[n] - _EULER_GAMMA


def preference_probabilities(comparisons: ComparisonSet) -> tuple[np.ndarray, np.ndarray]:
    """[K, M] p_ki = s(r_k(a_i) - r_k(b_i)) and [K, M] 1 - p_ki, both from the logit."""
    rewards = np.asarray(comparisons.rewards, dtype=np.float64)  # [K, n]
    pairs = comparisons.pairs
    logit = rewards[:, pairs[:, 0]] - rewards[:, pairs[:, 1]]  # [K, M]
    return sigmoid_pair(logit)


def binary_entropy(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """H_b elementwise from p and q = 1 - p (given separately for exact tails), nats."""
    return -(p * np.log(np.maximum(p, _TINY)) + q * np.log(np.maximum(q, _TINY)))


def bald_from_probabilities(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """[K, M] -> [M] H_b(mean_k p) - mean_k H_b(p), clipped at 0 (Jensen guarantees >= 0;
    rounding can leave -1e-17)."""
    total = binary_entropy(p.mean(axis=0), q.mean(axis=0))
    return np.maximum(total - binary_entropy(p, q).mean(axis=0), 0.0)


def bald_scores(comparisons: ComparisonSet) -> np.ndarray:
    """[M] BALD mutual information I(y_i; θ) of every candidate comparison (nats)."""
    return bald_from_probabilities(*preference_probabilities(comparisons))


def _choice(value: str, allowed: tuple[str, ...], option: str, design: str) -> str:
    if value not in allowed:
        raise ConfigError(
            f"method_options: {design} option {option!r} must be one of {', '.join(allowed)} (got {value!r})"
        )
    return value


# ----------------------------------------------------------------------------- BALD


@register_design("bald", "BALD: top comparisons by the ensemble's mutual information between outcome and reward model.", inputs=set())
def bald(comparisons: ComparisonSet, budget: int, rng: np.random.Generator) -> np.ndarray:
    """[budget] indices of the largest BALD scores (Houlsby et al. 2011), best first."""
    budget = check_budget(budget, len(comparisons.pairs), "bald")
    return top_by_score(bald_scores(comparisons), budget)


# ----------------------------------------------------------------------------- BatchBALD


@dataclass
class JointConfigurations:
    """Outcome configurations of the selected comparisons S.

    posterior: [K, C] w_k(y_S) for each configuration (columns sum to 1).
    weight: [C] p(y_S) (exact) or 1/C (sampled).
    heads: [C] the head each sampled configuration was drawn from; None while exact.
    """

    posterior: np.ndarray
    weight: np.ndarray
    heads: np.ndarray | None = None


def conditional_entropies(state: JointConfigurations, p: np.ndarray) -> np.ndarray:
    """[N] E_{y_S} H_b(p(y_i = 1 | y_S)) of the candidates p [K, N] under the configurations.

    Column chunks of ~ENTRIES_PER_CHUNK entries keep the [C, chunk] temporaries in cache (5x
    faster than one [C, N] pass). p(y_i = 0 | y_S) is taken as 1 - p(y_i = 1 | y_S): where that
    loses the tail the entropy it feeds is below 1e-15.
    """
    k, n = p.shape
    c = state.posterior.shape[1]
    out = np.empty(n)
    chunk = max(1, ENTRIES_PER_CHUNK // max(c, 1))
    wt = state.posterior.T  # [C, K]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        r1 = wt @ p[:, start:stop]  # [C, chunk] p(y_i = 1 | y_S)
        r0 = 1.0 - r1
        h = np.log(np.maximum(r1, _TINY))
        h *= r1
        h0 = np.log(np.maximum(r0, _TINY))
        h0 *= r0
        h += h0  # [C, chunk] -H_b
        out[start:stop] = -(state.weight @ h)
    return out


def _split_exact(state: JointConfigurations, pj: np.ndarray, qj: np.ndarray) -> JointConfigurations:
    """Add comparison j (pj, qj [K]) to the exact state: every configuration splits on y_j."""
    w = state.posterior  # [K, C]
    joint1 = w * pj[:, None]  # [K, C] w_k(y_S) p(y_j = 1 | θ_k)
    joint0 = w * qj[:, None]
    r1, r0 = joint1.sum(axis=0), joint0.sum(axis=0)  # [C] p(y_j | y_S)
    weight = np.concatenate([state.weight * r1, state.weight * r0])  # [2C]
    mass = np.concatenate([r1, r0])
    posterior = np.concatenate([joint1, joint0], axis=1)  # [K, 2C]
    keep = weight > 0  # impossible configurations carry nothing
    posterior = posterior[:, keep] / mass[keep]
    return JointConfigurations(posterior, weight[keep])


def _start_sampling(
    p_sel: np.ndarray, q_sel: np.ndarray, num_samples: int, rng: np.random.Generator
) -> JointConfigurations:
    """Sampled state for the selected comparisons p_sel, q_sel [K, c]: S configurations, sample s
    from head s mod K (stratified), y_sj = u_sj < p_{s mod K, j}."""
    k, c = p_sel.shape
    s = -(-num_samples // k) * k  # rounded up to a multiple of K: equal strata
    heads = np.arange(s) % k  # [S]
    u = rng.random((s, c))  # [S, c]
    y = u < p_sel[heads]  # [S, c]
    log_p, log_q = np.log(np.maximum(p_sel, _TINY)), np.log(np.maximum(q_sel, _TINY))  # [K, c]
    log_like = y.astype(np.float64) @ log_p.T + (~y).astype(np.float64) @ log_q.T  # [S, K]
    log_like -= log_like.max(axis=1, keepdims=True)
    posterior = np.exp(log_like).T  # [K, S]
    posterior /= posterior.sum(axis=0)
    return JointConfigurations(posterior, np.full(s, 1.0 / s), heads)


def _extend_samples(
    state: JointConfigurations, pj: np.ndarray, qj: np.ndarray, rng: np.random.Generator
) -> JointConfigurations:
    """Add comparison j to the sampled state: one draw y_sj ~ Bernoulli(p_{head_s, j}) each."""
    heads = state.heads
    y = rng.random(len(heads)) < pj[heads]  # [S]
    posterior = state.posterior * np.where(y[None, :], pj[:, None], qj[:, None])  # [K, S]
    mass = posterior.sum(axis=0)  # [S]
    lost = mass == 0  # every head with posterior mass gives y_sj probability 0 (underflow)
    if lost.any():  # the sample's own head generated y_sj, so it keeps all the mass
        posterior[:, lost] = 0.0
        posterior[heads[lost], np.flatnonzero(lost)] = 1.0
        mass[lost] = 1.0
    return JointConfigurations(posterior / mass, state.weight, heads)


def _add_selected(
    state: JointConfigurations,
    p_selected: np.ndarray,
    q_selected: np.ndarray,
    rng: np.random.Generator,
    max_exact_configurations: int,
    num_samples: int,
) -> JointConfigurations:
    """The state after the last of the selected comparisons p_selected, q_selected [K, c] joins
    the c - 1 before it: split while 2^c fits the cap, else sample (from scratch once, then extend)."""
    c = p_selected.shape[1]
    pj, qj = p_selected[:, -1], q_selected[:, -1]
    if state.heads is not None:
        return _extend_samples(state, pj, qj, rng)
    if 2**c <= max_exact_configurations:
        return _split_exact(state, pj, qj)
    return _start_sampling(p_selected, q_selected, num_samples, rng)


def joint_configurations(
    p_selected: np.ndarray,
    q_selected: np.ndarray,
    rng: np.random.Generator,
    max_exact_configurations: int = MAX_EXACT_CONFIGURATIONS,
    num_samples: int = NUM_SAMPLES,
) -> JointConfigurations:
    """The configurations of the selected comparisons p_selected, q_selected [K, c], built one
    comparison at a time exactly as the greedy loop builds them."""
    k, c = p_selected.shape
    state = JointConfigurations(np.full((k, 1), 1.0 / k), np.ones(1))
    for j in range(1, c + 1):
        state = _add_selected(state, p_selected[:, :j], q_selected[:, :j], rng, max_exact_configurations, num_samples)
    return state


def batchbald_select(
    p: np.ndarray,
    q: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    max_exact_configurations: int = MAX_EXACT_CONFIGURATIONS,
    num_samples: int = NUM_SAMPLES,
    lazy_block: int = LAZY_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy BatchBALD over the candidates p, q [K, N] (p(y_i = 1 | θ_k) and its complement).

    Returns [budget] indices in selection order and [budget] their gains; the gains sum to the
    joint mutual information I(y_S; θ) of the batch (exactly, while no sampling happened).

    Lazy greedy (Minoux 1978): I(y_S; θ) is submodular (Kirsch et al. 2019), so a gain computed
    at an earlier step (initially BALD, the gain at S = ∅) bounds the current one from above.
    Each step re-evaluates blocks of ``lazy_block`` candidates in decreasing order of their bound
    until no stale bound can reach the best fresh gain (within LAZY_SLACK, so rounding never
    hides a tie); the pick is then the exact greedy argmax, lowest index among ties. In the
    sampled regime the bounds are Monte-Carlo estimates, so there it is an approximation.
    """
    k, n = p.shape
    aleatoric = binary_entropy(p, q).mean(axis=0)  # [N] E_θ H(y_i | θ)
    bound = bald_from_probabilities(p, q)  # [N] gain at S = ∅
    fresh = np.full(n, -1)  # step at which bound[i] was computed (-1: BALD)
    state = JointConfigurations(np.full((k, 1), 1.0 / k), np.ones(1))
    taken = np.zeros(n, dtype=bool)
    chosen = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget)
    for step in range(budget):
        best = -np.inf
        while True:
            stale = np.flatnonzero(~taken & (fresh != step))
            if len(stale) == 0 or bound[stale].max() < best - LAZY_SLACK:
                break
            if len(stale) > lazy_block:
                stale = stale[np.argpartition(-bound[stale], lazy_block - 1)[:lazy_block]]
            bound[stale] = conditional_entropies(state, p[:, stale]) - aleatoric[stale]
            fresh[stale] = step
            best = max(best, bound[stale].max())
        current = np.where(~taken & (fresh == step), bound, -np.inf)
        j = int(np.argmax(current))
        chosen[step], gains[step], taken[j] = j, bound[j], True
        if step == budget - 1:
            break
        sel = chosen[: step + 1]
        state = _add_selected(state, p[:, sel], q[:, sel], rng, max_exact_configurations, num_samples)
    return chosen, gains


@register_design(
    "batchbald",
    "BatchBALD: greedy joint mutual information of the batch's outcomes with the reward model (ensemble as posterior).",
    inputs=set(),
)
def batchbald(
    comparisons: ComparisonSet,
    budget: int,
    rng: np.random.Generator,
    pool_size: Annotated[int | None, Field(ge=1, description="candidates: the top comparisons by BALD (null: all)")] = POOL_SIZE,
    max_exact_configurations: Annotated[int, Field(ge=1, description="exact enumeration of joint outcomes while 2^|S| <= this")] = MAX_EXACT_CONFIGURATIONS,
    num_samples: Annotated[int, Field(ge=1, description="Monte-Carlo joint outcomes beyond it (rounded up to a multiple of K)")] = NUM_SAMPLES,
) -> np.ndarray:
    """[budget] indices, greedy in I(y_S; θ) (Kirsch et al. 2019). Candidates: the
    max(pool_size, budget) comparisons of highest BALD (all when pool_size is None), kept in
    index order so ties still go to the lowest index."""
    m = len(comparisons.pairs)
    budget = check_budget(budget, m, "batchbald")
    if pool_size is not None and pool_size < 1:
        raise ConfigError(f"method_options: batchbald pool_size must be >= 1 or null (got {pool_size})")
    if max_exact_configurations < 1 or num_samples < 1:
        raise ConfigError("method_options: batchbald max_exact_configurations and num_samples must be >= 1")
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    p, q = preference_probabilities(comparisons)  # [K, M]
    pool = np.arange(m)
    if pool_size is not None and max(pool_size, budget) < m:
        pool = np.sort(top_by_score(bald_from_probabilities(p, q), max(pool_size, budget)))
        p, q = p[:, pool], q[:, pool]
    chosen, _ = batchbald_select(p, q, budget, rng, max_exact_configurations, num_samples)
    return pool[chosen]


# ----------------------------------------------------------------------------- kNN entropy


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[n, q], [m, q] -> [n, m] Euclidean distances from the differences, in row blocks (the
    |x|² + |y|² - 2xᵀy expansion turns duplicates into ~1e-8 and would break radius counts)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    out = np.empty((n, m))
    rows = max(1, _DISTANCE_BLOCK // max(m * x.shape[1], 1))
    for start in range(0, n, rows):
        diff = x[start : start + rows, None, :] - y[None, :, :]  # [rows, m, q]
        out[start : start + rows] = np.sqrt(np.einsum("rmq,rmq->rm", diff, diff))
    return out


def knn_entropy(points: np.ndarray, k: int = 3) -> float:
    """Kozachenko–Leonenko estimate of the differential entropy (nats) of points [N, q]:

        Ĥ = ψ(N) - ψ(k) + log V_q + (q / N) Σ_i log ρ_k(i),   V_q = π^{q/2} / Γ(q/2 + 1),

    ρ_k(i) the Euclidean distance from point i to its k-th nearest other point (Kozachenko &
    Leonenko 1987; Kraskov et al. 2004 eq. 20). Needs N > k and distinct points."""
    points = np.asarray(points, dtype=np.float64)
    n, dim = points.shape
    if not 1 <= k < n:
        raise ValueError(f"knn_entropy needs 1 <= k < N (got k={k}, N={n})")
    dist = pairwise_distances(points, points)  # [N, N]
    np.fill_diagonal(dist, np.inf)
    rho = np.partition(dist, k - 1, axis=1)[:, k - 1]  # [N]
    log_volume = 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)
    psi_n, psi_k = digamma_of_count(np.array([n - 1, k - 1]))  # ψ(N), ψ(k)
    return float(psi_n - psi_k + log_volume + dim * np.mean(np.log(rho)))


@dataclass
class PromptEntropy:
    """003's prompt-entropy term over the P candidate prompts, updated as prompts join A.

    ksg: radius [P] ρ_k(x); inside [P, P] whether prompt x' lies within ρ_k(x); count [P] n(x).
    kl: nearest [P, k] ascending distances to the k nearest points of A (inf-padded); size |A|.
    """

    estimator: str
    k: int
    dimension: float
    between: np.ndarray  # [P, P] distances between candidate prompts
    radius: np.ndarray | None = None
    inside: np.ndarray | None = None
    count: np.ndarray | None = None
    nearest: np.ndarray | None = None
    size: int = 0

    def terms(self) -> np.ndarray:
        """[P] e(x) for every candidate prompt."""
        if self.estimator == "ksg":
            return np.log(2.0 * self.radius + BALPM_DISTANCE_EPSILON) - digamma_of_count(self.count) / self.dimension
        if self.size == 0:
            return np.zeros(len(self.between))
        kth = self.nearest[:, min(self.k, self.size) - 1]  # [P]
        return np.log(2.0 * kth + BALPM_DISTANCE_EPSILON)

    def add(self, prompt: int) -> None:
        """Prompt ``prompt`` (a candidate) joins the acquired set A."""
        if self.estimator == "ksg":
            self.count += self.inside[:, prompt]
        else:
            column = self.between[:, prompt : prompt + 1]  # [P, 1]
            self.nearest = np.sort(np.concatenate([self.nearest, column], axis=1), axis=1)[:, : self.k]
            self.size += 1


def prompt_entropy_state(
    prompt_features: np.ndarray,
    acquired_features: np.ndarray,
    k: int,
    dimension: float,
    estimator: str,
    pool_features: np.ndarray | None = None,
) -> PromptEntropy:
    """The entropy term's state for candidate prompts [P, q] and acquired prompts [a, q];
    ``pool_features`` [u, q], the unlabelled prompts outside the batch, count as neighbours
    for the ksg radius ρ_k only (they are neither candidates nor acquired)."""
    between = pairwise_distances(prompt_features, prompt_features)  # [P, P]
    to_acquired = pairwise_distances(prompt_features, acquired_features)  # [P, a]
    n_prompts, n_acquired = to_acquired.shape
    if estimator == "kl":
        nearest = np.full((n_prompts, k), np.inf)
        take = min(k, n_acquired)
        nearest[:, :take] = np.sort(to_acquired, axis=1)[:, :take]
        return PromptEntropy(estimator, k, dimension, between, nearest=nearest, size=n_acquired)
    others = between.copy()
    np.fill_diagonal(others, np.inf)  # x is not its own neighbour
    parts = [others, to_acquired]
    if pool_features is not None and len(pool_features):
        parts.append(pairwise_distances(prompt_features, pool_features))  # [P, u]
    everyone = np.concatenate(parts, axis=1)  # [P, P + a (+ u)]
    k_eff = min(k, everyone.shape[1] - 1)
    radius = np.partition(everyone, k_eff - 1, axis=1)[:, k_eff - 1] if k_eff > 0 else np.zeros(n_prompts)
    inside = (between <= radius[:, None]).astype(np.int64)  # [P, P], x' = x included (distance 0)
    count = (to_acquired <= radius[:, None]).sum(axis=1).astype(np.int64)  # [P]
    return PromptEntropy(estimator, k, dimension, between, radius=radius, inside=inside, count=count)


# ----------------------------------------------------------------------------- BAL-PM


def balpm_select(
    bald_values: np.ndarray,
    pair_prompts: np.ndarray,
    prompt_features: np.ndarray,
    acquired_features: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    beta: float = BALPM_BETA,
    k: int = BALPM_K,
    dimension: float = BALPM_DIMENSION,
    estimator: str = "ksg",
    normalize_entropy: bool = False,
    selection: str = "greedy",
    gumbel_beta: float = GUMBEL_BETA,
    pool_features: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy BAL-PM (003) over M comparisons with BALD values [M] and prompts pair_prompts
    [M, 2] (rows of prompt_features [P, q]; equal for in-prompt comparisons).

    Returns [budget] indices in selection order and [budget] their scores when picked
    (BALD + β · prompt term, without the Gumbel perturbation)."""
    m = len(bald_values)
    noise = rng.gumbel(size=m) / gumbel_beta if selection == "softmax" else None  # [M]
    state = prompt_entropy_state(prompt_features, acquired_features, k, dimension, estimator, pool_features)
    first, second = pair_prompts[:, 0], pair_prompts[:, 1]
    cross = first != second  # [M]
    taken = np.zeros(m, dtype=bool)
    chosen = np.empty(budget, dtype=np.int64)
    picked = np.empty(budget)
    for step in range(budget):
        e = state.terms()  # [P]
        term = 0.5 * (e[first] + e[second])  # [M]; in-prompt: e(x)
        if normalize_entropy:  # z-score over the comparisons still available (003's code)
            rest = term[~taken]
            mean, std = rest.mean(), rest.std()
            flat = std <= NORMALIZE_FLAT * (1.0 + abs(mean))
            term = np.zeros(m) if flat else (term - mean) / std
        score = bald_values + beta * term  # [M]
        ranked = score if noise is None else score + noise
        ranked = np.where(taken, -np.inf, ranked)
        j = int(np.argmax(ranked))
        chosen[step], picked[step], taken[j] = j, score[j], True
        state.add(int(first[j]))
        if cross[j]:
            state.add(int(second[j]))
    return chosen, picked


@register_design(
    "balpm",
    "BAL-PM: BALD plus beta x the entropy gain of the acquired prompt features (kNN estimator), greedy per batch.",
    inputs={"prompt_features"},
)
def balpm(
    comparisons: ComparisonSet,
    budget: int,
    rng: np.random.Generator,
    beta: Annotated[float, Field(description="weight of the prompt-entropy term (003: 0.01)")] = BALPM_BETA,
    k: Annotated[int, Field(ge=1, description="neighbours of the kNN entropy estimate")] = BALPM_K,
    dimension: Annotated[float, Field(gt=0, description="d in log(2 rho + eps) - psi(n + 1) / d of the entropy estimate (a free scale in 003's code)")] = BALPM_DIMENSION,
    estimator: Annotated[Estimator, Field(description="ksg (003) or kl (Kozachenko-Leonenko)")] = "ksg",
    normalize_entropy: Annotated[bool, Field(description="z-score the entropy term over the comparisons still available (003's code)")] = False,
    selection: Annotated[Selection, Field(description="greedy argmax or Gumbel-perturbed softmax")] = "greedy",
    gumbel_beta: Annotated[float, Field(gt=0, description="inverse temperature of the softmax selection (Kirsch et al. 2023)")] = GUMBEL_BETA,
) -> np.ndarray:
    """[budget] indices by BAL-PM (003): BALD_i + β · prompt-entropy term, greedy, the term of
    every prompt updated after each pick. Needs comparisons.prompt_features; the acquired set
    starts from comparisons.acquired_prompt_features (empty when None)."""
    m = len(comparisons.pairs)
    budget = check_budget(budget, m, "balpm")
    _choice(estimator, ESTIMATORS, "estimator", "balpm")
    _choice(selection, SELECTIONS, "selection", "balpm")
    if k < 1:
        raise ConfigError(f"method_options: balpm k must be >= 1 (got {k})")
    if dimension <= 0 or gumbel_beta <= 0:
        raise ConfigError("method_options: balpm dimension and gumbel_beta must be > 0")
    if comparisons.prompt_features is None:
        raise ValueError("balpm needs comparisons.prompt_features (an embedding per candidate prompt)")
    prompts = np.asarray(comparisons.prompt_features, dtype=np.float64)  # [P, q]
    acquired = comparisons.acquired_prompt_features
    acquired = np.zeros((0, prompts.shape[1])) if acquired is None else np.asarray(acquired, dtype=np.float64)
    if acquired.ndim != 2 or acquired.shape[1] != prompts.shape[1]:
        raise ValueError(
            f"balpm: acquired_prompt_features has shape {acquired.shape}; expected [a, {prompts.shape[1]}] like prompt_features"
        )
    pool = comparisons.pool_prompt_features
    if pool is not None:
        pool = np.asarray(pool, dtype=np.float64)
        if pool.ndim != 2 or pool.shape[1] != prompts.shape[1]:
            raise ValueError(
                f"balpm: pool_prompt_features has shape {pool.shape}; expected [u, {prompts.shape[1]}] like prompt_features"
            )
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    pair_prompts = np.asarray(comparisons.prompt_of)[comparisons.pairs]  # [M, 2]
    if pair_prompts.size and not 0 <= pair_prompts.min() <= pair_prompts.max() < len(prompts):
        raise ValueError(
            f"balpm: prompt_of holds prompt {int(pair_prompts.max())} but prompt_features has {len(prompts)} rows"
        )
    chosen, _ = balpm_select(
        bald_scores(comparisons),
        pair_prompts,
        prompts,
        acquired,
        budget,
        rng,
        beta=beta,
        k=k,
        dimension=dimension,
        estimator=estimator,
        normalize_entropy=normalize_entropy,
        selection=selection,
        gumbel_beta=gumbel_beta,
        pool_features=pool,
    )
    return chosen
