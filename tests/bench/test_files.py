"""The bench directory's files (activepref.bench.files), and the runner/report split."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import activepref.bench.report as report
from activepref.bench.files import RESULT_COLUMNS, read_calls, read_results, record_call, write_results


def test_results_csv_round_trip(tmp_path: Path) -> None:
    rows = [{"method": "random", "seed": 0, "iteration": 0, "annotations": 4, "accuracy": 0.5, "rm_accuracy": float("nan")}]
    path = write_results(rows, tmp_path / "results.csv")
    assert path.read_text().splitlines()[0].startswith(",".join(RESULT_COLUMNS))
    [back] = read_results(path)
    assert (back["method"], back["seed"], back["iteration"], back["annotations"], back["accuracy"]) == ("random", 0, 0, 4.0, 0.5)
    assert math.isnan(back["rm_accuracy"]) and math.isnan(back["spearman_loss"])


def test_calls_accumulate(tmp_path: Path) -> None:
    assert read_calls(tmp_path) == []
    record_call(tmp_path, {"wall_s": 1.0})
    record_call(tmp_path, {"wall_s": 2.0})
    assert [c["wall_s"] for c in read_calls(tmp_path)] == [1.0, 2.0]


def test_the_report_does_not_import_the_runner() -> None:
    """Issue 13: bench/report.py and bench/runner.py imported each other."""
    tree = ast.parse(Path(report.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "activepref.bench.runner" not in imported
