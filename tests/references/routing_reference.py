"""Slow, obviously-correct routing (loops over heads and pairs)."""

from __future__ import annotations

import math


def uncertainty(first, second):
    heads, n = len(first), len(first[0])
    out = []
    for j in range(n):
        probs = [1.0 / (1.0 + math.exp(-(first[h][j] - second[h][j]))) for h in range(heads)]
        mean = sum(probs) / heads
        out.append(math.sqrt(sum((p - mean) ** 2 for p in probs) / heads))
    return out


def route(values, k):
    """The k largest values (NaN lowest); among equal values the earlier index wins."""
    ranked = sorted(range(len(values)), key=lambda i: (-(values[i] if values[i] == values[i] else -math.inf), i))
    chosen = set(ranked[:k])
    return [i in chosen for i in range(len(values))]
