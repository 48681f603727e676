"""What the loop records after every iteration: the ENN on the held-out candidates and the
dataset so far against the hidden reference reward (when the pool has one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from activepref.bench.metrics import best_of_n_stats, spearman_loss
from activepref.core.candidates import RunData
from activepref.core.store import RunStore
from activepref.model.enn import EnsembleRewardModel


def heldout_accuracy(mean: np.ndarray, eval_pairs: np.ndarray) -> float:
    """Share of held-out pairs the ENN mean orders like the reference reward.

    mean: [r] predicted rewards; eval_pairs: [E, 2] (better, worse) positions into ``mean``."""
    if len(eval_pairs) == 0:
        return float("nan")
    return float(np.mean(mean[eval_pairs[:, 0]] > mean[eval_pairs[:, 1]]))


def heldout_metrics(store: RunStore, data: RunData, model: EnsembleRewardModel) -> dict[str, Any]:
    """Held-out metrics of the ENN and dataset statistics against the hidden reference reward.

    On the held-out candidates (one ENN forward): ``heldout_accuracy``, and the bench's
    model metrics ``heldout_spearman_loss``, ``heldout_best_of_n`` (+ ``_regret``,
    ``_normalized``, ``heldout_oracle_best``), so that `activepref bench` need not predict
    them again from the checkpoints. ``annotations`` counts judge verdicts (scores and
    pairwise comparisons) including failures."""
    metrics: dict[str, Any] = {}
    if len(data.eval_pairs) and len(data.eval_rows):
        rows = data.eval_rows
        mu, _ = model.predict(data.features[torch.from_numpy(rows)])
        metrics["heldout_accuracy"] = heldout_accuracy(mu, data.eval_pair_positions)
        ref, groups = data.reward_reference[rows], data.response_prompt[rows]
        bon = best_of_n_stats(mu, ref, groups)
        metrics.update(
            heldout_spearman_loss=spearman_loss(mu, ref, groups), heldout_best_of_n=bon.mean,
            heldout_best_of_n_regret=bon.regret, heldout_best_of_n_normalized=bon.normalized, heldout_oracle_best=bon.oracle_max,
        )
    prefs = store.preference_rows()
    metrics["pairs"] = len(prefs)
    metrics["annotations"] = store.annotations()
    chosen = data.reward_reference[[p.chosen_idx for p in prefs]]
    rejected = data.reward_reference[[p.rejected_idx for p in prefs]]
    known = np.isfinite(chosen) & np.isfinite(rejected)  # live runs have no hidden reference
    if known.any():
        metrics["mean_chosen_reward"] = float(chosen[known].mean())
        metrics["mean_rejected_reward"] = float(rejected[known].mean())
        metrics["pair_agreement"] = float(np.mean(chosen[known] > rejected[known]))
    judged = [(p.score_chosen, p.score_rejected) for p in prefs if p.score_chosen is not None and p.score_rejected is not None]
    if judged:
        metrics["mean_chosen_score"] = float(np.mean([c for c, _ in judged]))
        metrics["mean_rejected_score"] = float(np.mean([r for _, r in judged]))
    return metrics
