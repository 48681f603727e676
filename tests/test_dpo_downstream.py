"""benchmarks/dpo_downstream.py end to end on a toy pool with verifiable instructions (slow:
it DPO-trains SmolLM2-135M on CPU six times; run with -m slow)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "seed", "budget_fraction", "pairs", "judge_calls", "prompt_strict", "prompt_loose", "inst_strict",
           "inst_loose", "base_prompt_loose", "delta_prompt_loose"]


def toy_pool(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from activepref.ifeval.instructions import draw_instructions, phrase_instruction
    from activepref.ifeval.scoring import verify

    rng = np.random.default_rng(0)
    texts = ["the day was warm and calm and we walked by the sea", "The day was warm, calm, and bright.",
             "* point one\n* point two\nThat is all.", '"A SHORT QUOTED ANSWER"']
    rows = []
    for p in range(60):
        instructions = draw_instructions(rng, int(rng.integers(1, 3)))
        prompt = f"Describe day {p}.\n\n" + " ".join(phrase_instruction(i) for i in instructions)
        for j, text in enumerate(texts):
            oracle = verify(instructions, text).oracle
            rows.append({"prompt_id": f"p{p}", "prompt": prompt, "instructions": json.dumps(instructions), "response_id": f"p{p}-{j}",
                         "model": f"m{j}", "response": text, "score": oracle + float(rng.normal(scale=0.3)), "oracle": oracle,
                         "features": rng.normal(size=16).astype(np.float32).tolist()})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_quick_run_writes_every_file_and_resumes_without_retraining(tmp_path: Path) -> None:
    pool = toy_pool(tmp_path / "pool.parquet")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "dpo_downstream.py"), "--pool", str(pool), "--quick", "--heldout", "12",
           "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert set(summary["delta_prompt_loose_full_budget"]) == {"random", "dts"}
    assert set(summary["stage_s"]) == {"base_eval_s", "selection_s", "dpo_train_s", "heldout_eval_s"}
    assert all(v > 0 for v in summary["stage_s"].values())
    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS
    assert {(r["method"], r["budget_fraction"]) for r in rows} == {(m, f) for m in ("random", "dts") for f in ("1.0", "0.5", "0.1667")}
    for r in rows:
        assert float(r["delta_prompt_loose"]) == pytest.approx(float(r["prompt_loose"]) - float(r["base_prompt_loose"]))
        assert int(r["judge_calls"]) > 0 and 0.0 <= float(r["label_accuracy"]) <= 1.0
    for name in ("summary.md", "gain_vs_calls.png", "heldout.jsonl", "train_pool.parquet"):
        assert (tmp_path / "out" / name).exists()
    held = {json.loads(line)["prompt_id"] for line in (tmp_path / "out" / "heldout.jsonl").read_text().splitlines()}
    import pyarrow.parquet as pq

    assert not held & set(pq.read_table(tmp_path / "out" / "train_pool.parquet").column("prompt_id").to_pylist())
    jobs = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "jobs").glob("*.json")}
    assert len(jobs) == 9  # the base model, 2 selections and 2 methods x 3 fractions
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)  # every job is stored: nothing retrains
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "jobs").glob("*.json")} == jobs
    assert again.stdout.strip().splitlines()[-1].split('"wall_s"')[0] == first.stdout.strip().splitlines()[-1].split('"wall_s"')[0]
