"""The data side of benchmarks/dpo_downstream.py, without any DPO: model-level selection on a pool
with token counts, the generated tokens each budget fraction cost (checked against the pool and
the run's model choices by hand), the backfill of job records written before token counts
existed, and the held-out split surviving a pool that gained columns."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import dpo_downstream as D  # noqa: E402

TEXTS = ["the day was warm and calm and we walked by the sea", "The day was warm, calm, and bright.",
         "* point one\n* point two\nThat is all.", '"A SHORT QUOTED ANSWER"']


def toy_pool(path: Path, tokens: bool) -> Path:
    """60 prompts x 4 models (m0..m3), verifiable instructions; with ``tokens``, the model-level
    columns: prompt_features and completion_tokens = 10 * (model number + 1) + prompt number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from activepref.ifeval.instructions import draw_instructions, phrase_instruction
    from activepref.ifeval.scoring import verify

    rng = np.random.default_rng(0)
    rows = []
    for p in range(60):
        instructions = draw_instructions(rng, int(rng.integers(1, 3)))
        prompt = f"Describe day {p}.\n\n" + " ".join(phrase_instruction(i) for i in instructions)
        prompt_vec = rng.normal(size=8).astype(np.float32).tolist()
        for j, text in enumerate(TEXTS):
            oracle = verify(instructions, text).oracle
            row = {"prompt_id": f"p{p}", "prompt": prompt, "instructions": json.dumps(instructions), "response_id": f"p{p}-{j}",
                   "model": f"m{j}", "response": text, "score": oracle + float(rng.normal(scale=0.3)), "oracle": oracle,
                   "features": rng.normal(size=16).astype(np.float32).tolist()}
            if tokens:
                row.update(prompt_features=prompt_vec, completion_tokens=10 * (j + 1) + p)
            rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def args(**over: object) -> argparse.Namespace:
    base = dict(judge="verifier", noise_sd=0.0, delta_pair=None, batch_size=8, budget=24, model_k=2, model_epsilon=0.0,
                model_response_method="drts")
    return argparse.Namespace(**{**base, **over})


def expected_tokens(run_dir: Path, fraction: float) -> int:
    """Completion tokens of what generated for the first ceil(fraction x iterations) iterations'
    prompts, from the pool's rule and the run's stored model choices."""
    import math

    from activepref.core.store import STATUS_TRAINED, RunStore

    with RunStore.open_readonly(run_dir) as store:
        done = [r for r in store.iterations() if r.status == STATUS_TRAINED]
        upto = max(1, math.ceil(fraction * len(done)))
        prompts = [p for p, _, _ in store.prompts()]
        chosen = store.model_choices()
    total = 0
    for rec in done[:upto]:
        for idx in rec.prompt_idxs:
            number = int(prompts[idx].id[1:])
            models = chosen.get(idx, {f"m{j}" for j in range(4)})
            total += sum(10 * (int(m[1:]) + 1) + number for m in models)
    return total


@pytest.mark.parametrize("method", ["model_dts", "random"])
def test_generated_tokens_per_fraction_match_the_pool_and_the_model_choices(tmp_path: Path, method: str) -> None:
    split = D.split_pool(toy_pool(tmp_path / "pool.parquet", tokens=True), 10, tmp_path / "out")
    run_dir = D.run_selection(method, 0, split, args(), tmp_path / "out")
    sizes = []
    for fraction in (1.0, 0.5, 1 / 6):
        data = D.dataset_at(run_dir, fraction)
        assert data.generated_tokens == expected_tokens(run_dir, fraction)
        sizes.append(data.generated_tokens)
    assert sizes[0] > sizes[1] > sizes[2] > 0
    from activepref.core.store import RunStore

    with RunStore.open_readonly(run_dir) as store:
        choices = store.model_choices()
    if method == "model_dts":  # two of four models per consumed prompt: half of the candidates, or fewer tokens
        assert choices and all(len(models) == 2 for models in choices.values())
    else:
        assert not choices


def test_a_pool_without_token_counts_reports_none(tmp_path: Path) -> None:
    split = D.split_pool(toy_pool(tmp_path / "pool.parquet", tokens=False), 10, tmp_path / "out")
    assert D.dataset_at(D.run_selection("random", 0, split, args(), tmp_path / "out"), 1.0).generated_tokens is None


