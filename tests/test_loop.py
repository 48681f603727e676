"""The loop in process: annotation cost per method, judge failures, held-out prompts, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from activepref.config import load_config
from activepref.core.candidates import CandidateTable
from activepref.core.metrics import heldout_accuracy
from activepref.core.runs import run, status
from activepref.core.store import RunStore
from activepref.pools.sources import synthetic_pool, write_pool

TINY_ENN = {"enn.heads": 3, "enn.hidden": 8, "enn.steps": 3}


def _pool(tmp_path: Path, **kw) -> Path:
    pool = synthetic_pool(n_prompts=kw.pop("n_prompts", 20), candidates=6, dim=8, seed=1, min_candidates=kw.pop("min_candidates", 6))
    return write_pool(pool, tmp_path / "pool.parquet")


def _config(pool: Path, **overrides):
    return load_config(None, {"pool": str(pool), "batch_size": 4, "iterations": 2, "eval_fraction": 0.2, **TINY_ENN, **overrides})


@pytest.mark.parametrize(
    ("method", "per_prompt", "options"),
    [
        ("random", 2, {}),
        ("infomax", 2, {}),
        ("dts", 2, {}),
        ("drts", 2, {}),
        ("maxminlcb", 2, {}),
        ("deltaucb", 2, {}),
        ("maxmin", 6, {}),
        ("ultrafeedback", 4, {}),
        ("delta_pair", 0, {"strong": "strong-a", "weak": "weak-a"}),
    ],
)
def test_judge_is_called_only_for_what_the_method_asks(tmp_path: Path, method: str, per_prompt: int, options: dict) -> None:
    cfg = _config(_pool(tmp_path), method=method, method_options=options)
    run(cfg, tmp_path / "run")
    st = status(tmp_path / "run")
    assert st.iterations_done == 2
    assert st.annotations == 2 * 4 * per_prompt  # 2 iterations x 4 prompts x per-prompt cost
    with RunStore.open_readonly(tmp_path / "run") as store:
        rows = store.preference_rows()
        oracle = store.oracle()
    assert all(p.method == method for p in rows)
    if method != "delta_pair":
        assert len(rows) == 8  # continuous scores never tie
        assert all(p.score_chosen > p.score_rejected for p in rows)  # chosen scored higher
    if method == "maxmin":  # best vs worst of every candidate
        assert all(p.score_chosen > p.score_rejected for p in rows)
    del oracle


def test_held_out_prompts_are_never_annotated(tmp_path: Path) -> None:
    cfg = _config(_pool(tmp_path), method="maxmin", iterations=None)
    run(cfg, tmp_path / "run")
    with RunStore.open_readonly(tmp_path / "run") as store:
        held = set(store.eval_prompts())
        _, response_prompt = store.responses()
        scored = store.scores("replay")
        assert len(held) == 4
        assert not any(int(response_prompt[r]) in held for r in scored)
        assert {p.prompt_idx for p in store.preference_rows()}.isdisjoint(held)


def test_missing_scores_are_recorded_failures_never_scored(tmp_path: Path) -> None:
    pool = synthetic_pool(n_prompts=12, candidates=4, dim=8, seed=2)
    pool.scores[::3] = np.nan  # every third candidate has no stored score
    path = write_pool(pool, tmp_path / "pool.parquet")
    cfg = _config(path, method="maxmin", eval_fraction=0.0, iterations=None)
    run(cfg, tmp_path / "run")
    st = status(tmp_path / "run")
    assert st.failures == 16  # 48 candidates, every third missing
    assert st.annotations == 48
    with RunStore.open_readonly(tmp_path / "run") as store:
        failed = store.failures("replay")
        assert set(failed) == set(range(0, 48, 3))
        assert "no stored score" in next(iter(failed.values()))
        for p in store.preference_rows():
            assert p.chosen_idx not in failed and p.rejected_idx not in failed
            assert p.score_chosen is not None and p.score_rejected is not None


def test_random_pairs_with_a_failed_candidate_are_dropped_not_guessed(tmp_path: Path) -> None:
    pool = synthetic_pool(n_prompts=8, candidates=2, dim=8, seed=2)
    pool.scores[0] = np.nan  # prompt 0's only pair cannot be judged
    path = write_pool(pool, tmp_path / "pool.parquet")
    run(_config(path, method="random", eval_fraction=0.0, batch_size=8, iterations=1), tmp_path / "run")
    with RunStore.open_readonly(tmp_path / "run") as store:
        assert len(store.preference_rows()) == 7
        assert 0 not in {p.prompt_idx for p in store.preference_rows()}
        rec = store.iteration(0)
        assert rec is not None
        pair_status = store.conn.execute("SELECT pair_status FROM iterations").fetchone()[0]
    assert '"failed": 1' in pair_status


def test_same_config_and_seed_give_the_same_dataset_other_seed_differs(tmp_path: Path) -> None:
    path = _pool(tmp_path, n_prompts=24)
    rows = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run(_config(path, method="dts", seed=seed, iterations=3), tmp_path / name)
        with RunStore.open_readonly(tmp_path / name) as store:
            rows.append(store.preference_rows())
    assert rows[0] == rows[1]
    assert rows[0] != rows[2]


def test_candidate_table_pads_prompts_with_fewer_candidates() -> None:
    table = CandidateTable.build(np.array([0, 0, 1, 2, 2, 2, 1]), 4)
    assert table.slots.tolist() == [[0, 1, -1], [2, 6, -1], [3, 4, 5], [-1, -1, -1]]
    assert table.mask.sum(axis=1).tolist() == [2, 2, 3, 0]


def test_heldout_accuracy_counts_correctly_ordered_pairs() -> None:
    mean = np.array([0.0, 1.0, 2.0, 3.0])
    pairs = np.array([[1, 0], [2, 1], [0, 3]])  # (better, worse) by the oracle
    assert heldout_accuracy(mean, pairs) == pytest.approx(2 / 3)


def test_the_ensemble_learns_on_the_builtin_pool(tmp_path: Path) -> None:
    """On the shipped pool, eight iterations of DTS lift held-out accuracy well above chance."""
    cfg = load_config(None, {"batch_size": 8, "eval_fraction": 0.2, "enn.lr": 1e-3, "enn.zeta_decay": 0.9, "enn.heads": 8})
    history = run(cfg, tmp_path / "run")
    assert len(history) == 8
    # The last iterations hover around 0.60 (0.59-0.61 depending on float rounding in the feature
    # statistics): judge the plateau, not one iteration's value.
    plateau = np.mean([h["heldout_accuracy"] for h in history[-4:]])
    assert plateau > 0.58 and plateau > history[0]["heldout_accuracy"] + 0.04
    assert history[-1]["mean_chosen_reward"] > history[-1]["mean_rejected_reward"]


class _Crash(Exception):
    """Stands in for a kill at a crash point (the process state is dropped with the store)."""


def _record_fits(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Patch ENN.fit to record a copy of the replay buffer each fit trains on."""
    from activepref.model.enn import EnsembleRewardModel

    seen: list[np.ndarray] = []
    real_fit = EnsembleRewardModel.fit

    def fit(self, features, buffer, *args, **kwargs):
        seen.append(buffer.pairs().copy())
        return real_fit(self, features, buffer, *args, **kwargs)

    monkeypatch.setattr(EnsembleRewardModel, "fit", fit)
    return seen


