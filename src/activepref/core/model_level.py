"""Model-level acquisition inside a run (methods of kind ``model``, ``acquisition.model_level``).

Each iteration, before anything is generated (live runs) or revealed (pool runs), a small
ensemble reward model over (prompt features, model identity) is trained from scratch on the
run's judged pairs so far and predicts every model's reward on every prompt of the batch; the
method chooses ``k`` models per prompt and the choice is committed (``model_choices``). Only
those models generate (live) or count as generated (pool: their candidates are the only ones
the response-level method sees, and the only ones the bill counts as generation).

Inputs of the model reward model: the prompt's prompt-only embedding (pool: the
``prompt_features`` column; live: the run's embedder on the prompt alone, stored in
``prompt_vectors``), z-scored per dimension, concatenated with a one-hot code of the model.
It is trained, like the response-level ENN, on Bradley-Terry pairs: each preference
(chosen, rejected) becomes ((prompt, model of chosen), (prompt, model of rejected)). Training
from scratch every iteration (seeded by the run seed and iteration) keeps a resumed run exact
without checkpoints; it costs MODEL_STEPS small steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from activepref.acquisition import Method, get_method, make_selector
from activepref.core.determinism import Stage, crash_point, stage_rng
from activepref.core.generators import check_generators_exist
from activepref.errors import ConfigError
from activepref.model.enn import ENNShape, EnsembleRewardModel, ReplayBuffer, TrainConfig

if TYPE_CHECKING:
    from activepref.config import RunConfig
    from activepref.core.loop import RunContext

MODEL_HEADS = 10
MODEL_HIDDEN = 64
MODEL_LAYERS = 2
MODEL_STEPS = 200
MODEL_LR = 1e-3
MODEL_BATCH = 64
MODEL_ZETA = 1.0


@dataclass(frozen=True)
class ModelLevelParts:
    """A model-level method bound to its options: ``method`` (kind model), ``selector``
    (``selector(model_batch, rng) -> [b, M] bool``), and the response-level method's name."""

    method: Method
    selector: Any
    response_method: str


def split_methods(config: RunConfig) -> tuple[ModelLevelParts | None, str, dict[str, Any]]:
    """(model-level parts or None, response-level method name, its options) of a config."""
    method = get_method(config.method)
    if method.kind != "model":
        return None, config.method, dict(config.method_options)
    options = dict(config.method_options)
    selector = make_selector(config.method, options)
    defaults = method.options()
    response = str(options.get("response_method", defaults["response_method"]))
    response_options = dict(options.get("response_options") or {})
    try:
        inner = get_method(response)
    except ConfigError as exc:
        raise ConfigError(f"method_options.response_method: {exc}") from None
    if inner.kind != "per_prompt":
        raise ConfigError(f"method_options.response_method: {response!r} is a {inner.kind} method; a model-level method needs a "
                          "per-prompt one (e.g. dts, drts, deltaucb, random)")
    make_selector(response, response_options)  # validate its options now
    return ModelLevelParts(method, selector, response), response, response_options


def check_fixed_generators(ctx: RunContext) -> None:
    """``core.generators.check_generators_exist`` for a run being built."""
    check_generators_exist(ctx.config, model_names(ctx))


def model_names(ctx: RunContext) -> list[str]:
    """The model vocabulary: live runs, the generation models' labels in config order; pool
    runs, every model of the pool (the store's order)."""
    g = ctx.config.generation
    if ctx.config.live and g is not None:
        return [m.label() for m in g.models]
    return [str(n) for n in ctx.data.models.names]


def _standardize(matrix: np.ndarray) -> np.ndarray:
    mean = matrix.mean(axis=0, keepdims=True)
    sd = matrix.std(axis=0, keepdims=True)
    return (matrix - mean) / np.where(sd > 0, sd, 1.0)


def model_inputs(prompt_vecs: np.ndarray, model_codes: np.ndarray, n_models: int) -> torch.Tensor:
    """[n, q + M] float32 rows: prompt vector (already standardised) and one-hot model."""
    onehot = np.zeros((len(model_codes), n_models), dtype=np.float32)
    onehot[np.arange(len(model_codes)), model_codes] = 1.0
    return torch.from_numpy(np.concatenate([prompt_vecs.astype(np.float32), onehot], axis=1))


def train_model_rm(
    pairs: list[tuple[int, int, int, int]], vectors: dict[int, np.ndarray], n_models: int, seed: int, iteration: int
) -> EnsembleRewardModel:
    """A fresh model-level ensemble trained on ``pairs`` of (prompt of chosen, model of chosen,
    prompt of rejected, model of rejected); ``vectors``: standardised prompt vectors by prompt."""
    q = len(next(iter(vectors.values())))
    init = int(stage_rng(seed, iteration, Stage.MODEL_INIT).integers(2**62))
    rm = EnsembleRewardModel(ENNShape(q + n_models, MODEL_HEADS, MODEL_HIDDEN, MODEL_LAYERS), init, zeta=MODEL_ZETA, lr=MODEL_LR)
    if not pairs:
        return rm
    keys: dict[tuple[int, int], int] = {}
    rows: list[tuple[int, int]] = []
    index = np.empty((len(pairs), 2), dtype=np.int64)
    for n, (pc, mc, pr, mr) in enumerate(pairs):
        for side, key in enumerate(((pc, mc), (pr, mr))):
            if key not in keys:
                keys[key] = len(rows)
                rows.append(key)
            index[n, side] = keys[key]
    feats = model_inputs(np.stack([vectors[p] for p, _ in rows]), np.asarray([m for _, m in rows]), n_models)
    buffer = ReplayBuffer()
    buffer.extend(index)
    cfg = TrainConfig(lr=MODEL_LR, steps=MODEL_STEPS, batch_size=MODEL_BATCH)
    rm.fit(feats, buffer, cfg, len(buffer), stage_rng(seed, iteration, Stage.MODEL_TRAIN))
    return rm