def test_old_job_records_get_their_tokens_from_a_rebuilt_run(tmp_path: Path) -> None:
    """A job trained before the pool had token counts: the pool gains the columns, the split is
    rebuilt with the same held-out prompts, the run is rebuilt beside the old one and must
    reproduce the job's dataset before it replaces it."""
    out = tmp_path / "out"
    plain = D.split_pool(toy_pool(tmp_path / "pool.parquet", tokens=False), 10, out)
    data = D.dataset_at(D.run_selection("dts", 1, plain, args(), out), 1.0)
    record = {"pairs": len(data.pairs), "judge_calls": data.judge_calls, "label_accuracy": data.label_accuracy, "prompt_loose": 0.25}
    path = out / "jobs" / "dts-seed1-f1.000.json"
    path.parent.mkdir(parents=True)
    held = (out / "heldout.jsonl").read_text()
    run_dir = out / "runs" / "dts-seed1"

    richer = D.split_pool(toy_pool(tmp_path / "pool.parquet", tokens=True), 10, out)
    assert (out / "heldout.jsonl").read_text() == held
    assert "completion_tokens" in __import__("pyarrow.parquet").parquet.read_schema(richer.train_pool).names

    # a record the rebuild does not reproduce is refused, and the old run stays as it was
    for wrong in ({**record, "pairs": record["pairs"] + 1}, {**record, "pairs_sha256": "0" * 64}):
        path.write_text(json.dumps(wrong))
        before = (run_dir / "run.sqlite").stat().st_mtime_ns
        with pytest.raises(SystemExit, match="not the dataset it trained on"):
            D.with_tokens(path, wrong, "dts", 1, 1.0, richer, args(), out)
        assert json.loads(path.read_text()) == wrong and (run_dir / "run.sqlite").stat().st_mtime_ns == before
        assert not (out / "runs" / "dts-seed1.rebuilt").exists()

    good = {**record, "pairs_sha256": D.pairs_digest(data.pairs)}
    path.write_text(json.dumps(good))
    result = D.with_tokens(path, good, "dts", 1, 1.0, richer, args(), out)
    assert result["generated_tokens"] == expected_tokens(run_dir, 1.0) > 0  # the rebuilt run replaced the old one
    assert json.loads(path.read_text()) == result  # kept, so the next invocation does not rebuild
    assert D.with_tokens(path, {**good, "generated_tokens": None}, "dts", 1, 1.0, richer, args(), out) == result  # from the run now


def test_a_pool_with_other_held_out_prompts_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    D.split_pool(toy_pool(tmp_path / "pool.parquet", tokens=False), 10, out)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pool.parquet")
    pq.write_table(table.slice(0, 4 * 50).append_column("completion_tokens", __import__("pyarrow").array([1] * 200)),
                   tmp_path / "pool.parquet")
    before = {f: (out / f).read_bytes() for f in ("train_pool.parquet", "heldout.jsonl", "split.json")}
    with pytest.raises(SystemExit, match="held-out prompts"):
        D.split_pool(tmp_path / "pool.parquet", 10, out)
    assert {f: (out / f).read_bytes() for f in before} == before  # refused before anything was written


def test_report_only_summarises_a_grid_in_progress_without_training(tmp_path: Path, monkeypatch) -> None:
    import csv

    out = tmp_path / "out"
    pool = toy_pool(tmp_path / "pool.parquet", tokens=True)
    common = ["--pool", str(pool), "--heldout", "10", "--budget", "24", "--batch-size", "8", "--fractions", "1.0", "--dpo-max-length", "40",
              "--out", str(out)]
    with pytest.raises(SystemExit, match="no base model"):
        D.main([*common, "--report-only", "--methods", "random"])
    split = D.split_pool(pool, 10, out)
    (out / "jobs").mkdir()
    (out / "jobs" / "base.json").write_text(json.dumps({"prompt_strict": 0.1, "prompt_loose": 0.2, "inst_strict": 0.3, "inst_loose": 0.4,
                                                       "eval_s": 1.0}))
    for method, seed, loose in (("random", 0, 0.3), ("dts", 0, 0.25), ("random", 1, 0.1)):  # dts seed 1: not run yet
        data = D.dataset_at(D.run_selection(method, seed, split, args(), out), 1.0)
        (out / "jobs" / f"select-{method}-seed{seed}.json").write_text(json.dumps({"run_dir": "x", "select_s": 1.0}))
        (out / "jobs" / f"{method}-seed{seed}-f1.000.json").write_text(json.dumps({
            "pairs": len(data.pairs), "judge_calls": data.judge_calls, "label_accuracy": data.label_accuracy, "prompt_strict": loose,
            "prompt_loose": loose, "inst_strict": loose, "inst_loose": loose, "train_s": 1.0, "eval_s": 1.0}))

    def no_training(*_a, **_k):
        raise AssertionError("--report-only must not load or train a policy")

    monkeypatch.setattr(D, "Policies", no_training)
    assert D.main([*common, "--report-only", "--methods", "random", "dts", "--seeds", "2"]) == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["method"], r["seed"]) for r in rows) == [("dts", "0"), ("random", "0"), ("random", "1")]
    assert all(float(r["generated_tokens_per_pair"]) > 0 for r in rows)  # backfilled from the rebuilt runs
    from activepref.apl.policy import count_too_long, dpo_rows

    for r in rows:  # backfilled with the policy's tokenizer (toy prompts are 20-60 tokens: some fill 40)
        data = D.dataset_at(out / "runs" / f"{r['method']}-seed{r['seed']}", 1.0)
        assert int(r["pairs_too_long"]) == count_too_long(D.policy_tokenizer(), dpo_rows(data.pairs), 40)
        assert json.loads((out / "jobs" / f"{r['method']}-seed{r['seed']}-f1.000.json").read_text())["pairs_too_long"] == int(r["pairs_too_long"])
    assert sum(int(r["pairs_too_long"]) for r in rows) > 0
    # a record without the count and without its run: --report-only rebuilds it aside, never in place
    import shutil

    record = out / "jobs" / "dts-seed0-f1.000.json"
    want = json.loads(record.read_text())
    record.write_text(json.dumps({k: v for k, v in want.items() if k != "pairs_too_long"}))
    shutil.rmtree(out / "runs" / "dts-seed0")
    assert D.main([*common, "--report-only", "--methods", "random", "dts", "--seeds", "2"]) == 0
    assert json.loads(record.read_text()) == want
    assert not (out / "runs" / "dts-seed0").exists() and not list((out / "runs").glob("*.rebuilt*"))
    assert {r["method"]: float(r["delta_prompt_loose"]) for r in rows if r["seed"] == "0"} == pytest.approx({"random": 0.1, "dts": 0.05})
    summary = (out / "summary.md").read_text()
    assert "Not yet run" in summary and "dts-seed1-f1.000" in summary
    assert "| random | 1 | 2 |" in summary and "| dts | 1 | 1 |" in summary  # the seeds each mean is over


def test_a_missing_selection_run_is_rebuilt_and_checked_against_the_trained_records(tmp_path: Path) -> None:
    """A fresh checkout has the job records but not the (ignored) runs: the run is rebuilt and
    must give the dataset each record trained on, at every fraction; a mismatch is refused."""
    import shutil

    out = tmp_path / "out"
    split = D.split_pool(toy_pool(tmp_path / "pool.parquet", tokens=True), 10, out)
    a = args(fractions=[1.0, 0.5])
    run_dir = D.run_selection("dts", 0, split, a, out)
    (out / "jobs").mkdir()
    digests = {f: D.pairs_digest(D.dataset_at(run_dir, f).pairs) for f in (1.0, 0.5)}
    assert digests[1.0] != digests[0.5]
    for f, digest in digests.items():
        (out / "jobs" / f"dts-seed0-f{f:.3f}.json").write_text(json.dumps({"pairs_sha256": digest}))
    before = (run_dir / "run.sqlite").stat().st_mtime_ns
    assert D.ensure_run("dts", 0, split, a, out) == run_dir and (run_dir / "run.sqlite").stat().st_mtime_ns == before  # present: untouched

    shutil.rmtree(run_dir)
    assert D.ensure_run("dts", 0, split, a, out) == run_dir
    assert {f: D.pairs_digest(D.dataset_at(run_dir, f).pairs) for f in (1.0, 0.5)} == digests

    shutil.rmtree(run_dir)
    (out / "jobs" / "dts-seed0-f0.500.json").write_text(json.dumps({"pairs_sha256": digests[1.0]}))  # a record from another run
    with pytest.raises(SystemExit, match="not the dataset this record trained on"):
        D.ensure_run("dts", 0, split, a, out)
    assert not run_dir.exists()


def test_delta_pair_is_billed_for_its_two_models_only(tmp_path: Path) -> None:
    """delta_pair pairs m2's answer over m0's: only those two count as generated."""
    import math

    from activepref.core.store import STATUS_TRAINED, RunStore

    split = D.split_pool(toy_pool(tmp_path / "pool.parquet", tokens=True), 10, tmp_path / "out")
    run_dir = D.run_selection("delta_pair", 0, split, args(delta_pair=("m2", "m0")), tmp_path / "out")
    for fraction in (1.0, 0.5):
        with RunStore.open_readonly(run_dir) as store:
            done = [r for r in store.iterations() if r.status == STATUS_TRAINED]
            prompts = [p for p, _, _ in store.prompts()]
        numbers = [int(prompts[i].id[1:]) for r in done[: max(1, math.ceil(fraction * len(done)))] for i in r.prompt_idxs]
        assert D.dataset_at(run_dir, fraction).generated_tokens == sum((30 + n) + (10 + n) for n in numbers)
    with pytest.raises(Exception, match="'m9' is not a model of the pool"):
        D.run_selection("delta_pair", 1, split, args(delta_pair=("m9", "m0")), tmp_path / "out")


def test_resuming_with_other_settings_is_refused_and_a_growing_grid_is_not(tmp_path: Path) -> None:
    """Job records are reused by name, so an --out keeps the settings its jobs were made with:
    once a job has finished, another learning rate or answer length is refused before anything
    runs (naming each setting), and more methods, seeds or fractions are not; before that, the
    file just follows the latest invocation. A setting the stored file lacks is taken to have had
    its default."""
    out = tmp_path / "out"
    first = D.parse_args(["--pool", "p", "--out", str(out), "--budget", "24", "--dpo-lr", "5e-4", "--max-new-tokens", "64",
                          "--delta-pair", "a", "b"])
    typo = argparse.Namespace(**{**vars(first), "budget": 2400})
    D.check_settings(out, typo)
    D.check_settings(out, first)  # nothing finished yet: a corrected invocation is not refused
    stored = json.loads((out / "settings.json").read_text())
    assert stored["budget"] == 24 and stored["dpo_lr"] == 5e-4 and stored["delta_pair"] == ["a", "b"]
    (out / "jobs").mkdir()
    (out / "jobs" / "base.json").write_text("{}")  # a finished job: the settings are now binding
    D.check_settings(out, first)  # the same settings: fine
    D.check_settings(out, argparse.Namespace(**{**vars(first), "delta_pair": ("a", "b")}))  # a tuple is the stored list
    other = argparse.Namespace(**{**vars(first), "dpo_lr": 1e-3, "max_new_tokens": 128})
    with pytest.raises(SystemExit, match=r"--max-new-tokens 128 \(the jobs used 64\); --dpo-lr 0\.001 \(the jobs used 0\.0005\)"):
        D.check_settings(out, other)
    assert json.loads((out / "settings.json").read_text()) == stored  # unchanged by the refusal
    del stored["model_k"]  # a file from before a setting existed: its jobs used the default (2)
    (out / "settings.json").write_text(json.dumps(stored))
    with pytest.raises(SystemExit, match=r"--model-k 3 \(the jobs used 2, the default\)"):
        D.check_settings(out, argparse.Namespace(**{**vars(first), "model_k": 3}))
    D.check_settings(out, first)
    assert json.loads((out / "settings.json").read_text())["model_k"] == 2  # now recorded

    # through the command line: a changed budget is refused before the split; the same settings
    # with more methods, seeds and fractions get past the check
    pool = toy_pool(tmp_path / "pool.parquet", tokens=False)
    grid = tmp_path / "grid"
    common = ["--pool", str(pool), "--heldout", "10", "--batch-size", "8", "--out", str(grid)]
    with pytest.raises(SystemExit, match="no base model"):
        D.main([*common, "--budget", "24", "--report-only", "--methods", "random"])
    assert not (grid / "settings.json").exists()  # a report writes no settings
    D.check_settings(grid, D.parse_args([*common, "--budget", "24"]))
    (grid / "jobs").mkdir()
    (grid / "jobs" / "select-random-seed0.json").write_text("{}")
    before = {f.name: f.stat().st_mtime_ns for f in grid.iterdir()}
    with pytest.raises(SystemExit, match=r"--budget 48 \(the jobs used 24\)"):
        D.main([*common, "--budget", "48"])
    assert {f.name: f.stat().st_mtime_ns for f in grid.iterdir()} == before  # refused before anything was written
    with pytest.raises(SystemExit, match="no base model"):  # the same settings: past the check, on to the report
        D.main([*common, "--budget", "24", "--report-only", "--methods", "random", "dts", "--seeds", "2", "--fractions", "1.0"])


