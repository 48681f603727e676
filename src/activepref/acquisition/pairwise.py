"""Baseline heuristics that ignore the reward model (001 §4.3): random, maxmin,
ultrafeedback and the DeltaQwen-style fixed model pair."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from activepref.acquisition import register
from activepref.acquisition.base import (
    NO_CANDIDATE,
    CandidateBatch,
    PairRule,
    Proposal,
    annotate_pair,
)

ULTRAFEEDBACK_SAMPLE = 4  # candidates judged per prompt by UltraFeedback (Cui et al., 2024)


def _random_order(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[b, m] -> [b, m] candidate indices in uniformly random order, real candidates first."""
    keys = rng.random(mask.shape)  # [b, m]
    keys[~mask] = -1.0
    return np.argsort(-keys, axis=1, kind="stable")


@register("random", "Two distinct candidates drawn uniformly at random; judge both.", uses_reward_model=False)
def random_pair(batch: CandidateBatch, rng: np.random.Generator) -> Proposal:
    mask = batch.mask
    b, m = mask.shape
    order = _random_order(mask, rng)
    pair = np.full((b, 2), NO_CANDIDATE, dtype=np.int64)
    enough = mask.sum(axis=1) >= 2
    if m >= 2:
        pair[enough] = order[enough, :2]
    return Proposal(annotate_pair(pair, mask.shape[1]), pair, PairRule.ORDER_BY_SCORE)


@register("maxmin", "Judge every candidate; best vs worst (costs m annotations per prompt).", uses_reward_model=False, needs_scores=True)
def maxmin(batch: CandidateBatch, rng: np.random.Generator) -> Proposal:
    mask = batch.mask
    enough = mask.sum(axis=1) >= 2
    annotate = mask & enough[:, None]
    pair = np.full((mask.shape[0], 2), NO_CANDIDATE, dtype=np.int64)
    return Proposal(annotate, pair, PairRule.BEST_VS_WORST)


@register(
    "ultrafeedback",
    "UltraFeedback: judge 4 random candidates; best vs a random one of the other 3.",
    uses_reward_model=False,
    needs_scores=True,
)
def ultrafeedback(
    batch: CandidateBatch, rng: np.random.Generator,
    sample_size: Annotated[int, Field(ge=1, description="candidates judged per prompt (001: 4)")] = ULTRAFEEDBACK_SAMPLE,
) -> Proposal:
    mask = batch.mask
    b, m = mask.shape
    order = _random_order(mask, rng)[:, : min(sample_size, m)]  # [b, s]
    annotate = np.zeros((b, m), dtype=bool)
    np.put_along_axis(annotate, order, True, axis=1)
    annotate &= mask
    annotate[mask.sum(axis=1) < 2] = False
    pair = np.full((b, 2), NO_CANDIDATE, dtype=np.int64)
    return Proposal(annotate, pair, PairRule.BEST_VS_RANDOM)


def _distinct_models(strong: str, weak: str) -> None:
    if strong == weak:
        raise ValueError(f"delta_pair: 'strong' and 'weak' must name different models (both are {strong!r})")


@register(
    "delta_pair",
    "DeltaQwen-style fixed pair: strong model's response chosen over weak model's; no annotation.",
    uses_reward_model=False,
    check=lambda options: _distinct_models(options.strong, options.weak),
    generators=lambda options: (options.strong, options.weak),
)
def delta_pair(
    batch: CandidateBatch, rng: np.random.Generator, *,
    strong: Annotated[str, Field(min_length=1, description="model whose response is always chosen")],
    weak: Annotated[str, Field(min_length=1, description="model whose response is always rejected")],
) -> Proposal:
    if batch.models is None:
        raise ValueError("delta_pair needs the model name of every candidate (batch.models)")
    _distinct_models(strong, weak)
    mask = batch.mask
    b, m = mask.shape
    is_strong = mask & (batch.models == strong)
    is_weak = mask & (batch.models == weak)
    # First response of each model in pool order; prompts missing either model are skipped.
    pair = np.stack([is_strong.argmax(axis=1), is_weak.argmax(axis=1)], axis=1).astype(np.int64)
    pair[~(is_strong.any(axis=1) & is_weak.any(axis=1))] = NO_CANDIDATE
    return Proposal(np.zeros((b, m), dtype=bool), pair, PairRule.FIXED)
