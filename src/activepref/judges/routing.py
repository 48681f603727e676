"""Which pairs a routed judge sends to humans: the ones the ensemble is least sure about.

Plain functions over arrays; the slow obvious versions are in
``tests/references/routing_reference.py``.
"""

from __future__ import annotations

import math

import numpy as np


def preference_uncertainty(first_rewards: np.ndarray, second_rewards: np.ndarray) -> np.ndarray:
    """Epistemic uncertainty of "first beats second" per pair: the standard deviation over the
    ensemble's heads of each head's Bradley-Terry probability σ(r_first - r_second).

    first_rewards, second_rewards: [K, n] each head's reward of each pair's two responses.
    Returns [n] in [0, 0.5]: 0 when every head agrees, up to 0.5 when they split 0 / 1.
    """
    if first_rewards.shape != second_rewards.shape or first_rewards.ndim != 2:
        raise ValueError(f"rewards must both be [K, n]; got {first_rewards.shape} and {second_rewards.shape}")
    probs = 1.0 / (1.0 + np.exp(-(first_rewards - second_rewards)))  # [K, n]
    return probs.std(axis=0)


def human_count(n_pairs: int, share: float | None, count: int | None) -> int:
    """How many of an iteration's ``n_pairs`` go to humans: ``count`` (at most n), or
    ``ceil(share * n)``."""
    if count is not None:
        return min(count, n_pairs)
    if share is None:
        raise ValueError("give share or count")
    return min(n_pairs, math.ceil(share * n_pairs - 1e-9))


def route_to_humans(uncertainty: np.ndarray, share: float | None = None, count: int | None = None) -> np.ndarray:
    """[n] bool: the ``human_count`` most uncertain pairs (ties: the earlier pair first).

    uncertainty: [n]; a NaN counts as the lowest (a pair without a prediction stays with the model).
    """
    n = len(uncertainty)
    k = human_count(n, share, count)
    keyed = np.where(np.isnan(uncertainty), -np.inf, uncertainty)  # [n]
    order = np.argsort(-keyed, kind="stable")  # [n] most uncertain first, index order within ties
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask
