"""Slow, obviously-correct reference implementations of the nine pair-selection methods.

Written as plain Python loops over prompts and candidates with a scalar ``math.exp``
sigmoid, following ActiveUltraFeedback (seed 001) §4.3 and Appendix C, Algorithms 1-5,
and the baseline definitions (RANDOM, MAXMIN, ULTRAFEEDBACK, DELTAQWEN).

Stochastic methods draw exactly the arrays the fast versions document, in the same
order, *before* looping, so that fast and reference can be compared exactly given the
same seed:

* random, ultrafeedback: ``keys = rng.random((b, m))``; real candidates in order of
  decreasing key (padding never taken).
* dts, drts: ``u = rng.random((maxiter + 1, b, m))`` (row 0: first Thompson sample,
  row t: t-th resample), then ``fallback_u = rng.random(b)``.
* maxminlcb: ``keys1 = rng.random((b, m))`` then ``keys2 = rng.random((b, m))``; a random
  tie-break takes the tied candidate with the largest key.
* resolve_pairs, rule best_vs_random: ``u = rng.random(b)``.

"Uniform over a list of k items using u in [0, 1)" is item ``min(floor(u * k), k - 1)``.

Deterministic argmax methods (infomax, deltaucb) break exact ties in row-major order
(first ordered pair (j, j') with the largest score). Because the fast code uses a
vectorised numpy sigmoid whose last bit may differ from ``math.exp``, every reference
proposal also lists, per prompt, the ``alternatives``: every pair that is optimal up to
``FLOAT_TOL``. Exact comparisons are made where that set has one element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NO_CANDIDATE = -1
THOMPSON_MAXITER = 30
MAXMIN_EPSILON = 1e-6
ULTRAFEEDBACK_SAMPLE = 4
FLOAT_TOL = 1e-12  # far above the ~1e-16 disagreement of two sigmoid implementations

ORDER_BY_SCORE = "order_by_score"
BEST_VS_WORST = "best_vs_worst"
BEST_VS_RANDOM = "best_vs_random"
FIXED = "fixed"


@dataclass
class RefProposal:
    annotate: list[list[bool]]  # [b][m]
    pair: list[tuple[int, int]]  # [b]
    rule: str
    info: dict[str, float] = field(default_factory=dict)
    alternatives: list[set[tuple[int, int]]] = field(default_factory=list)  # [b], always holds pair[i]


@dataclass
class RefResolved:
    chosen: list[int]
    rejected: list[int]
    status: list[str]


# ----------------------------------------------------------------------------- helpers


def sigmoid(x: float) -> float:
    """s(x) = 1 / (1 + e^-x), written so that math.exp never overflows."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _unpack(batch):
    """CandidateBatch -> plain Python lists (b, m, mean, std, mask, lower, upper)."""
    mean = batch.mean.tolist()
    std = batch.std.tolist()
    mask = [[bool(v) for v in row] for row in batch.mask.tolist()]
    b = len(mask)
    m = len(mask[0]) if b else 0
    beta = batch.beta
    lower = [[mean[i][j] - beta * std[i][j] for j in range(m)] for i in range(b)]
    upper = [[mean[i][j] + beta * std[i][j] for j in range(m)] for i in range(b)]
    return b, m, mean, std, mask, lower, upper


def real_candidates(mask_row: list[bool]) -> list[int]:
    return [j for j, real in enumerate(mask_row) if real]


def uniform_pick(items: list[int], u: float) -> int:
    """Item min(floor(u * k), k - 1) of a list of k items; NO_CANDIDATE if empty."""
    if not items:
        return NO_CANDIDATE
    return items[min(int(u * len(items)), len(items) - 1)]


def annotate_for(pair: tuple[int, int], m: int) -> list[bool]:
    row = [False] * m
    if pair[0] != NO_CANDIDATE:
        row[pair[0]] = True
        row[pair[1]] = True
    return row


def _first_argmax(values: dict[int, float]) -> int:
    """Key with the largest value; the smallest key among exact ties (dict in index order)."""
    best_j, best_v = NO_CANDIDATE, -math.inf
    for j, v in values.items():
        if best_j == NO_CANDIDATE or v > best_v:
            best_j, best_v = j, v
    return best_j


def _random_tie_break(candidates: list[int], keys_row: list[float]) -> int:
    """The candidate with the largest key (uniform over the candidates: keys are iid U[0,1))."""
    best_j, best_k = NO_CANDIDATE, -math.inf
    for j in candidates:
        if keys_row[j] > best_k:
            best_j, best_k = j, keys_row[j]
    return best_j


def _no_pair_proposal(b: int, m: int, rule: str) -> RefProposal:
    pairs = [(NO_CANDIDATE, NO_CANDIDATE)] * b
    return RefProposal([[False] * m for _ in range(b)], pairs, rule, {}, [{p} for p in pairs])


def _pair_proposal(pairs: list[tuple[int, int]], m: int, alternatives=None, **info: float) -> RefProposal:
    if alternatives is None:
        alternatives = [{p} for p in pairs]
    return RefProposal([annotate_for(p, m) for p in pairs], pairs, ORDER_BY_SCORE, dict(info), alternatives)


# ------------------------------------------------------------------- baseline heuristics


def _by_decreasing_key(reals: list[int], keys_row: list[float]) -> list[int]:
    return sorted(reals, key=lambda j: -keys_row[j])  # sorted is stable: equal keys keep index order


def random_pair(batch, rng) -> RefProposal:
    """RANDOM: a uniformly random ordered pair of distinct real candidates; judge both."""
    b, m, _, _, mask, _, _ = _unpack(batch)
    keys = rng.random((b, m)).tolist()
    pairs = []
    for i in range(b):
        reals = real_candidates(mask[i])
        if len(reals) < 2:
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
            continue
        order = _by_decreasing_key(reals, keys[i])
        pairs.append((order[0], order[1]))
    return _pair_proposal(pairs, m)


def maxmin(batch, rng) -> RefProposal:
    """MAXMIN: judge every real candidate; the pair is best vs worst by judge score."""
    b, m, _, _, mask, _, _ = _unpack(batch)
    annotate = []
    for i in range(b):
        reals = real_candidates(mask[i])
        annotate.append([mask[i][j] and len(reals) >= 2 for j in range(m)])
    pairs = [(NO_CANDIDATE, NO_CANDIDATE)] * b
    return RefProposal(annotate, pairs, BEST_VS_WORST, {}, [{p} for p in pairs])


def ultrafeedback(batch, rng, sample_size: int = ULTRAFEEDBACK_SAMPLE) -> RefProposal:
    """ULTRAFEEDBACK: judge `sample_size` uniformly random real candidates (all if fewer);
    best vs a uniformly random one of the others (decided in resolve_pairs)."""
    b, m, _, _, mask, _, _ = _unpack(batch)
    keys = rng.random((b, m)).tolist()
    annotate = []
    for i in range(b):
        reals = real_candidates(mask[i])
        row = [False] * m
        if len(reals) >= 2:
            for j in _by_decreasing_key(reals, keys[i])[:sample_size]:
                row[j] = True
        annotate.append(row)
    pairs = [(NO_CANDIDATE, NO_CANDIDATE)] * b
    return RefProposal(annotate, pairs, BEST_VS_RANDOM, {}, [{p} for p in pairs])


