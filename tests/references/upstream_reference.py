"""Slow references of the four upstream selectors (deltaquantile, infogain, ids, rucb), as
plain loops over prompts, following UPSTREAM_METHODS.md and the random-stream contract of
activepref.acquisition.upstream (the same arrays drawn in the same order before looping)."""

from __future__ import annotations

import math

from acquisition_reference import (
    FLOAT_TOL,
    NO_CANDIDATE,
    RefProposal,
    _unpack,
    annotate_for,
    real_candidates,
    sigmoid,
    uniform_pick,
)

ORDER_BY_SCORE = "order_by_score"


def _proposal(pairs, m, **info) -> RefProposal:
    return RefProposal([annotate_for(p, m) for p in pairs], pairs, ORDER_BY_SCORE, dict(info), [{p} for p in pairs])


def deltaquantile(batch, rng, quantile: float = 0.05, half_width: float = 0.0) -> RefProposal:
    b, m, mean, std, mask, lower, upper = _unpack(batch)
    pairs = []
    for i in range(b):
        reals = real_candidates(mask[i])
        if len(reals) < 2:
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
            continue
        ordered = [(j, k) for j in range(m) for k in range(m) if j != k and mask[i][j] and mask[i][k]]  # row-major
        ranked = sorted(ordered, key=lambda jk: -(upper[i][jk[0]] - lower[i][jk[1]]))  # stable: ties keep row-major order
        n = len(ranked)
        lo = math.floor(n * max(0.0, quantile - half_width))
        hi = math.floor(n * min(1.0, quantile + half_width))
        lo = min(lo, n - 1)
        hi = max(hi, lo + 1)
        window = ranked[lo:min(hi, n)]
        best = window[0]
        for jk in window[1:]:
            if upper[i][jk[0]] > upper[i][best[0]]:
                best = jk
        pairs.append(best)
    return _proposal(pairs, m)


def infogain(batch, rng) -> RefProposal:
    """Widths s(u_j - l_k) - s(l_j - u_k) computed directly; where floating point cannot order
    two widths (within FLOAT_TOL, different sigmoid arguments) both answers are accepted."""
    z = rng.uniform(-1.0, 1.0, size=batch.mask.shape).tolist()
    b, m, mean, std, mask, lower, upper = _unpack(batch)
    pairs, alternatives = [], []
    for i in range(b):
        reals = real_candidates(mask[i])
        if len(reals) < 2:
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
            alternatives.append({(NO_CANDIDATE, NO_CANDIDATE)})
            continue
        j = max(reals, key=lambda c: (mean[i][c] + batch.beta * z[i][c] * std[i][c], -c))
        score = {}
        for k in reals:
            if k != j:
                x, y = upper[i][j] - lower[i][k], lower[i][j] - upper[i][k]
                score[k] = (sigmoid(x) - sigmoid(y), (x, y))
        best = max(score, key=lambda k: (score[k][0], -k))
        near = {(j, k) for k, (v, args) in score.items() if v >= score[best][0] - FLOAT_TOL and args != score[best][1]}
        pairs.append((j, best))
        alternatives.append(near | {(j, best)})
    out = _proposal(pairs, m)
    out.alternatives = alternatives
    return out


def _candidates(mask_row, upper_row, buffer):
    reals = real_candidates(mask_row)
    passing = [j for j in reals if upper_row[j] > 0.5 - buffer]
    return passing if passing else reals


def _near(values: dict[int, float], tolerance: float, u: float, largest: bool = True) -> int:
    if not values:
        return NO_CANDIDATE
    best = max(values.values()) if largest else min(values.values())
    near = [j for j, v in values.items() if (v >= best - tolerance if largest else v <= best + tolerance)]
    return uniform_pick(sorted(near), u)


def rucb(batch, rng, tolerance: float = 1e-4, buffer: float = 0.0) -> RefProposal:
    b = batch.mask.shape[0]
    u_k, u_j = rng.random(b).tolist(), rng.random(b).tolist()
    b, m, mean, std, mask, lower, upper = _unpack(batch)
    pairs, singles = [], 0
    for i in range(b):
        reals = real_candidates(mask[i])
        cand = _candidates(mask[i], upper[i], buffer)
        if len(cand) == 1:
            singles += 1
        if len(reals) < 2 or len(cand) == 1:
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
            continue
        k = uniform_pick(cand, u_k[i])
        j = _near({c: upper[i][c] for c in reals if c != k}, tolerance, u_j[i])
        pairs.append((j, k))
    return _proposal(pairs, m, self_pairs=float(singles))


def ids(batch, rng, tolerance: float = 1e-4, buffer: float = 0.0, grid: int = 100, rho2: float = 1.0) -> RefProposal:
    b = batch.mask.shape[0]
    u_g, u_jp, u_coin = (rng.random(b).tolist() for _ in range(3))
    b, m, mean, std, mask, lower, upper = _unpack(batch)
    pairs, skipped, ps = [], 0, []
    for i in range(b):
        reals = real_candidates(mask[i])
        if not reals:
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
            continue
        cand = _candidates(mask[i], upper[i], buffer)
        g = _near({c: mean[i][c] for c in cand}, tolerance, u_g[i])
        if mean[i][g] < 0.5 and 0 in cand:
            g = 0
        max_u = max(upper[i][c] for c in cand)
        values = {}
        for j in cand:
            if j == g:
                continue
            sigma = (upper[i][j] - lower[i][j]) / 2
            info = math.log1p(max(sigma, 0.0) / rho2)
            for t in range(1, grid + 1):
                p = t / grid
                v = ((1 - p) * max_u + p * (max_u + mean[i][j])) ** 2 / p * info
                values[j * grid + (t - 1)] = math.inf if math.isnan(v) else v
        if len(cand) == 1 or not values:
            skipped += 1
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
            continue
        flat = _near(values, tolerance, u_jp[i], largest=False)
        j, p = flat // grid, (flat % grid + 1) / grid
        ps.append(p)
        if u_coin[i] < p:
            pairs.append((g, j))
        else:
            skipped += 1
            pairs.append((NO_CANDIDATE, NO_CANDIDATE))
    return _proposal(pairs, m, self_pairs=float(skipped), mean_p=sum(ps) / len(ps) if ps else 0.0)


METHODS = {"deltaquantile": deltaquantile, "infogain": infogain, "rucb": rucb, "ids": ids}
