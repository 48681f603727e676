"""Model-level acquisition: before anything is generated for a prompt, choose which ``k`` of
the pool's ``M`` models to ask (seed 001's first future-work item; seed 000 names it too).

A reward model over (prompt features, model identity) -- an ensemble like the response-level
one, trained on the judged pairs (see :mod:`activepref.core.model_level`) -- predicts each
model's reward on each prompt of the batch; a method here turns those predictions into a
[b, M] choice of models. Only the chosen models generate; the response-level method named by
``response_method`` then picks the pair among what they generated.

Every method takes ``k`` (models per prompt), ``epsilon`` (each chosen slot is replaced, with
this probability, by a uniformly drawn model not yet chosen: exploration beyond the
ensemble's own uncertainty), ``response_method`` and ``response_options``. Functions are
pure: ``propose(batch, rng, **options) -> [b, M] bool``.

These are our design, not a published algorithm: the selection rules mirror the response
level ones (optimism, Thompson sampling, DeltaUCB's optimistic-vs-pessimistic pair), applied
to models instead of responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from activepref.acquisition import register_model_level

K = Annotated[int, Field(ge=1, description="models asked per prompt")]
EPS = Annotated[float, Field(ge=0, le=1, description="chance that a chosen model is swapped for a random unchosen one")]
RESPONSE = Annotated[str, Field(description="the response-level method that picks the pair among the generated candidates")]
RESPONSE_OPTS = Annotated[dict[str, Any] | None, Field(description="options of response_method")]


@dataclass(frozen=True)
class ModelBatch:
    """Model-level predictions for one batch of prompts.

    rewards: [K, b, M] each ensemble head's reward of model j on prompt i; mean, std: [b, M]
    over the heads; available: [b, M] bool (a model that cannot answer a prompt, e.g. a pool
    without its response, is never chosen); beta scales std into bounds.
    """

    rewards: np.ndarray
    available: np.ndarray
    beta: float = 1.0

    @property
    def mean(self) -> np.ndarray:
        return self.rewards.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.rewards.std(axis=0)


def _explore(chosen: np.ndarray, available: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Swap each chosen model, with probability ``epsilon``, for a random available unchosen one.
    chosen, available: [b, M] bool. Draws: one uniform per chosen slot, then one index per swap."""
    if epsilon <= 0:
        return chosen
    out = chosen.copy()
    for i in range(chosen.shape[0]):
        for j in np.flatnonzero(chosen[i]):
            if rng.random() < epsilon:
                free = np.flatnonzero(available[i] & ~out[i])
                if len(free):
                    out[i, j] = False
                    out[i, free[rng.integers(len(free))]] = True
    return out


def _top_k(score: np.ndarray, available: np.ndarray, k: int) -> np.ndarray:
    """[b, M] bool: the k available models of highest score per row (ties: lower index)."""
    masked = np.where(available, score, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    out = np.zeros(score.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out & available


@register_model_level("model_ucb", "Model level: the k models of highest upper bound (mean + beta std) per prompt generate.")
def model_ucb(batch: ModelBatch, rng: np.random.Generator, k: K = 2, epsilon: EPS = 0.0, response_method: RESPONSE = "dts",
              response_options: RESPONSE_OPTS = None) -> np.ndarray:
    return _explore(_top_k(batch.mean + batch.beta * batch.std, batch.available, k), batch.available, epsilon, rng)


@register_model_level("model_dts", "Model level: k Thompson draws over models (a random head each, its best unchosen model).")
def model_dts(batch: ModelBatch, rng: np.random.Generator, k: K = 2, epsilon: EPS = 0.0, response_method: RESPONSE = "dts",
              response_options: RESPONSE_OPTS = None) -> np.ndarray:
    heads, b, _ = batch.rewards.shape
    chosen = np.zeros(batch.available.shape, dtype=bool)
    for i in range(b):
        for _ in range(k):
            free = batch.available[i] & ~chosen[i]
            if not free.any():
                break
            h = int(rng.integers(heads))
            chosen[i, int(np.argmax(np.where(free, batch.rewards[h, i], -np.inf)))] = True
    return _explore(chosen, batch.available, epsilon, rng)


@register_model_level(
    "model_deltaucb",
    "Model level: the optimistic best (highest upper bound) and the pessimistic worst (lowest lower bound), then by upper bound.",
)
def model_deltaucb(batch: ModelBatch, rng: np.random.Generator, k: K = 2, epsilon: EPS = 0.0, response_method: RESPONSE = "dts",
                   response_options: RESPONSE_OPTS = None) -> np.ndarray:
    upper = batch.mean + batch.beta * batch.std
    lower = batch.mean - batch.beta * batch.std
    chosen = np.zeros(batch.available.shape, dtype=bool)
    for i in range(chosen.shape[0]):
        free = batch.available[i].copy()
        if not free.any():
            continue
        best = int(np.argmax(np.where(free, upper[i], -np.inf)))
        chosen[i, best], free[best] = True, False
        if k >= 2 and free.any():
            worst = int(np.argmin(np.where(free, lower[i], np.inf)))
            chosen[i, worst], free[worst] = True, False
        for _ in range(k - 2):
            if not free.any():
                break
            nxt = int(np.argmax(np.where(free, upper[i], -np.inf)))
            chosen[i, nxt], free[nxt] = True, False
    return _explore(chosen, batch.available, epsilon, rng)


@register_model_level("model_random", "Model level baseline: k models drawn uniformly per prompt (no reward model).", uses_reward_model=False)
def model_random(batch: ModelBatch, rng: np.random.Generator, k: K = 2, epsilon: EPS = 0.0, response_method: RESPONSE = "dts",
                 response_options: RESPONSE_OPTS = None) -> np.ndarray:
    """The control: k available models uniformly without replacement (``epsilon`` has nothing
    to add to a uniform draw and is accepted only so that every model-level method takes the
    same options)."""
    chosen = np.zeros(batch.available.shape, dtype=bool)
    for i in range(chosen.shape[0]):
        free = np.flatnonzero(batch.available[i])
        pick = rng.choice(free, size=min(k, len(free)), replace=False) if len(free) else free
        chosen[i, pick] = True
    return chosen