def delta_pair(batch, rng, strong: str | None = None, weak: str | None = None) -> RefProposal:
    """DELTAQWEN: the first real response of the strong model is chosen over the first real
    response of the weak model; nothing is judged; prompts missing either model are skipped."""
    if batch.models is None:
        raise ValueError("delta_pair needs batch.models")
    if strong is None or weak is None:
        raise ValueError("delta_pair needs strong and weak")
    b, m, _, _, mask, _, _ = _unpack(batch)
    models = batch.models.tolist()
    pairs = []
    for i in range(b):
        s = next((j for j in range(m) if mask[i][j] and models[i][j] == strong), NO_CANDIDATE)
        w = next((j for j in range(m) if mask[i][j] and models[i][j] == weak), NO_CANDIDATE)
        pairs.append((s, w) if s != NO_CANDIDATE and w != NO_CANDIDATE else (NO_CANDIDATE, NO_CANDIDATE))
    return RefProposal([[False] * m for _ in range(b)], pairs, FIXED, {}, [{p} for p in pairs])


# ------------------------------------------------------------------ argmax-pair methods


def _argmax_ordered_pair(score) -> tuple[tuple[int, int], set[tuple[int, int]]]:
    """score: dict (j, j') -> (value, sigmoid arguments), in row-major order.

    Returns the first pair with the largest value and the alternatives: pairs within FLOAT_TOL
    of it whose sigmoid arguments differ (a different sigmoid implementation may order those
    either way). Pairs with bitwise identical arguments tie exactly in any implementation, so
    only the first of them in row-major order is correct.
    """
    if not score:
        return (NO_CANDIDATE, NO_CANDIDATE), {(NO_CANDIDATE, NO_CANDIDATE)}
    best_pair, best = None, -math.inf
    for pair, (v, _) in score.items():
        if best_pair is None or v > best:
            best_pair, best = pair, v
    best_args = score[best_pair][1]
    near = {pair for pair, (v, args) in score.items() if v >= best - FLOAT_TOL and args != best_args}
    return best_pair, near | {best_pair}


def _pairwise_method(batch, pair_score) -> RefProposal:
    b, m, _, _, mask, lower, upper = _unpack(batch)
    pairs, alternatives = [], []
    for i in range(b):
        reals = real_candidates(mask[i])
        score = {}
        if len(reals) >= 2:
            for j in reals:  # row-major order over ordered pairs j != j'
                for k in reals:
                    if j != k:
                        score[(j, k)] = pair_score(lower[i], upper[i], j, k)
        pair, near = _argmax_ordered_pair(score)
        pairs.append(pair)
        alternatives.append(near)
    return _pair_proposal(pairs, m, alternatives)


def ucb_pref(lower_row, upper_row, j, k) -> float:
    """Optimistic P(j > k) = s(upper_j - lower_k) (001 eq. 3)."""
    return sigmoid(upper_row[j] - lower_row[k])


def lcb_pref(lower_row, upper_row, j, k) -> float:
    """Pessimistic P(j > k) = s(lower_j - upper_k) (001 eq. 4)."""
    return sigmoid(lower_row[j] - upper_row[k])


def infomax(batch, rng) -> RefProposal:
    """Algorithm 1: argmax over ordered j != j' of UCB(j > j') - LCB(j > j')."""

    def width(lo, up, j, k):
        return ucb_pref(lo, up, j, k) - lcb_pref(lo, up, j, k), (up[j] - lo[k], lo[j] - up[k])

    return _pairwise_method(batch, width)


def deltaucb(batch, rng) -> RefProposal:
    """Algorithm 5: argmax over ordered j != j' of UCB(j > j')."""
    return _pairwise_method(batch, lambda lo, up, j, k: (ucb_pref(lo, up, j, k), (up[j] - lo[k],)))


# ------------------------------------------------------------------- Thompson sampling


def thompson_sample(lo_row, hi_row, u_row, reals) -> int:
    """THOMPSONSAMPLE(lo, hi): draw x_j = lo_j + u_j (hi_j - lo_j) ~ U(lo_j, hi_j) per real
    candidate and return the argmax (the first index among exact ties)."""
    return _first_argmax({j: lo_row[j] + u_row[j] * (hi_row[j] - lo_row[j]) for j in reals})


