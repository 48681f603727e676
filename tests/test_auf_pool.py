"""`activepref make-pool --regime auf`: pools shaped like seed 001's (30 models on a quality
ladder, one candidate each per prompt, four aspects judged 1-5 and averaged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import one_torch_thread, wide_consoles  # noqa: F401 - autouse fixtures
from typer.testing import CliRunner

from activepref.cli import app
from activepref.pools.auf import AUF_MODELS, AUFRegime, auf_chunks, write_auf_pool
from activepref.pools.reader import read_pool
from activepref.pools.records import ASPECTS

runner = CliRunner()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    path = tmp_path_factory.mktemp("auf") / "auf.parquet"
    write_auf_pool(AUFRegime(n_prompts=400, dim=96, seed=3), path)
    return read_pool(path)


def test_every_prompt_has_one_candidate_from_each_of_the_30_models(pool) -> None:
    assert len(AUF_MODELS) == 30 and len(set(AUF_MODELS)) == 30
    assert len(pool.prompts) == 400 and len(pool.responses) == 400 * 30 and pool.features.shape == (12_000, 96)
    models = np.array([r.model for r in pool.responses]).reshape(400, 30)
    assert all(sorted(row) == sorted(AUF_MODELS) for row in models)
    assert np.array_equal(pool.prompt_index, np.repeat(np.arange(400), 30))


def test_the_judge_scores_four_aspects_on_1_to_5_and_averages_them(pool) -> None:
    assert set(pool.aspect_scores) == set(ASPECTS)
    stacked = np.stack([pool.aspect_scores[a] for a in ASPECTS])  # [4, n]
    assert np.all(stacked == np.rint(stacked)) and stacked.min() >= 1 and stacked.max() <= 5
    np.testing.assert_allclose(pool.scores, stacked.mean(axis=0))
    s = pool.scores.reshape(400, 30)
    tie_share = ((s[:, :, None] == s[:, None, :]).sum() - s.size) / (400 * 30 * 29)
    assert 0.01 < tie_share < 0.5  # discrete scores: ties happen, but the judge still ranks
    assert np.corrcoef(pool.scores, pool.oracle)[0, 1] > 0.7


def test_the_ladder_orders_the_models_and_the_rest_varies_within_a_model(pool) -> None:
    models = np.array([r.model for r in pool.responses])
    means = np.array([pool.oracle[models == m].mean() for m in AUF_MODELS])
    ranks = np.argsort(np.argsort(-means))
    assert np.corrcoef(ranks, np.arange(30))[0, 1] > 0.95  # strongest first, as listed
    within = np.mean([pool.oracle[models == m].std() for m in AUF_MODELS])
    assert within > 0.5  # difficulty, interaction, the response's own quality, the hidden part


def test_features_explain_much_but_not_all_of_the_quality(pool) -> None:
    """A least-squares fit on the features (plus their squares) leaves the hidden part unexplained."""
    x = np.hstack([pool.features, pool.features**2, np.ones((len(pool.features), 1))])
    train = slice(0, 9000)
    coef, *_ = np.linalg.lstsq(x[train], pool.oracle[train], rcond=None)
    pred = x[9000:] @ coef
    r2 = 1 - np.var(pool.oracle[9000:] - pred) / np.var(pool.oracle[9000:])
    assert 0.3 < r2 < 0.97


def test_the_same_regime_gives_the_same_pool_and_another_seed_another(tmp_path: Path) -> None:
    a = list(auf_chunks(AUFRegime(n_prompts=50, dim=8, seed=1), chunk_prompts=16))
    b = list(auf_chunks(AUFRegime(n_prompts=50, dim=8, seed=1), chunk_prompts=16))
    c = list(auf_chunks(AUFRegime(n_prompts=50, dim=8, seed=2), chunk_prompts=16))
    assert [len(x.prompt) for x in a] == [480, 480, 480, 60]
    assert all(np.array_equal(x.features, y.features) and np.array_equal(x.score, y.score) for x, y in zip(a, b))
    assert not np.array_equal(a[0].oracle, c[0].oracle)


def test_cli_writes_a_features_file_in_float16_that_a_run_reads(tmp_path: Path) -> None:
    out, npy = tmp_path / "auf.parquet", tmp_path / "auf.npy"
    result = runner.invoke(app, ["make-pool", "--regime", "auf", "-o", str(out), "--prompts", "40", "--dim", "16",
                                 "--features-file", str(npy), "--features-dtype", "float16", "--noise", "1.0"])
    assert result.exit_code == 0, result.output
    assert "40 prompts x 30 models" in result.output and "tie on the judge score" in result.output
    matrix = np.load(npy)
    assert matrix.dtype == np.float16 and matrix.shape == (1200, 16)
    pool = read_pool(out, npy)
    assert pool.features.dtype == np.float16 and pool.feature_scan is not None and pool.oracle is not None  # read in place
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"pool: {out}\nfeatures: {npy}\nmethod: drts\nbatch_size: 8\niterations: 2\nenn: {{heads: 3, hidden: 8, steps: 5}}\n")
    result = runner.invoke(app, ["run", "-c", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(app, ["status", str(tmp_path / "run"), "--json"]).stdout)
    assert status["iterations_done"] == 2 and status["pairs"] >= 10  # 16 prompts, some pairs tie
    assert not (tmp_path / "run" / "features.npy").exists()  # the run reads the float16 file where it lies


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--candidates", "12"], "one candidate from each of its 30 models"),
        (["--regime", "magic"], "--regime must be 'synthetic' or 'auf'"),
        (["--features-dtype", "int8"], "float32 or float16"),
        (["--noise", "-1"], "noise must be a finite number >= 0"),
    ],
)
def test_cli_refuses_bad_auf_options(tmp_path: Path, args: list[str], message: str) -> None:
    base = ["make-pool", "-o", str(tmp_path / "p.parquet"), "--prompts", "4", "--dim", "4"]
    if "--regime" not in args:
        base += ["--regime", "auf"]
    if args[0] == "--features-dtype":
        base += ["--features-file", str(tmp_path / "f.npy")]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "p.parquet").exists()


def test_prompt_features_are_the_prompt_part_of_the_features(tmp_path: Path) -> None:
    """--prompt-features adds the prompt-only embedding without changing anything else."""
    regime = AUFRegime(n_prompts=50, dim=64, seed=1)
    plain, with_prompts = tmp_path / "plain.parquet", tmp_path / "prompts.parquet"
    write_auf_pool(regime, plain)
    result = runner.invoke(app, ["make-pool", "--regime", "auf", "-o", str(with_prompts), "--prompts", "50", "--dim", "64",
                                 "--seed", "1", "--prompt-features"])
    assert result.exit_code == 0, result.output
    a, b = read_pool(plain), read_pool(with_prompts)
    assert a.prompt_features is None and b.prompt_features.shape == (50, 64)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.oracle, b.oracle)
    # a prompt's 30 candidates share its embedding's direction more than another prompt's do
    x = a.features.reshape(50, 30, 64).mean(axis=1)
    own = np.einsum("pd,pd->p", x, b.prompt_features) / (np.linalg.norm(x, axis=1) * np.linalg.norm(b.prompt_features, axis=1))
    other = np.einsum("pd,pd->p", x, np.roll(b.prompt_features, 1, axis=0)) / (
        np.linalg.norm(x, axis=1) * np.linalg.norm(np.roll(b.prompt_features, 1, axis=0), axis=1))
    assert own.mean() > 0.5 > other.mean()
