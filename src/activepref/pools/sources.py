"""Where candidate pools come from: the shipped built-in pool and synthetic oracle pools.

The built-in pool (``resources/builtin_pool.parquet``, rebuilt by ``scripts/build_builtin_pool.py``)
holds the 80 MT-bench questions with 5-8 real-text candidates each, real MiniLM features
and a hidden oracle reward; its ``score`` column is the oracle seen through a noisy judge.

Synthetic pools scale to any size: features from a seeded Gaussian mixture ("prompt
topics"), a hidden oracle given by a random two-layer teacher network of the features,
and judge scores = oracle + Gaussian noise mapped onto the 1-5 Likert range.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from activepref.config import BUILTIN_POOL
from activepref.pools.reader import Pool, read_pool
from activepref.pools.records import Prompt, Response

SYNTHETIC_MODELS = ("strong-a", "strong-b", "mid-a", "mid-b", "weak-a", "weak-b")


def builtin_pool_path() -> Path:
    return Path(str(resources.files("activepref") / "resources" / "builtin_pool.parquet"))


_REUSE_LAST = False
_last: tuple[tuple[object, ...], Pool] | None = None


def reuse_last_pool(enabled: bool = True) -> None:
    """Let ``load_pool`` hand back the pool it read last while its files are unchanged
    (same path, size and mtime). For processes that create many runs from one pool, such as
    the bench's workers: a 4,096 x 30 pool takes ~6 s to read and validate. The pool is
    shared, so its arrays are made read-only."""
    global _REUSE_LAST, _last
    _REUSE_LAST, _last = enabled, None


def _file_key(path: str | Path | None) -> tuple[object, ...]:
    if path is None:
        return (None,)
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def load_pool(source: str, features: str | None = None) -> Pool:
    """``builtin`` or a path to a JSONL/Parquet pool (with an optional .npy feature file)."""
    global _last
    if source == BUILTIN_POOL:
        path, features = builtin_pool_path(), None
    else:
        path = Path(source)
    if not _REUSE_LAST or not path.exists() or (features is not None and not Path(features).exists()):
        return read_pool(path, features)  # (read_pool names a missing file)
    key = (*_file_key(path), *_file_key(features))
    if _last is None or _last[0] != key:
        pool = read_pool(path, features)
        for arr in (pool.prompt_index, pool.features, pool.scores, pool.oracle, pool.prompt_features, *pool.aspect_scores.values()):
            if isinstance(arr, np.ndarray):
                arr.flags.writeable = False
        _last = (key, pool)
    return _last[1]


def synthetic_pool(
    n_prompts: int = 512,
    candidates: int = 8,
    dim: int = 64,
    noise: float = 0.3,
    seed: int = 0,
    min_candidates: int | None = None,
) -> Pool:
    """A pool whose hidden reward is a nonlinear function of the features.

    Each prompt has a topic centre; a response's features are centre + model offset +
    noise, so responses of one model share a direction (as real models do). The oracle is
    a random tanh network of the features plus a per-model quality shift; the stored
    ``score`` adds N(0, noise^2) judge noise on the oracle's standardised scale.
    """
    rng = np.random.default_rng(seed)
    lo = candidates if min_candidates is None else min_candidates
    counts = rng.integers(lo, candidates + 1, size=n_prompts)
    topics = rng.normal(size=(max(n_prompts // 8, 1), dim))
    model_dirs = rng.normal(scale=0.5, size=(len(SYNTHETIC_MODELS), dim))
    quality = np.linspace(1.0, -1.0, len(SYNTHETIC_MODELS))
    w1 = rng.normal(size=(dim, 32)) / np.sqrt(dim)
    w2 = rng.normal(size=32) / np.sqrt(32)
    prompts, responses, prompt_index, feats, models = [], [], [], [], []
    for p in range(n_prompts):
        pid = f"syn-{p:05d}"
        topic = int(rng.integers(len(topics)))
        prompts.append(Prompt(pid, f"Synthetic prompt {p} about topic {topic}."))
        centre = topics[topic] + rng.normal(scale=0.3, size=dim)
        for j in range(counts[p]):
            mdl = int(rng.integers(len(SYNTHETIC_MODELS)))
            feats.append(centre + model_dirs[mdl] + rng.normal(scale=0.5, size=dim))
            models.append(mdl)
            responses.append(Response(f"{pid}-r{j}", pid, SYNTHETIC_MODELS[mdl], f"Synthetic response {j} to prompt {p} by {SYNTHETIC_MODELS[mdl]}."))
            prompt_index.append(p)
    x = np.asarray(feats, dtype=np.float64)
    raw = np.tanh(x @ w1) @ w2 + 0.5 * quality[np.asarray(models)]
    oracle = (raw - raw.mean()) / raw.std()
    judged = oracle + rng.normal(scale=noise, size=len(oracle))
    scores = np.clip(3.0 + judged, 1.0, 5.0)  # Likert scale, centre 3
    return Pool(prompts, responses, np.asarray(prompt_index), x.astype(np.float32), scores, {}, oracle, source=f"synthetic(seed={seed})")


def write_pool(pool: Pool, path: str | Path, features_file: str | Path | None = None, features_dtype: str = "float32") -> Path:
    """Write a pool as Parquet (features as a list column) or JSONL, readable by ``read_pool``;
    with ``features_file``, the features go to that .npy instead (``features_dtype`` float16 or
    float32: what a paper-scale pool ships, read with ``--features``)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    rows = {
        "prompt_id": [pool.prompts[i].id for i in pool.prompt_index],
        "prompt": [pool.prompts[i].text for i in pool.prompt_index],
        "response_id": [r.id for r in pool.responses],
        "model": [r.model for r in pool.responses],
        "response": [r.text for r in pool.responses],
        "principle": [r.principle for r in pool.responses],
        "score": [None if np.isnan(s) else float(s) for s in pool.scores],
    }
    if pool.oracle is not None:
        rows["oracle"] = [float(o) for o in pool.oracle]
    if pool.prompt_features is not None:
        rows["prompt_features"] = [[float(v) for v in pool.prompt_features[i]] for i in pool.prompt_index]
    if features_file is not None:
        np.save(features_file, np.asarray(pool.features, dtype=features_dtype))
    if path.suffix == ".parquet":
        if "prompt_features" in rows:
            rows["prompt_features"] = pa.array(rows["prompt_features"], type=pa.list_(pa.float32()))
        if features_file is None:
            rows["features"] = pa.array(list(pool.features), type=pa.list_(pa.float32()))
        pq.write_table(pa.table(rows), path)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            for i in range(len(pool.responses)):
                row = {k: v[i] for k, v in rows.items()}
                if "prompt_features" in row:
                    row["prompt_features"] = [round(v, 6) for v in row["prompt_features"]]
                if features_file is None:
                    row["features"] = [round(float(v), 6) for v in pool.features[i]]
                fh.write(json.dumps(row) + "\n")
    return path
