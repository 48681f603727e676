"""Synthetic pools in the regime of seed 001 (ActiveUltraFeedback): 30 candidates per prompt,
one from each model of a 30-model quality ladder, judged on four aspects on a 1-5 scale.

Generative model (all draws from one seeded generator; k = LATENT latent dimensions):

- model m (the 30 models of 001 App. A.1, strongest first as ranked by how often Random
  picked them as chosen in 001 Fig. 6a): ladder effect a_m = spread * (1 - 2 m / 29), an
  identity code e_m ~ N(0, I_k), a skill vector s_m ~ N(0, I_k), a verbosity log L_m;
- prompt p: topic t_p ~ N(0, I_k), difficulty delta_p ~ N(0, 0.5^2);
- response of model m to prompt p: style z ~ N(0, I_k);
- latent quality (the ``oracle``)
      q = a_m + delta_p + sigma_int * <t_p, s_m> / sqrt(k)          (prompt x model interaction)
          + sigma_resp * g(z)                                       (the response's own quality)
          + sigma_hidden * eps,   eps ~ N(0, 1)                     (what features cannot see)
  with g a random tanh network (unit variance);
- features x = [t_p, e_m, z] @ P + sigma_feat * N(0, I_d), P a random [3k, d] projection
  (so everything but eps is recoverable from x when d >= 3k);
- lengths: completion_tokens = exp(log L_m + 0.15 q' + N(0, 0.4^2)) (q' standardised q),
  prompt_tokens = exp(N(4, 0.6^2)) per prompt;
- judge: each aspect a of helpfulness, honesty, instruction_following, truthfulness scores
  clip(round(3 + 1.1 q' + b_a + length_bias * (log tokens standardised) + e + e_a), 1, 5)
  with a judge error e ~ N(0, noise^2) shared by the response's four aspects and
  e_a ~ N(0, (noise / 2)^2) per aspect (an integer, so ties happen); ``score`` is their
  mean, as 001 App. D.1 averages aspects.

Pools are written in chunks of prompts (Parquet row groups), so 60,000 x 30 at d 256 is
written in minutes with bounded memory; features go in the Parquet ``features`` column or,
for big pools, in a separate ``.npy`` (float32 or float16) that a run reads with ``features:``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activepref.pools.records import ASPECTS

# 001 App. A.1's model pool, strongest first (001 Fig. 6a: order of "chosen" counts under Random).
AUF_MODELS = (
    "qwen3-235b-a22b", "command-a", "deepseek-v3", "nemotron-super-49b", "nemotron-70b", "nemotron-ultra-253b",
    "qwen3-32b", "qwen2.5-72b", "gemma3-27b", "qwen3-14b", "qwen3-30b-a3b", "phi4", "mistral-large",
    "gemma3-12b", "llama3.3-70b", "tulu3-70b", "tulu3-405b", "gemma3-4b", "mistral-small", "moonlight-16b-a3b",
    "olmo2-32b", "qwen3-1.7b", "llama3.1-8b", "phi4-mini", "llama3.2-3b", "gemma3-1b", "qwen3-0.6b",
    "smollm2-1.7b", "llama3.2-1b", "qwen2.5-0.5b",
)
LATENT = 16  # k: dimension of each latent code (topic, model identity, response style)
DIFFICULTY_SD = 0.5
JUDGE_SCALE = 1.1  # standardised quality -> Likert points
ASPECT_BIAS = {"helpfulness": 0.0, "honesty": 0.25, "instruction_following": 0.1, "truthfulness": 0.2}
CHUNK_PROMPTS = 2048


@dataclass(frozen=True)
class AUFRegime:
    """Parameters of the generative model (see the module docstring)."""

    n_prompts: int = 4096
    dim: int = 256
    noise: float = 0.5  # judge error per response in Likert points (plus half as much per aspect)
    ladder_spread: float = 1.0  # a_m runs from +spread (best) to -spread (worst)
    interaction: float = 0.5  # sigma_int
    response_sd: float = 0.6  # sigma_resp
    hidden_sd: float = 0.4  # sigma_hidden: quality the features cannot see
    feature_noise: float = 0.3  # sigma_feat
    length_bias: float = 0.15  # judge's preference for longer answers (Likert points per sd of log length)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.dim < 1:
            raise ValueError(f"need n_prompts >= 1 and dim >= 1 (got {self.n_prompts}, {self.dim})")
        for name in ("noise", "ladder_spread", "interaction", "response_sd", "hidden_sd", "feature_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (got {value})")


@dataclass
class AUFChunk:
    """Rows of one chunk of prompts, prompt-major (30 rows per prompt, model order).

    prompt: [n] prompt number; model: [n] model number; features: [n, d] float32;
    oracle: [n]; aspects: aspect -> [n] integer scores; score: [n] their mean;
    completion_tokens: [n]; prompt_tokens: [n];
    prompt_features: [P, d] float32 prompt-only embedding of each of the chunk's P prompts
    ([t_p, 0, 0] @ P: what embedding the prompt alone would see; no extra random draws)."""

    prompt: np.ndarray
    model: np.ndarray
    features: np.ndarray
    oracle: np.ndarray
    aspects: dict[str, np.ndarray]
    score: np.ndarray
    completion_tokens: np.ndarray
    prompt_tokens: np.ndarray
    prompt_features: np.ndarray


class _World:
    """The draws shared by every chunk (models, projections, the quality network)."""

    def __init__(self, regime: AUFRegime) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([regime.seed, 1]))
        k, m = LATENT, len(AUF_MODELS)
        self.ladder = regime.ladder_spread * (1.0 - 2.0 * np.arange(m) / (m - 1))  # [M]
        self.identity = rng.normal(size=(m, k))  # [M, k]
        self.skill = rng.normal(size=(m, k))  # [M, k]
        self.verbosity = np.log(rng.uniform(150, 600, size=m))  # [M] log mean completion tokens
        self.projection = rng.normal(size=(3 * k, regime.dim)) / np.sqrt(3 * k)  # [3k, d]
        self.w1 = rng.normal(size=(k, 32)) / np.sqrt(k)
        self.w2 = rng.normal(size=32) / np.sqrt(32)
        # Standardise g(z) and q once, from a large reference sample, so every chunk uses the same scale.
        z = rng.normal(size=(20_000, k))
        g = np.tanh(z @ self.w1) @ self.w2
        self.g_mean, self.g_sd = float(g.mean()), float(g.std())
        var_q = (self.ladder.var() + DIFFICULTY_SD**2 + regime.interaction**2 + regime.response_sd**2 + regime.hidden_sd**2)
        self.q_sd = float(np.sqrt(var_q)) or 1.0
        self.log_len_mean, self.log_len_sd = float(self.verbosity.mean()), float(np.sqrt(self.verbosity.var() + 0.4**2 + 0.15**2))


def auf_chunks(regime: AUFRegime, chunk_prompts: int = CHUNK_PROMPTS) -> Iterator[AUFChunk]:
    """The pool chunk by chunk (``chunk_prompts`` prompts each, the last one shorter). Chunk c
    draws from its own generator (seed, 2, c), so the pool is a function of (regime,
    chunk size) and memory stays bounded by one chunk."""
    world = _World(regime)
    k, m, d = LATENT, len(AUF_MODELS), regime.dim
    for c, start in enumerate(range(0, regime.n_prompts, chunk_prompts)):
        rng = np.random.default_rng(np.random.SeedSequence([regime.seed, 2, c]))
        n_p = min(chunk_prompts, regime.n_prompts - start)
        topic = rng.normal(size=(n_p, k))  # [P, k]
        difficulty = rng.normal(scale=DIFFICULTY_SD, size=n_p)  # [P]
        style = rng.normal(size=(n_p, m, k))  # [P, M, k]
        hidden = rng.normal(size=(n_p, m))  # [P, M]
        interaction = regime.interaction * (topic @ world.skill.T) / np.sqrt(k)  # [P, M]
        own = regime.response_sd * ((np.tanh(style @ world.w1) @ world.w2) - world.g_mean) / world.g_sd  # [P, M]
        q = world.ladder[None, :] + difficulty[:, None] + interaction + own + regime.hidden_sd * hidden  # [P, M]
        latent = np.concatenate(
            [np.broadcast_to(topic[:, None, :], (n_p, m, k)), np.broadcast_to(world.identity[None], (n_p, m, k)), style], axis=2
        )  # [P, M, 3k]
        feats = latent.reshape(n_p * m, 3 * k) @ world.projection  # [P*M, d]
        feats += regime.feature_noise * rng.normal(size=feats.shape)
        q_std = q / world.q_sd  # [P, M] standardised quality
        log_len = world.verbosity[None, :] + 0.15 * q_std + rng.normal(scale=0.4, size=(n_p, m))  # [P, M]
        len_z = (log_len - world.log_len_mean) / world.log_len_sd
        judge_error = rng.normal(scale=regime.noise, size=(n_p, m))  # [P, M] shared by the four aspects
        aspects = {}
        for a in ASPECTS:
            raw = (3.0 + JUDGE_SCALE * q_std + ASPECT_BIAS[a] + regime.length_bias * len_z + judge_error
                   + rng.normal(scale=regime.noise / 2, size=(n_p, m)))
            aspects[a] = np.clip(np.rint(raw), 1, 5).reshape(-1)
        score = np.mean([aspects[a] for a in ASPECTS], axis=0)
        prompt_tokens = np.rint(np.exp(rng.normal(4.0, 0.6, size=n_p)))
        yield AUFChunk(
            prompt=np.repeat(np.arange(start, start + n_p), m),
            model=np.tile(np.arange(m), n_p),
            features=feats.astype(np.float32).reshape(n_p * m, d),
            oracle=q.reshape(-1),
            aspects=aspects,
            score=score,
            completion_tokens=np.maximum(np.rint(np.exp(log_len)), 1).reshape(-1).astype(np.int64),
            prompt_tokens=np.repeat(prompt_tokens, m).astype(np.int64),
            prompt_features=(topic @ world.projection[:k]).astype(np.float32),
        )


def write_auf_pool(
    regime: AUFRegime,
    output: str | Path,
    features_file: str | Path | None = None,
    features_dtype: str = "float32",
    prompt_features: bool = False,
) -> dict[str, object]:
    """Write the pool as Parquet (``.parquet``) chunk by chunk; features in the ``features``
    column, or in ``features_file`` (.npy, ``features_dtype`` float32 or float16) when given;
    with ``prompt_features`` also a ``prompt_features`` column (the prompt-only embedding,
    repeated on each of the prompt's rows).
    Returns a summary (rows, prompts, dim, files, tie share of the judge's scores)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output = Path(output)
    if output.suffix != ".parquet":
        raise ValueError(f"{output}: the auf regime writes Parquet (.parquet)")
    if features_dtype not in ("float32", "float16"):
        raise ValueError(f"features dtype must be float32 or float16 (got {features_dtype})")
    m, d = len(AUF_MODELS), regime.dim
    n_rows = regime.n_prompts * m
    matrix = None
    if features_file is not None:
        features_file = Path(features_file)
        matrix = np.lib.format.open_memmap(features_file.with_name(features_file.name + ".tmp.npy"), mode="w+", dtype=features_dtype, shape=(n_rows, d))
    tmp = output.with_name(output.name + ".tmp")
    writer = None
    row = 0
    ties = pairs = 0
    models = np.asarray(AUF_MODELS, dtype=object)
    try:
        for chunk in auf_chunks(regime):
            n = len(chunk.prompt)
            pid = np.char.add("auf-", np.char.zfill(chunk.prompt.astype(str), 6))
            columns = {
                "prompt_id": pa.array(pid.tolist(), pa.string()),
                "prompt": pa.array([f"Synthetic prompt {p} (001 regime)." for p in chunk.prompt.tolist()], pa.string()),
                "response_id": pa.array([f"{p}-{mdl}" for p, mdl in zip(pid.tolist(), models[chunk.model])], pa.string()),
                "model": pa.array(models[chunk.model].tolist(), pa.string()),
                "response": pa.array([f"Answer of {mdl} to prompt {p}." for p, mdl in zip(chunk.prompt.tolist(), models[chunk.model])], pa.string()),
                "score": pa.array(chunk.score, pa.float64()),
                **{f"score_{a}": pa.array(chunk.aspects[a], pa.float64()) for a in ASPECTS},
                "oracle": pa.array(chunk.oracle, pa.float64()),
                "prompt_tokens": pa.array(chunk.prompt_tokens, pa.int64()),
                "completion_tokens": pa.array(chunk.completion_tokens, pa.int64()),
            }
            if prompt_features:
                per_row = np.repeat(chunk.prompt_features, m, axis=0)  # [n, d]
                columns["prompt_features"] = pa.FixedSizeListArray.from_arrays(pa.array(per_row.reshape(-1), pa.float32()), d).cast(pa.list_(pa.float32()))
            if matrix is None:
                columns["features"] = pa.FixedSizeListArray.from_arrays(pa.array(chunk.features.reshape(-1), pa.float32()), d).cast(pa.list_(pa.float32()))
            else:
                matrix[row : row + n] = chunk.features
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            row += n
            s = chunk.score.reshape(-1, m)  # [P, M]
            ties += int(((s[:, :, None] == s[:, None, :]).sum() - s.size) // 2)
            pairs += s.shape[0] * m * (m - 1) // 2
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    assert writer is not None
    writer.close()
    if matrix is not None and features_file is not None:
        matrix.flush()
        del matrix
        features_file.with_name(features_file.name + ".tmp.npy").replace(features_file)
    tmp.replace(output)
    return {
        "rows": n_rows, "prompts": regime.n_prompts, "candidates": m, "dim": d, "pool": str(output),
        "features": str(features_file) if features_file is not None else "column", "tie_share": ties / max(pairs, 1),
    }