def test_policy_choices_resolve_to_a_model_and_its_gguf_file(tmp_path: Path) -> None:
    from activepref.live.local_models import smollm2_gguf

    assert D.policy_source("smollm2") == smollm2_gguf()
    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert D.policy_source(str(gguf)) == (str(gguf.parent.resolve()), "tiny.gguf")
    with pytest.raises(SystemExit, match="no such GGUF file"):
        D.policy_source(str(tmp_path / "missing.gguf"))
    assert D.policy_source("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)  # loaded by transformers
    assert D.policy_name("smollm2") == "SmolLM2-135M-Instruct" and D.policy_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen2.5-0.5B-Instruct"
    parsed = D.parse_args(["--pool", "p", "--out", str(tmp_path / "o")])
    assert (parsed.policy, parsed.device) == ("smollm2", "cpu")
    D.check_settings(tmp_path / "o", parsed)
    (tmp_path / "o" / "jobs").mkdir()
    (tmp_path / "o" / "jobs" / "base.json").write_text("{}")
    other = D.parse_args(["--pool", "p", "--out", str(tmp_path / "o"), "--policy", "qwen-coder", "--device", "cuda"])
    with pytest.raises(SystemExit, match=r"--policy 'qwen-coder' \(the jobs used 'smollm2'\); --device 'cuda' \(the jobs used 'cpu'\)"):
        D.check_settings(tmp_path / "o", other)


def test_paired_differences_by_hand_and_a_grid_on_other_prompts_is_refused(tmp_path: Path) -> None:
    """--paired-with: this grid minus another, paired by (method, seed, fraction); a method only
    one grid has is left out; two grids on different held-out prompts are not compared."""
    row = lambda m, s, f, v: {"method": m, "seed": s, "budget_fraction": f, "prompt_loose": v}  # noqa: E731
    mine = [row("dts", 0, 1.0, 0.30), row("dts", 1, 1.0, 0.20), row("dts", 0, 0.1667, 0.25), row("delta_pair", 0, 1.0, 0.5)]
    theirs = [{k: str(v) for k, v in r.items()} for r in  # as csv.DictReader gives them
              (row("dts", 0, 1.0, 0.25), row("dts", 1, 1.0, 0.20), row("dts", 0, 0.16666666666666666, 0.30), row("random", 0, 1.0, 0.1))]
    per_method, total = D.paired_differences(mine, theirs)
    assert [d.method for d in per_method] == ["dts"]
    (dts,) = per_method
    assert list(dts.by_fraction) == [1.0, 0.1667]
    assert dts.by_fraction[1.0][0] == pytest.approx(0.025) and dts.by_fraction[1.0][2] == 2
    assert dts.by_fraction[1.0][1] == pytest.approx(12.706 * 0.05 / np.sqrt(2) / np.sqrt(2), rel=1e-3)  # t(1) x sd / sqrt(n)
    assert dts.by_fraction[0.1667][0] == pytest.approx(-0.05) and dts.by_fraction[0.1667][2] == 1
    assert dts.pooled[0] == pytest.approx((0.05 + 0.0 - 0.05) / 3) and dts.pooled[2] == 3 and total[2] == 3

    a, b = tmp_path / "a", tmp_path / "b"
    for d, text in ((a, '{"prompt_id": "p1"}\n'), (b, '{"prompt_id": "p2"}\n')):
        d.mkdir()
        (d / "heldout.jsonl").write_text(text)
        (d / "results.csv").write_text("method,seed,budget_fraction,prompt_loose,judge\ndts,0,1.0,0.3,verifier\n")
    with pytest.raises(SystemExit, match="held-out prompts are not this grid's"):
        D.paired_section(a, b, [row("dts", 0, 1.0, 0.3)])
    with pytest.raises(SystemExit, match="no results.csv"):
        D.paired_section(a, tmp_path / "nowhere", [])
    (b / "heldout.jsonl").write_text('{"prompt_id": "p1"}\n')
    lines, entry = D.paired_section(a, b, [row("dts", 0, 1.0, 0.35)])
    assert entry["judge"] == "verifier" and entry["n"] == 1 and entry["mean"] == pytest.approx(0.05)
    assert any(line.startswith("| dts | +0.050") for line in lines)
