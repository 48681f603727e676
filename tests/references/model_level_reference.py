"""Slow, obviously-correct model-level choices (one prompt at a time, plain Python loops),
drawing random numbers in the same order as activepref.acquisition.model_level."""

from __future__ import annotations

import numpy as np


def explore(chosen, available, epsilon, rng):
    out = [list(row) for row in chosen]
    if epsilon <= 0:
        return np.asarray(out, dtype=bool)
    for i in range(len(out)):
        slots = [j for j in range(len(out[i])) if chosen[i][j]]
        for j in slots:
            if rng.random() < epsilon:
                free = [x for x in range(len(out[i])) if available[i][x] and not out[i][x]]
                if free:
                    out[i][j] = False
                    out[i][free[rng.integers(len(free))]] = True
    return np.asarray(out, dtype=bool)


def ucb(rewards, available, beta, k, epsilon, rng):
    heads, b, m = rewards.shape
    chosen = []
    for i in range(b):
        upper = []
        for j in range(m):
            vals = np.asarray([rewards[h, i, j] for h in range(heads)])
            upper.append(float(np.mean(vals) + beta * np.std(vals)))
        order = sorted((j for j in range(m) if available[i][j]), key=lambda j: (-upper[j], j))
        row = [False] * m
        for j in order[:k]:
            row[j] = True
        chosen.append(row)
    return explore(chosen, available, epsilon, rng)


def dts(rewards, available, k, epsilon, rng):
    heads, b, m = rewards.shape
    chosen = []
    for i in range(b):
        row = [False] * m
        for _ in range(k):
            free = [j for j in range(m) if available[i][j] and not row[j]]
            if not free:
                break
            h = int(rng.integers(heads))
            best = max(free, key=lambda j: (float(rewards[h, i, j]), -j))
            row[best] = True
        chosen.append(row)
    return explore(chosen, available, epsilon, rng)