@pytest.mark.parametrize("method", ["drts", "dopt"])
@pytest.mark.parametrize("point", ["train.mid@3", "annotate.after_commit@2", "select.after_commit@4"])
def test_a_resumed_process_trains_on_the_buffer_of_an_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, point: str) -> None:
    """Issue 11 at the level where the state diverged: every fit after a resume sees the
    replay buffer (same pairs, same order) that the uninterrupted process had."""
    import activepref.core.loop as loop

    pool = _pool(tmp_path, n_prompts=40)
    cfg = _config(pool, method=method, batch_size=6, iterations=6, seed=3)
    seen = _record_fits(monkeypatch)
    run(cfg, tmp_path / "straight")
    straight = list(seen)
    seen.clear()

    name, at = point.split("@")

    def crash(n: str, it: int) -> None:
        if n == name and it == int(at):
            raise _Crash(point)

    monkeypatch.setattr(loop, "crash_point", crash)
    with pytest.raises(_Crash):
        run(cfg, tmp_path / "killed")
    monkeypatch.setattr(loop, "crash_point", lambda n, it: None)
    from activepref.core.runs import resume

    resume(tmp_path / "killed")
    # The killed process trained iterations 0..k-1 (and part of k); the resumed one k..5.
    resumed = seen[-(len(straight) - int(at)) :]
    for it, pairs in zip(range(int(at), len(straight)), resumed):
        assert np.array_equal(pairs, straight[it]), f"iteration {it}: the resumed buffer differs"
    with RunStore.open_readonly(tmp_path / "straight") as a, RunStore.open_readonly(tmp_path / "killed") as b:
        assert a.preference_rows() == b.preference_rows()
        assert np.array_equal(a.replay_pairs(), b.replay_pairs())
        assert np.array_equal(a.replay_pairs(), straight[-1])


def test_labelled_information_is_each_heads_fisher_information():
    """Per-head history for the designs, against explicit per-head, per-pair sums."""
    from activepref.acquisition.comparisons import labelled_information
    from activepref.model.enn import ENNShape, EnsembleRewardModel, forward_heads, last_hidden_heads

    shape = ENNShape(dim=6, heads=3, hidden=5, layers=2)
    model = EnsembleRewardModel(shape, seed=4)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32))  # 4 pairs
    information, differences = labelled_information(model.last_layer_features(x), model.rewards(x).double().numpy())
    assert information.shape == (3, 5, 5) and differences.shape == (3, 4, 5)
    with torch.no_grad():
        hidden = last_hidden_heads(model.params, x, shape).double().numpy()  # [K, 8, h]
        rewards = forward_heads(model.params, x, shape).double().numpy()  # [K, 8]
    assert np.allclose(model.last_layer_features(x), hidden)
    for k in range(3):
        expected = np.zeros((5, 5))
        for j in range(4):
            diff = hidden[k, 2 * j] - hidden[k, 2 * j + 1]
            p = 1.0 / (1.0 + math.exp(-(rewards[k, 2 * j] - rewards[k, 2 * j + 1])))
            expected += p * (1 - p) * np.outer(diff, diff)
            assert np.allclose(differences[k, j], diff)
        assert np.allclose(information[k], expected, rtol=1e-6, atol=1e-9)


def test_monitored_prompts_are_a_seeded_sample_of_the_held_out_ones():
    from activepref.core.candidates import monitored_prompts

    held_out = list(range(3, 400, 3))  # 133 prompts
    sample = monitored_prompts(held_out, 50, seed=7)
    assert len(sample) == 50 == len(set(sample)) and set(sample) <= set(held_out) and sample == sorted(sample)
    assert monitored_prompts(held_out, 50, seed=7) == sample  # resumable: same draw every time
    assert monitored_prompts(held_out, 50, seed=8) != sample
    assert monitored_prompts(held_out, None, seed=7) == held_out == monitored_prompts(held_out, 500, seed=7)