def prompt_vectors(ctx: RunContext, prompt_idxs: list[int]) -> dict[int, np.ndarray]:
    """Standardised prompt vectors of ``prompt_idxs`` and of every prompt stored so far.
    Pool runs read the pool's prompt_features; live runs embed new prompts (the embedder on the
    prompt alone) and store them in the same transaction as the model choice."""
    if not ctx.config.live:
        own = ctx.store.prompt_features()
        if own is None:
            raise ConfigError(
                f"method {ctx.config.method!r} needs prompt-only features: a pool with a prompt_features column "
                "(e.g. `activepref make-pool --regime auf --prompt-features`)"
            )
        matrix = _standardize(np.asarray(own, dtype=np.float64))
        return {p: matrix[p] for p in range(len(matrix))}
    stored = ctx.store.prompt_vectors()
    todo = [p for p in prompt_idxs if p not in stored]
    if todo:
        live = ctx.parts.live
        assert live is not None
        vecs = live.embedder.embed([ctx.data.prompts[p].conversation() for p in todo])
        ctx.pending_prompt_vectors = {p: np.asarray(vecs[n], dtype=np.float32) for n, p in enumerate(todo)}
        stored = {**stored, **ctx.pending_prompt_vectors}
    keys = sorted(stored)
    matrix = _standardize(np.stack([stored[p] for p in keys]).astype(np.float64))
    return {p: matrix[n] for n, p in enumerate(keys)}


def model_select_step(ctx: RunContext, it: int, prompt_idxs: list[int], level: ModelLevelParts) -> None:
    """Choose the models that generate for each prompt of iteration ``it``; commit the choice."""
    from activepref.acquisition.model_level import ModelBatch

    names = model_names(ctx)
    code = {n: j for j, n in enumerate(names)}
    b, m = len(prompt_idxs), len(names)
    available = np.ones((b, m), dtype=bool)
    if not ctx.config.live:
        slots, mask = ctx.data.table.slots[prompt_idxs], ctx.data.table.mask[prompt_idxs]
        available[:] = False
        for i in range(b):
            for name in ctx.data.models[slots[i][mask[i]]]:
                available[i, code[str(name)]] = True
    rewards = np.zeros((1, b, m))
    ctx.pending_prompt_vectors = None
    if level.method.uses_reward_model:
        vectors = prompt_vectors(ctx, prompt_idxs)
        history = ctx.store.replay_pairs()  # [H, 2] response rows (chosen, rejected)
        rp = ctx.data.response_prompt
        to_code = np.asarray([code.get(str(n), -1) for n in ctx.data.models.names], dtype=np.int64)
        mc = to_code[ctx.data.models.codes[history.reshape(-1)]].reshape(-1, 2) if len(history) else np.empty((0, 2), np.int64)
        pairs = [(int(rp[c]), int(a), int(rp[r]), int(z)) for (c, r), (a, z) in zip(history, mc) if a >= 0 and z >= 0]
        rm = train_model_rm(pairs, vectors, m, ctx.config.seed, it)
        feats = model_inputs(np.repeat(np.stack([vectors[p] for p in prompt_idxs]), m, axis=0), np.tile(np.arange(m), b), m)
        rewards = rm.rewards(feats).double().numpy().reshape(-1, b, m)  # [K, b, M]
    batch = ModelBatch(rewards, available, ctx.config.beta)
    chosen = np.asarray(level.selector(batch, stage_rng(ctx.config.seed, it, Stage.MODEL_SELECT)), dtype=bool) & available
    choices = {p: [names[j] for j in np.flatnonzero(chosen[i])] for i, p in enumerate(prompt_idxs)}
    crash_point("model_select.before_commit", it)
    ctx.store.commit_model_choices(it, choices, ctx.pending_prompt_vectors or {})
    crash_point("model_select.after_commit", it)
    ctx.pending_prompt_vectors = None


def chosen_mask(ctx: RunContext, it: int, prompt_idxs: list[int]) -> np.ndarray | None:
    """[b, m] bool over the candidate table's slots: candidates of chosen models (None: the
    iteration has no model choice, every candidate counts)."""
    choices = ctx.store.model_choices(it)
    if not choices:
        return None
    slots, mask = ctx.data.table.slots[prompt_idxs], ctx.data.table.mask[prompt_idxs]
    out = np.zeros(slots.shape, dtype=bool)
    for i, p in enumerate(prompt_idxs):
        allowed = set(choices.get(p, []))
        names = ctx.data.models[np.maximum(slots[i], 0)]
        out[i] = mask[i] & np.asarray([str(n) in allowed for n in names])
    return out
