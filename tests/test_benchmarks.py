"""Every benchmark runs (quick mode) and ends with its JSON contract line. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {
    "enn_speed.py": {"threads", "train_s", "predict_s", "reference_train_s", "gflops", "sgemm_gflops"},
    "client_throughput.py": {"pipeline_rps", "flood_rps", "ratio"},
    "annotate_load.py": {"labels_per_s", "submit_p50_ms", "submit_p99_ms", "every_label_exactly_once", "run_resumed_on_labels"},
}
PER_METHOD = {
    "acquisition_speed.py": ["random", "maxmin", "ultrafeedback", "delta_pair", "infomax", "dts", "maxminlcb", "drts", "deltaucb"],
    "design_speed.py": ["dopt", "pa_dopt", "xtx", "entropy", "maxdiff", "coreset", "bald", "batchbald", "balpm"],
}


@pytest.mark.parametrize("script", sorted({*CONTRACTS, *PER_METHOD}))
def test_benchmark_quick_run_prints_its_json_contract(script: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    if script in CONTRACTS:
        assert CONTRACTS[script] <= set(last)
    else:
        for method in PER_METHOD[script]:
            assert {"fast_ms", "reference_ms"} <= set(last[method]), method


def test_rm_convergence_quick_run_prints_every_case() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rm_convergence.py"), "--quick", "--dim", "32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(last) == {"random-77", "random-461", "maxgap-77", "maxgap-461"}
    for case in last.values():
        assert 0 < case["shipped_iterations"] <= case["strict_iterations"] <= 500
        assert 0.0 <= case["shipped_rm_accuracy"] <= 1.0


def test_rm_regularisation_reads_a_finished_bench(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from activepref.cli import app

    pool = tmp_path / "pool.parquet"
    runner = CliRunner()
    made = runner.invoke(app, ["make-pool", "--regime", "auf", "-o", str(pool), "--prompts", "40", "--dim", "16"])
    assert made.exit_code == 0, made.output
    (tmp_path / "c.yaml").write_text("enn: {heads: 4, hidden: 8, steps: 5}\neval_fraction: 0.2\n", encoding="utf-8")
    bench = runner.invoke(app, ["bench", "--pool", str(pool), "--methods", "random,drts", "--seeds", "2", "--budget", "32",
                                "--batch-size", "16", "--workers", "1", "-c", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "b")])
    assert bench.exit_code == 0, bench.output
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rm_regularisation.py"), "--bench", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "shipped" in last and "l2=1e-1" in last
    for setting in last.values():
        assert set(setting) == {"random", "drts"}
        assert setting["random"]["minus_random"] == 0.0  # Random minus itself, paired by seed
        assert setting["drts"]["seeds"] == 2
    # The shipped setting reproduces the bench's own rm_accuracy for the final checkpoint.
    import csv

    rows = list(csv.DictReader(open(tmp_path / "b" / "results.csv", encoding="utf-8")))
    finals = {}
    for r in rows:
        if r["rm_accuracy"] not in ("", "nan"):
            finals[(r["method"], int(r["seed"]))] = max(finals.get((r["method"], int(r["seed"])), (-1, 0.0)), (int(r["iteration"]), float(r["rm_accuracy"])))
    random_mean = sum(v[1] for k, v in finals.items() if k[0] == "random") / 2
    assert abs(last["shipped"]["random"]["rm_accuracy"] - random_mean) < 1e-9


def test_scale_quick_run_reports_memory_time_and_split(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"rss_gb_60", "rss_gb_600", "iter_s_60", "iter_s_600", "non_enn_share", "iter_ratio", "targets_met"} <= set(last)
    for run in last["runs"]:
        assert len(run["iteration_walls"]) == 3 and run["rss_gb"] > 0
        assert sum(run["split_share"].values()) == pytest.approx(1.0, abs=0.02)
    assert not list(tmp_path.glob("*/run-*"))  # run directories are removed unless --keep