def _thompson(batch, rng, maxiter: int, reverse: bool) -> RefProposal:
    b, m, _, _, mask, lower, upper = _unpack(batch)
    u = rng.random((maxiter + 1, b, m)).tolist()
    fallback_u = rng.random(b).tolist()
    neg_lower = [[-v for v in row] for row in lower]
    neg_upper = [[-v for v in row] for row in upper]
    pairs, fallbacks = [], 0
    for i in range(b):
        reals = real_candidates(mask[i])
        if len(reals) < 2:
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
            continue
        first = thompson_sample(lower[i], upper[i], u[0][i], reals)
        second = NO_CANDIDATE
        for t in range(1, maxiter + 1):
            if reverse:  # DRTS: THOMPSONSAMPLE(-upper, -lower), the sampled worst
                candidate = thompson_sample(neg_upper[i], neg_lower[i], u[t][i], reals)
            else:  # DTS: an independent THOMPSONSAMPLE(lower, upper)
                candidate = thompson_sample(lower[i], upper[i], u[t][i], reals)
            if candidate != first:
                second = candidate
                break
        if second == NO_CANDIDATE:  # fallback: uniform over the other real candidates
            second = uniform_pick([j for j in reals if j != first], fallback_u[i])
            fallbacks += 1
        pairs.append((first, second))
    return _pair_proposal(pairs, m, fallbacks=float(fallbacks))


def dts(batch, rng, maxiter: int = THOMPSON_MAXITER) -> RefProposal:
    """Algorithm 2: Double Thompson Sampling."""
    return _thompson(batch, rng, maxiter, reverse=False)


def drts(batch, rng, maxiter: int = THOMPSON_MAXITER) -> RefProposal:
    """Algorithm 4: Double Reversed Thompson Sampling."""
    return _thompson(batch, rng, maxiter, reverse=True)


# --------------------------------------------------------------------------- MaxMinLCB


def _maxminlcb_prompt(lower_row, upper_row, reals, keys1_row, keys2_row, eps1: float, eps2: float):
    L = {(j, k): lcb_pref(lower_row, upper_row, j, k) for j in reals for k in reals if j != k}
    worst = {j: min(L[(j, k)] for k in reals if k != j) for j in reals}  # m_j
    best_worst = max(worst.values())
    j1 = _random_tie_break([j for j in reals if abs(worst[j] - best_worst) < eps1], keys1_row)
    row = {k: L[(j1, k)] for k in reals if k != j1}
    row_min = min(row.values())
    j2 = _random_tie_break([k for k in row if abs(row[k] - row_min) < eps2], keys2_row)
    return (j1, j2)


def maxminlcb(batch, rng, epsilon: float = MAXMIN_EPSILON) -> RefProposal:
    """Algorithm 3: j1 = argmax_j min_{j' != j} LCB(j > j'); j2 = argmin_{j != j1} LCB(j1 > j),
    both with uniform random tie-breaking among values within epsilon of the optimum.

    alternatives: the pairs obtained when the tie tolerance moves by +-FLOAT_TOL, i.e. every
    answer a correct implementation could give when a gap sits on the epsilon boundary."""
    b, m, _, _, mask, lower, upper = _unpack(batch)
    keys1 = rng.random((b, m)).tolist()
    keys2 = rng.random((b, m)).tolist()
    pairs, alternatives = [], []
    for i in range(b):
        reals = real_candidates(mask[i])
        if len(reals) < 2:
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
            alternatives.append({(NO_CANDIDATE, NO_CANDIDATE)})
            continue
        args = (lower[i], upper[i], reals, keys1[i], keys2[i])
        pairs.append(_maxminlcb_prompt(*args, epsilon, epsilon))
        alternatives.append(
            {pairs[-1]}
            | {
                _maxminlcb_prompt(*args, e1, e2)
                for e1 in (epsilon - FLOAT_TOL, epsilon + FLOAT_TOL)
                for e2 in (epsilon - FLOAT_TOL, epsilon + FLOAT_TOL)
            }
        )
    return _pair_proposal(pairs, m, alternatives)


