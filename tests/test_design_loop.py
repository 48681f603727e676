"""Batch designs inside the loop: several comparisons per batch, shared responses judged
once, cross-prompt comparisons kept in the store but not exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activepref.config import load_config
from activepref.core.export import preference_records
from activepref.core.runs import run, status
from activepref.core.store import RunStore
from activepref.pools.sources import synthetic_pool, write_pool

DESIGNS = ["dopt", "pa_dopt", "xtx", "entropy", "maxdiff", "coreset", "bald", "batchbald", "balpm"]


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pool = synthetic_pool(n_prompts=30, candidates=6, dim=12, seed=4, min_candidates=3)
    return write_pool(pool, tmp_path_factory.mktemp("designs") / "pool.parquet")


def _cfg(pool: Path, method: str, **extra):
    return load_config(None, {
        "pool": str(pool), "method": method, "batch_size": 6, "iterations": 2, "eval_fraction": 0.2,
        "enn.heads": 4, "enn.hidden": 8, "enn.steps": 5, **extra,
    })


@pytest.mark.parametrize("method", DESIGNS)
def test_design_acquires_its_budget_of_comparisons(tmp_path: Path, pool_path: Path, method: str) -> None:
    run(_cfg(pool_path, method, design_budget=5), tmp_path / "run")
    with RunStore.open_readonly(tmp_path / "run") as store:
        proposals = [rec.proposal for rec in store.iterations()]
        assert all(p is not None and p["kind"] == "design" and len(p["pairs"]) == 5 for p in proposals)
        judged = set(store.scores("replay"))
        for p in proposals:
            assert {r for pair in p["pairs"] for r in pair} <= judged  # both sides of each comparison judged
            _, response_prompt = store.responses()
            assert all(response_prompt[a] == response_prompt[b] for a, b in p["pairs"])  # in-prompt by default
        rows = store.preference_rows()
    st = status(tmp_path / "run")
    assert st.annotations == len(judged) <= 2 * 10  # a response shared by two comparisons is judged once
    assert 0 < len(rows) <= 10 and all(p.score_chosen > p.score_rejected for p in rows)


def test_cross_prompt_comparisons_train_but_are_not_exported(tmp_path: Path, pool_path: Path) -> None:
    run(_cfg(pool_path, "maxdiff", design_budget=12, cross_prompt=True, iterations=1), tmp_path / "run")
    with RunStore.open_readonly(tmp_path / "run") as store:
        _, response_prompt = store.responses()
        rows = store.preference_rows()
        cross = [p for p in rows if response_prompt[p.rejected_idx] != p.prompt_idx]
        assert cross, "maxdiff over cross-prompt pairs should pick some cross-prompt comparisons"
        exported = preference_records(store)
    assert len(exported) == len(rows) - len(cross)
    assert all(np.isfinite(r["score_chosen"]) for r in exported)


def test_cli_cross_prompt_flag_reaches_the_stored_config(tmp_path: Path, pool_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from activepref.cli import app

    result = CliRunner().invoke(app, [
        "run", "--pool", str(pool_path), "--method", "maxdiff", "--cross-prompt", "--out", str(tmp_path / "r"),
        "--batch-size", "6", "--iterations", "1",
    ])
    assert result.exit_code == 0, result.output
    with RunStore.open_readonly(tmp_path / "r") as store:
        assert json.loads(store.meta("config") or "{}")["cross_prompt"] is True


def _balpm_inputs(monkeypatch: pytest.MonkeyPatch, cfg, run_dir: Path) -> list:
    """Run balpm and capture the ComparisonSet the loop hands it at every iteration."""
    from activepref.acquisition import bayesian

    seen = []
    original = bayesian.balpm_select

    def spy(*args, **kwargs):
        seen.append((args[2].copy(), args[3].copy(), None if kwargs.get("pool_features") is None else kwargs["pool_features"].copy()))
        return original(*args, **kwargs)

    monkeypatch.setattr(bayesian, "balpm_select", spy)
    run(cfg, run_dir)
    return seen


def test_balpm_sees_the_whole_unlabelled_pool_and_candidate_means(tmp_path: Path, pool_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prompt-only features a prompt's feature is the mean of its candidates'
    (standardised) features; the pool neighbours are the training prompts of later batches."""
    from activepref.core.candidates import load_features

    cfg = _cfg(pool_path, "balpm", iterations=3)
    seen = _balpm_inputs(monkeypatch, cfg, tmp_path / "run")
    with RunStore.open_readonly(tmp_path / "run") as store:
        order = store.train_prompt_order()
        matrix = load_features(store, True)
        feats = matrix[np.arange(len(matrix))].double().numpy()
        _, response_prompt = store.responses()
    means = np.stack([feats[response_prompt == p].mean(axis=0) for p in range(response_prompt.max() + 1)])
    assert len(seen) == 3
    for it, (batch, acquired, pool) in enumerate(seen):
        assert np.allclose(batch, means[order[it * 6 : (it + 1) * 6]])
        assert np.allclose(pool, means[order[(it + 1) * 6 :]])  # every later training prompt
        assert len(acquired) <= 6 * it  # prompts of earlier batches with a pair


def test_balpm_uses_a_pools_prompt_only_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from activepref.pools.reader import read_pool

    pool = synthetic_pool(n_prompts=24, candidates=4, dim=8, seed=2)
    pool.prompt_features = np.random.default_rng(0).normal(size=(24, 3)).astype(np.float32)
    path = write_pool(pool, tmp_path / "pool.parquet")
    assert np.allclose(read_pool(path).prompt_features, pool.prompt_features)
    seen = _balpm_inputs(monkeypatch, _cfg(path, "balpm"), tmp_path / "run")
    with RunStore.open_readonly(tmp_path / "run") as store:
        order = store.train_prompt_order()
        assert np.allclose(store.prompt_features(), pool.prompt_features)
    batch, _, rest = seen[0]
    assert batch.shape == (6, 3) and np.allclose(batch, pool.prompt_features[order[:6]])
    assert np.allclose(rest, pool.prompt_features[order[6:]])
