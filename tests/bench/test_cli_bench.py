"""`activepref bench` through the CLI: the report files and the results.csv contract."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from activepref.cli import app
from activepref.pools.sources import synthetic_pool, write_pool


def test_bench_command_writes_the_report(tmp_path: Path) -> None:
    pool = write_pool(synthetic_pool(n_prompts=30, candidates=4, dim=8, seed=2), tmp_path / "pool.parquet")
    cfg = tmp_path / "shared.yaml"
    cfg.write_text("enn: {heads: 4, hidden: 8, steps: 5, lr: 0.01}\nprices: {replay: {per_call: 0.5}}\n")
    args = ["bench", "--pool", str(pool), "--methods", "random,maxdiff", "--seeds", "2", "--budget", "12",
            "--out", str(tmp_path / "b"), "--batch-size", "6", "--workers", "1", "-c", str(cfg)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "b" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:7] == ["method", "seed", "iteration", "annotations", "accuracy", "spearman_loss", "best_of_n"]
    assert {(r["method"], r["seed"]) for r in rows} == {("random", "0"), ("random", "1"), ("maxdiff", "0"), ("maxdiff", "1")}
    assert len(rows) == 2 * 2 * 2  # 12 pairs / 6 per iteration
    for name in ("summary.md", "curves.png", "table21.png"):
        assert (tmp_path / "b" / name).exists()
    for r in rows:  # the bill at the shared price table: $0.50 per reveal
        assert float(r["usd"]) == 0.5 * float(r["judge_calls"]) and float(r["generated_tokens"]) == 0
    assert "## Cost" in (tmp_path / "b" / "summary.md").read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.count("skipped") == 4


def test_bench_without_matplotlib_says_there_are_no_plots_and_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    """Issue 13: the report skipped its plots silently and the CLI still listed curves.png."""
    import activepref.plots as plots
    from activepref.extras import MissingExtraError

    def no_matplotlib(module: str):
        raise MissingExtraError(f"this needs {module}: pip install 'activepref[plots]'")

    monkeypatch.setattr(plots, "require", no_matplotlib)
    pool = write_pool(synthetic_pool(n_prompts=20, candidates=4, dim=8, seed=2), tmp_path / "pool.parquet")
    cfg = tmp_path / "shared.yaml"
    cfg.write_text("enn: {heads: 2, hidden: 4, steps: 2}\n")
    args = ["bench", "--pool", str(pool), "--methods", "random", "--seeds", "1", "--budget", "6",
            "--out", str(tmp_path / "b"), "--batch-size", "6", "--workers", "1", "-c", str(cfg)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "b" / "curves.png").exists()
    text = " ".join(result.output.split())
    assert "curves.png" not in text.split("no plots:")[0]
    assert "no plots: this needs matplotlib: pip install 'activepref[plots]'" in text
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert "`curves.png`" not in summary and "- no plots: this needs matplotlib: pip install 'activepref[plots]'" in summary


def test_bench_on_a_pool_with_instructions_reports_the_judge_against_the_verifiers(tmp_path: Path) -> None:
    """Issue 14, part 3: the pool's judge (its stored scores) against the verifiers, overall and
    per instruction kind, in judge_quality.csv, summary.md and the printed table; each method's
    label_accuracy is measured against the verifiers (the pool's oracle)."""
    import json

    import numpy as np

    from activepref.bench.files import read_judge_quality
    from activepref.ifeval.judge_quality import judge_agreement
    from activepref.ifeval.scoring import verify

    rng = np.random.default_rng(0)
    instructions = [{"kind": "no_commas"}, {"kind": "max_words", "n": 4}]
    texts = ["a b", "a, b", "one two three four five", "one, two, three, four, five", "fine", "x y z, w"]
    rows = []
    for p in range(24):
        for j, text in enumerate(texts):
            oracle = verify(instructions, text).oracle
            rows.append({"prompt_id": f"p{p}", "prompt": f"q {p}", "instructions": instructions, "response_id": f"p{p}-{j}",
                         "model": f"m{j}", "response": f"{text} {p}", "oracle": oracle, "score": oracle + float(rng.normal(scale=0.6)),
                         "features": rng.normal(size=6).tolist()})
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tmp_path / "shared.yaml"
    cfg.write_text("enn: {heads: 2, hidden: 4, steps: 2}\n")
    args = ["bench", "--pool", str(pool), "--methods", "random,maxmin", "--seeds", "1", "--budget", "12",
            "--out", str(tmp_path / "b"), "--batch-size", "6", "--workers", "1", "-c", str(cfg)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    quality = read_judge_quality(tmp_path / "b" / "judge_quality.csv")
    assert [q["kind"] for q in quality] == ["overall", "max_words", "no_commas"]
    expected = judge_agreement([instructions] * 24, np.repeat(np.arange(24), len(texts)),
                               [r["response"] for r in rows], np.array([r["score"] for r in rows]))
    assert [round(q["agreement"], 6) for q in quality] == [round(a.share, 6) for a in expected]
    assert 0.5 < quality[0]["agreement"] < 1.0  # a noisy judge: better than chance, not perfect
    assert "## Judge quality" in (tmp_path / "b" / "summary.md").read_text()
    assert "against the verifiers" in result.output and "no_commas" in result.output
    with open(tmp_path / "b" / "results.csv", newline="") as fh:
        last = [r for r in csv.DictReader(fh) if r["method"] == "maxmin"][-1]
    assert 0.5 < float(last["label_accuracy"]) <= 1.0