# ---------------------------------------------------------------------------- registry

METHODS = {
    "random": random_pair,
    "maxmin": maxmin,
    "ultrafeedback": ultrafeedback,
    "delta_pair": delta_pair,
    "infomax": infomax,
    "dts": dts,
    "maxminlcb": maxminlcb,
    "drts": drts,
    "deltaucb": deltaucb,
}


def propose(name: str, batch, rng, **options) -> RefProposal:
    """The reference of any per-prompt method: the nine here, the four upstream ones in
    upstream_reference (imported late: it builds on this module's helpers)."""
    if name not in METHODS:
        import upstream_reference

        return upstream_reference.METHODS[name](batch, rng, **options)
    return METHODS[name](batch, rng, **options)


# ------------------------------------------------------------------------ resolve_pairs


def resolve_pairs(proposal, scores, rng) -> RefResolved:
    """Judge scores [b][m] (NaN = not scored / judge failed) -> (chosen, rejected, status).

    fixed: the proposed pair as is (first chosen), ``ok``; no pair -> ``skipped``.
    order_by_score: the higher-scored of the proposed pair is chosen; a NaN score ->
      ``failed``; equal scores -> ``tie``; no pair -> ``skipped``.
    best_vs_worst / best_vs_random: among annotated candidates with a score, the best (first
      index among equal scores) vs the worst (first index among equal) / vs a uniformly random
      other; fewer than two scored -> ``failed`` if two or more were requested, else
      ``skipped``; equal scores of the two -> ``tie``.
    """
    rule = getattr(proposal.rule, "value", proposal.rule)
    pair = [tuple(int(v) for v in p) for p in (proposal.pair.tolist() if hasattr(proposal.pair, "tolist") else proposal.pair)]
    annotate = proposal.annotate.tolist() if hasattr(proposal.annotate, "tolist") else proposal.annotate
    scores = scores.tolist() if hasattr(scores, "tolist") else scores
    b = len(pair)
    u = rng.random(b).tolist() if rule == BEST_VS_RANDOM else None
    chosen, rejected, status = [NO_CANDIDATE] * b, [NO_CANDIDATE] * b, ["skipped"] * b
    for i in range(b):
        if rule == FIXED:
            if pair[i][0] != NO_CANDIDATE:
                chosen[i], rejected[i], status[i] = pair[i][0], pair[i][1], "ok"
        elif rule == ORDER_BY_SCORE:
            if pair[i][0] == NO_CANDIDATE:
                continue
            j, k = pair[i]
            sj, sk = scores[i][j], scores[i][k]
            if math.isnan(sj) or math.isnan(sk):
                status[i] = "failed"
            elif sj == sk:
                status[i] = "tie"
            else:
                chosen[i], rejected[i] = (j, k) if sj > sk else (k, j)
                status[i] = "ok"
        elif rule in (BEST_VS_WORST, BEST_VS_RANDOM):
            requested = [j for j, a in enumerate(annotate[i]) if a]
            scored = [j for j in requested if not math.isnan(scores[i][j])]
            if len(scored) < 2:
                status[i] = "failed" if len(requested) >= 2 else "skipped"
                continue
            best = scored[0]
            for j in scored:
                if scores[i][j] > scores[i][best]:
                    best = j
            if rule == BEST_VS_WORST:
                other = scored[0]
                for j in scored:
                    if scores[i][j] < scores[i][other]:
                        other = j
            else:
                other = uniform_pick([j for j in scored if j != best], u[i])
            if scores[i][best] == scores[i][other]:
                status[i] = "tie"
            else:
                chosen[i], rejected[i], status[i] = best, other, "ok"
        else:
            raise ValueError(f"unknown rule {rule}")
    return RefResolved(chosen, rejected, status)
