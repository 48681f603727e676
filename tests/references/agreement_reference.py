"""Slow, obviously-correct agreement statistics (plain loops over items and value pairs)."""

from __future__ import annotations


def majority(votes):
    tally = {}
    for v in votes:
        tally[v] = tally.get(v, 0) + 1
    if not tally:
        return "tie"
    best = max(tally.values())
    winners = [v for v, c in tally.items() if c == best]
    return winners[0] if len(winners) == 1 else "tie"


def kappa(first, second):
    n = len(first)
    if n == 0:
        return None
    agree = sum(1 for a, b in zip(first, second) if a == b) / n
    chance = 0.0
    for c in set(first) | set(second):
        chance += (sum(1 for a in first if a == c) / n) * (sum(1 for b in second if b == c) / n)
    if chance >= 1.0:
        return None
    return (agree - chance) / (1.0 - chance)


def alpha(units):
    """alpha = 1 - D_o / D_e, both as mean disagreement over ordered pairs of pairable values:
    D_o within units (each unit's pairs weighted 1 / (m_u - 1)), D_e over all pairs of values."""
    units = [list(u) for u in units if len(u) >= 2]
    values = [x for u in units for x in u]
    n = len(values)
    if n < 2:
        return None
    within = 0.0
    for u in units:
        m = len(u)
        for i in range(m):
            for j in range(m):
                if i != j and u[i] != u[j]:
                    within += 1.0 / (m - 1)
    observed = within / n
    between = 0
    for i in range(n):
        for j in range(n):
            if i != j and values[i] != values[j]:
                between += 1
    expected = between / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected
