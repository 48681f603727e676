"""Shared types of the batch designs (002, 003): a set of candidate comparisons over a whole
batch of prompts, from which a design picks ``budget`` comparisons at once.

A comparison is (x1, y1) vs (x2, y2): in-prompt (x1 = x2, the default) or cross-prompt
(002 §3.4). Designs see the reward model only through its last hidden layer Φ (002 §3.3:
features before the final linear layer) and the ensemble's per-head rewards, which serve
as posterior samples (BALD, BatchBALD, BAL-PM).

Shapes: n candidate responses, M candidate comparisons, K heads, p = dim Φ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ComparisonSet:
    """Everything a batch design may look at.

    phi: [n, p] Φ of every candidate response, or [K, n, p] each head's own Φ (see designs).
    rewards: [K, n] per-head rewards; r̂ = rewards.mean(0), p̂ = s(r̂_1 - r̂_2).
    prompt_of: [n] prompt index of each candidate.
    pairs: [M, 2] candidate comparisons (indices into the n candidates, never equal).
    prompt_features: [n_prompts, q] prompt embeddings (BAL-PM), or None.
    acquired_prompt_features: [a, q] embeddings of prompts acquired in earlier batches (BAL-PM), or None.
    pool_prompt_features: [u, q] embeddings of the unlabelled prompts outside this batch (BAL-PM:
        neighbours for the kNN radius, as 003's code estimates over the whole pool), or None.
    past_information: [p, p] Σ over labelled comparisons of p̂(1-p̂) ΔΦ ΔΦᵀ (PA D-opt), or None
        ([K, p, p] per head with a per-head phi).
    past_differences: [H, p] ΔΦ of labelled comparisons (coreset, det(XᵀX) with history), or None
        ([K, H, p] per head).
    prior_precision: 1/σ² of the Bayesian D-optimal criterion (the + I/σ² term).
    """

    phi: np.ndarray
    rewards: np.ndarray
    prompt_of: np.ndarray
    pairs: np.ndarray
    prompt_features: np.ndarray | None = None
    acquired_prompt_features: np.ndarray | None = None
    past_information: np.ndarray | None = None
    past_differences: np.ndarray | None = None
    prior_precision: float = 1.0
    pool_prompt_features: np.ndarray | None = None

    @property
    def mean_reward(self) -> np.ndarray:
        """[n] ensemble mean r̂."""
        return self.rewards.mean(axis=0)

    def differences(self) -> np.ndarray:
        """[M, p] ΔΦ = Φ_1 - Φ_2 of every candidate comparison."""
        return self.phi[self.pairs[:, 0]] - self.phi[self.pairs[:, 1]]

    def preference_prob(self) -> np.ndarray:
        """[M] p̂ = s(r̂_1 - r̂_2) under the ensemble mean."""
        r = self.mean_reward
        return 1.0 / (1.0 + np.exp(-(r[self.pairs[:, 0]] - r[self.pairs[:, 1]])))


# design(comparisons, budget, rng) -> [budget] distinct indices into comparisons.pairs
DesignFn = Callable[..., np.ndarray]


def candidate_pairs(
    prompt_of: np.ndarray, cross_prompt: bool = False, rng: np.random.Generator | None = None, max_pairs: int | None = None
) -> np.ndarray:
    """[M, 2] candidate comparisons (i < j). In-prompt: every pair within each prompt.
    Cross-prompt: pairs with different prompts too, uniformly subsampled to ``max_pairs``
    (all pairs of 1,920 candidates would be 1.8 M) with the in-prompt pairs always kept."""
    n = len(prompt_of)
    i, j = np.triu_indices(n, 1)
    same = prompt_of[i] == prompt_of[j]
    inside = np.stack([i[same], j[same]], axis=1)
    if not cross_prompt:
        return inside
    across = np.stack([i[~same], j[~same]], axis=1)
    if max_pairs is not None and len(inside) + len(across) > max_pairs:
        if rng is None:
            raise ValueError("subsampling cross-prompt pairs needs a random generator")
        keep = max(max_pairs - len(inside), 0)
        across = across[np.sort(rng.choice(len(across), size=min(keep, len(across)), replace=False))]
    return np.concatenate([inside, across])


def labelled_information(phi: np.ndarray, rewards: np.ndarray, information: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """Per-head history of the labelled pairs for the designs.

    phi: [K, 2H, p] each head's Φ of the rows (chosen, rejected) of each labelled pair in
    turn; rewards: [K, 2H] each head's reward of the same rows.
    Returns past_information [K, p, p] = Σ_j p̂_jk(1 - p̂_jk) ΔΦ_jk ΔΦ_jkᵀ (head k's Fisher
    information, p̂_jk = s(r_k(chosen_j) - r_k(rejected_j)); None unless ``information``) and
    past_differences [K, H, p] ΔΦ_jk = Φ_k(chosen_j) - Φ_k(rejected_j).
    """
    heads, rows, p = phi.shape
    pairs = phi.reshape(heads, rows // 2, 2, p)
    diff = pairs[:, :, 0] - pairs[:, :, 1]  # [K, H, p]
    if not information:
        return None, diff
    r = np.asarray(rewards, dtype=np.float64).reshape(heads, -1, 2)  # [K, H, 2]
    prob = 1.0 / (1.0 + np.exp(-(r[..., 0] - r[..., 1])))  # [K, H]
    fisher = np.einsum("khi,kh,khj->kij", diff, prob * (1 - prob), diff, optimize=True)  # [K, p, p]
    return fisher, diff


def mean_prompt_features(
    blocks: Iterable[tuple[int, np.ndarray]], response_prompt: np.ndarray, n_prompts: int, d: int
) -> np.ndarray:
    """[n_prompts, d] the mean feature of each prompt's candidates (zeros for a prompt with
    none): BAL-PM's prompt embedding when the pool has no prompt-only one, a documented
    approximation (a (prompt, response) feature is not an embedding of the prompt alone).

    blocks: (first row, [b, d] features of rows first..first+b-1) covering the n candidates
    in any order, so the [n, d] matrix need not be in memory; response_prompt: [n] prompt
    row of each candidate."""
    sums = np.zeros((n_prompts, d))
    for start, block in blocks:
        np.add.at(sums, response_prompt[start : start + len(block)], block)
    counts = np.bincount(response_prompt, minlength=n_prompts)
    return sums / np.maximum(counts, 1)[:, None]
