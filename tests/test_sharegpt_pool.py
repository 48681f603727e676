"""Checks on the ShareGPT benchmark pools (benchmarks/pools/sharegpt_pool.parquet, 32 prompts, and
sharegpt_pool_128.parquet, 128 prompts).

The file is built by scripts/build_sharegpt_pool.py (see benchmarks/pools/README.md): real
ShareGPT prompts, SmolLM2 candidates plus the dump's own answers, MiniLM features and Likert
scores from a local Qwen2.5-Coder-0.5B judge. It lives outside the package (no licence stated).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from activepref.config import load_config  # noqa: E402
from activepref.core.runs import run, status  # noqa: E402
from activepref.pools.reader import read_pool  # noqa: E402
from activepref.pools.records import ASPECTS

POOLS = Path(__file__).resolve().parents[1] / "benchmarks" / "pools"
FILES = ["sharegpt_pool.parquet", "sharegpt_pool_128.parquet"]
MIN_PROMPTS = 24


@pytest.fixture(scope="module", params=FILES)
def pool(request):
    path = POOLS / request.param
    if not path.is_file():
        pytest.skip(f"missing {path}; run scripts/build_sharegpt_pool.py")
    return read_pool(path)


@pytest.mark.parametrize("name", FILES)
def test_file_is_small(name) -> None:
    if not (POOLS / name).is_file():
        pytest.skip("pool not built")
    assert (POOLS / name).stat().st_size <= 5_000_000


def test_counts(pool) -> None:
    assert len(pool.prompts) >= MIN_PROMPTS
    assert len(pool.responses) == len(pool.prompt_index) == pool.features.shape[0]
    per_prompt = Counter(pool.prompt_index.tolist())
    assert set(per_prompt) == set(range(len(pool.prompts)))
    assert min(per_prompt.values()) >= 2
    models = Counter(r.model for r in pool.responses)
    assert "sharegpt-answer" in models
    assert sum(m.startswith("smollm2-135m") for m in models) >= 2
    assert len({r.id for r in pool.responses}) == len(pool.responses)


def test_features(pool) -> None:
    assert pool.features.dtype == np.float32
    assert pool.dim == 384
    assert np.isfinite(pool.features).all()
    norms = np.linalg.norm(pool.features, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)  # MiniLM sentence embeddings are L2-normalised


def test_scores(pool) -> None:
    assert pool.oracle is None  # the judge score is the reference
    assert np.isfinite(pool.scores).all()
    assert ((pool.scores >= 1.0) & (pool.scores <= 5.0)).all()
    assert set(pool.aspect_scores) == set(ASPECTS)
    aspects = np.stack([pool.aspect_scores[a] for a in ASPECTS])
    assert ((aspects >= 1.0) & (aspects <= 5.0)).all()
    np.testing.assert_allclose(pool.scores, aspects.mean(axis=0), atol=1e-9)
    assert pool.scores.std() > 0.05  # the judge separates candidates


def test_principles(pool) -> None:
    for r in pool.responses:
        if r.model == "sharegpt-answer":
            assert r.principle is None
        else:
            assert r.principle in ASPECTS


def test_tiny_dts_run(pool, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "pool": str(pool.source),
            "method": "dts",
            "batch_size": 8,
            "iterations": 2,
            "eval_fraction": 0.2,
            "enn.heads": 3,
            "enn.hidden": 8,
            "enn.steps": 3,
        },
    )
    history = run(cfg, tmp_path / "run")
    assert len(history) == 2
    st = status(tmp_path / "run")
    assert st.iterations_done == 2
    assert st.annotations == 2 * 8 * 2  # dts: two candidates judged per prompt
