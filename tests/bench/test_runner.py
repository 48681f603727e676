"""A tiny end-to-end bench: 3 methods x 2 seeds in 2 processes, then a rerun that does no work."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from activepref.bench.runner import RESULT_COLUMNS, iterations_for, plan_runs, read_calls, run_bench, submission_order
from activepref.core.store import STATUS_TRAINED, RunStore
from activepref.errors import ConfigError
from activepref.pools.sources import synthetic_pool, write_pool

TINY = {"enn.heads": 4, "enn.hidden": 8, "enn.steps": 5, "enn.lr": 1e-2, "eval_fraction": 0.25}
METHODS = ["random", "dts", "maxdiff"]


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pool(synthetic_pool(n_prompts=40, candidates=5, dim=8), tmp_path_factory.mktemp("pool") / "pool.parquet")


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """mtime and size of every file a run or its evaluation writes (not SQLite's -wal/-shm/lock)."""
    return {
        str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in (out / "runs").rglob("*")
        if p.is_file() and p.name not in ("lock", "run.sqlite-wal", "run.sqlite-shm")
    }


def test_iterations_for_budget() -> None:
    assert iterations_for(16, 8) == 2
    assert iterations_for(17, 8) == 3
    assert iterations_for(3, 8) == 1


def test_plan_rejects_reserved_overrides_and_unknown_methods(pool_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method"):
        plan_runs(str(pool_path), ["random"], 1, 8, tmp_path, overrides={"method": "dts"})
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        plan_runs(str(pool_path), ["random"], 1, 8, tmp_path, overrides={"keep_checkpoints": 1})
    with pytest.raises(ConfigError, match="unknown method"):
        plan_runs(str(pool_path), ["nope"], 1, 8, tmp_path)
    runs = plan_runs(str(pool_path), ["random", "maxdiff"], [3, 5], 20, tmp_path, batch_size=8, overrides=TINY)
    assert [r.name for r in runs] == ["random-seed3", "random-seed5", "maxdiff-seed3", "maxdiff-seed5"]
    assert all(r.overrides["iterations"] == 3 and r.overrides["keep_checkpoints"] == 1 for r in runs)
    assert runs[2].overrides["design_budget"] == 8 and "design_budget" not in runs[0].overrides


def test_the_designs_that_read_phi_are_handed_out_first(pool_path: Path, tmp_path: Path) -> None:
    """Longest runs first: coreset and dopt read Φ, entropy is a design that does not."""
    runs = plan_runs(str(pool_path), ["random", "entropy", "coreset", "dts", "dopt"], [0, 1], 8, tmp_path, overrides=TINY)
    order = [r.name for r in submission_order(runs)]
    assert order == [
        "coreset-seed0", "coreset-seed1", "dopt-seed0", "dopt-seed1",
        "random-seed0", "random-seed1", "entropy-seed0", "entropy-seed1", "dts-seed0", "dts-seed1",
    ]
    assert sorted(order) == sorted(r.name for r in runs)


def test_plan_passes_each_method_its_own_options(pool_path: Path, tmp_path: Path) -> None:
    opts = {"ultrafeedback": {"sample_size": 3}, "dts": {"maxiter": 5}}
    runs = plan_runs(str(pool_path), ["random", "ultrafeedback", "dts"], 1, 8, tmp_path, overrides=TINY, method_options=opts)
    got = {r.method: r.overrides.get("method_options") for r in runs}
    assert got == {"random": None, "ultrafeedback": {"sample_size": 3}, "dts": {"maxiter": 5}}
    with pytest.raises(ConfigError, match="not among the methods"):
        plan_runs(str(pool_path), ["random"], 1, 8, tmp_path, method_options={"dts": {"maxiter": 5}})
    with pytest.raises(ConfigError, match="sample_size|option"):
        plan_runs(str(pool_path), ["ultrafeedback"], 1, 8, tmp_path, method_options={"ultrafeedback": {"bogus": 1}})


def test_bench_end_to_end_and_rerun_is_a_no_op(pool_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    events = []
    report = run_bench(str(pool_path), METHODS, 2, budget=16, out=out, batch_size=8, workers=2, overrides=TINY, progress=events.append)
    assert report == out
    assert sorted(e.state for e in events) == ["finished"] * 6

    with open(out / "results.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
    assert tuple(header[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    keys = [(r["method"], int(r["seed"]), int(r["iteration"])) for r in rows]
    assert sorted(keys) == sorted((m, s, i) for m in METHODS for s in (0, 1) for i in range(2))
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1
        assert 0 <= float(r["spearman_loss"]) <= 2
        assert r["best_of_n"] != "" and int(r["annotations"]) > 0
        assert int(r["pairs"]) <= 8 * (int(r["iteration"]) + 1)
        # two iterations < 6 checkpoints: the dataset so far is evaluated after every iteration
        assert int(r["prompts_consumed"]) == 8 * (int(r["iteration"]) + 1)
        assert 0 <= float(r["rm_accuracy"]) <= 1 and 0 <= float(r["rm_accuracy_hard"]) <= 1
        assert 0 <= float(r["label_accuracy"]) <= 1

    # every iteration was evaluated from its checkpoint, then only the newest was kept; the
    # recomputed accuracy is the loop's own
    for m in METHODS:
        for s in (0, 1):
            store = RunStore.open_readonly(out / "runs" / f"{m}-seed{s}")
            try:
                recs = [rec for rec in store.iterations() if rec.status == STATUS_TRAINED]
                assert len(recs) == 2
                assert [store.checkpoint_path(rec.iteration).exists() for rec in recs] == [False, True]
                assert all(int(r["checkpoint"]) == 1 for r in rows)
                for rec in recs:
                    row = next(r for r in rows if (r["method"], int(r["seed"]), int(r["iteration"])) == (m, s, rec.iteration))
                    assert float(row["accuracy"]) == pytest.approx(rec.metrics["heldout_accuracy"])
                    assert int(row["annotations"]) == rec.metrics["annotations"]
                    assert float(row["label_accuracy"]) == pytest.approx(rec.metrics["pair_agreement"])  # same pairs, same oracle
            finally:
                store.close()

    # one features file for the whole bench, hard-linked into every run
    run_features = [out / "runs" / f"{m}-seed{s}" / "features.npy" for m in METHODS for s in (0, 1)]
    assert len({f.stat().st_ino for f in run_features}) == 1 and len(list((out / "features").iterdir())) == 1

    for name in ("summary.md", "curves.png", "table21.png", "dataset_curves.png"):
        assert (out / name).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "a fresh reward model trained on it (as seed 001, Table 22)" in summary
    assert "### Efficiency on `rm_accuracy` (paired seeds" in summary and "mean curve gap" in summary
    assert "the ENN's held-out metrics each iteration on" in summary
    assert "| random | 2/2 |" in summary  # random reaches its own final value (at the latest at its end)
    assert "annotations to reach random's final accuracy" in summary
    assert all(f"| {m} |" in summary for m in METHODS)

    # model-pair coverage: recomputed from the run stores by hand
    assert "### Which models the pairs compare" in summary
    for m in METHODS:
        distinct, entropy = [], []
        for s in (0, 1):
            store = RunStore.open_readonly(out / "runs" / f"{m}-seed{s}")
            try:
                responses, rp = store.responses()
                counts: dict[frozenset, int] = {}
                for p in store.preference_rows():
                    if rp[p.rejected_idx] == p.prompt_idx:
                        key = frozenset((responses[p.chosen_idx].model, responses[p.rejected_idx].model))
                        counts[key] = counts.get(key, 0) + 1
            finally:
                store.close()
            n = sum(counts.values())
            distinct.append(len(counts))
            entropy.append(-sum(v / n * math.log2(v / n) for v in counts.values()))
        row = next(line for line in summary.splitlines() if line.startswith(f"| {m} | ") and line.count("|") == 5)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(sum(distinct) / 2, abs=0.51)
        assert float(cells[2]) == pytest.approx(sum(entropy) / 2, abs=0.006)

    before_files, before_csv = _snapshot(out), (out / "results.csv").read_bytes()
    events.clear()
    run_bench(str(pool_path), METHODS, 2, budget=16, out=out, batch_size=8, workers=2, overrides=TINY, progress=events.append)
    assert sorted(e.state for e in events) == ["skipped"] * 6
    assert _snapshot(out) == before_files
    first, second = read_calls(out)  # one record per call; the report lists the call that ran
    assert (first["finished"], first["skipped"], first["workers"]) == (6, 0, 2) and first["wall_s"] > 0
    assert (second["finished"], second["skipped"]) == (0, 6)
    walls = [line for line in (out / "summary.md").read_text().splitlines() if "min wall, 2 workers" in line]
    assert len(walls) == 1 and "6 runs ran or resumed" in walls[0]
    assert (out / "results.csv").read_bytes() == before_csv

    # a different budget on the same directory is refused rather than silently mixed
    from activepref.errors import ActivePrefError

    with pytest.raises(ActivePrefError, match="another configuration"):
        run_bench(str(pool_path), ["random"], [0], budget=24, out=out, batch_size=8, workers=1, overrides=TINY)


def test_dataset_checkpoints_cover_a_sixth_a_third_a_half_and_all() -> None:
    from activepref.bench.runner import dataset_checkpoints

    assert dataset_checkpoints(4) == {0, 1, 2, 3}
    assert dataset_checkpoints(12) == {1, 3, 5, 7, 9, 11}
    got = dataset_checkpoints(256)  # 4,096 prompts in batches of 16
    assert {42, 85, 127, 255} <= got and len(got) == 6  # ceil(256/6)-1, ceil(256/3)-1, 128-1, 256-1


def test_model_metrics_the_loop_stores_match_the_checkpoints_prediction(pool_path: Path, tmp_path: Path) -> None:
    """The bench reads spearman/best-of-N from the loop's iteration metrics; for runs without
    them (older runs) it predicts from the checkpoints. Both paths give the same numbers."""
    import json
    import shutil

    from activepref.bench.runner import evaluate_run
    from activepref.config import RunConfig
    from activepref.core.runs import run

    config = RunConfig(pool=str(pool_path), method="dts", seed=3, batch_size=8, iterations=3, keep_checkpoints=3,
                       eval_fraction=0.25, enn={"heads": 4, "hidden": 8, "steps": 5, "lr": 1e-2})
    run(config, tmp_path / "new")
    shutil.copytree(tmp_path / "new", tmp_path / "old")  # before evaluate_run prunes checkpoints
    store = RunStore.open(tmp_path / "old")
    try:
        for it, text in store.conn.execute("SELECT iteration, metrics FROM iterations").fetchall():
            m = {k: v for k, v in json.loads(text).items() if not k.startswith("heldout_") or k == "heldout_accuracy"}
            store.conn.execute("UPDATE iterations SET metrics = ? WHERE iteration = ?", (json.dumps(m), it))
        store.conn.commit()
    finally:
        store.close()
    stored, predicted = evaluate_run(tmp_path / "new", "dts", 3), evaluate_run(tmp_path / "old", "dts", 3)
    assert len(stored) == len(predicted) == 3
    for a, b in zip(stored, predicted):
        assert a["checkpoint"] == b["checkpoint"] == 1
        for key in ("accuracy", "spearman_loss", "best_of_n", "best_of_n_regret", "best_of_n_normalized", "oracle_best"):
            assert a[key] is not None and a[key] == pytest.approx(b[key], rel=1e-6), key


def test_share_features_links_equal_bytes_and_keeps_different_ones(tmp_path: Path) -> None:
    import numpy as np

    from activepref.bench.runner import share_features

    a, b = np.arange(12, dtype=np.float32).reshape(4, 3), np.ones((4, 3), dtype=np.float32)
    dirs = {}
    for name, values in (("one", a), ("two", a), ("three", b)):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        np.save(dirs[name] / "features.npy", values)
    shared = tmp_path / "features"
    assert all(share_features(d, shared) for d in dirs.values())
    assert share_features(dirs["one"], shared)  # again: already the shared file
    assert len(list(shared.iterdir())) == 2
    assert (dirs["one"] / "features.npy").samefile(dirs["two"] / "features.npy")
    assert not (dirs["one"] / "features.npy").samefile(dirs["three"] / "features.npy")
    assert np.array_equal(np.load(dirs["two"] / "features.npy"), a) and np.array_equal(np.load(dirs["three"] / "features.npy"), b)
    assert not share_features(tmp_path / "missing", shared)


def test_a_run_of_an_older_bench_that_kept_every_checkpoint_is_resumed(pool_path: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "bench"
    run_bench(str(pool_path), ["random"], 1, budget=16, out=out, batch_size=8, workers=1, overrides=TINY)
    store = RunStore.open(out / "runs" / "random-seed0")
    try:
        (text,) = store.conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        config = json.loads(text)
        config["keep_checkpoints"] = 3  # what the bench used to set (iterations + 1)
        store.conn.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(config),))
        store.conn.commit()
    finally:
        store.close()
    events = []
    run_bench(str(pool_path), ["random"], 1, budget=16, out=out, batch_size=8, workers=1, overrides=TINY, progress=events.append)
    assert [e.state for e in events] == ["skipped"]
