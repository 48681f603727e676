"""The files of a bench directory besides its runs: ``results.csv`` (one row per method, seed and
iteration), ``bench_calls.json`` (one record per ``activepref bench`` call) and the names of the
others. Their writers and readers live here so that the runner (which writes them) and the
report (which reads them) do not import each other."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

RESULT_COLUMNS = ("method", "seed", "iteration", "annotations", "accuracy", "spearman_loss", "best_of_n")
EXTRA_COLUMNS = (
    "pairs", "judge_calls", "judge_tokens", "best_of_n_regret", "best_of_n_normalized",
    "oracle_best", "mean_chosen_reward", "mean_rejected_reward", "checkpoint",
    "prompts_consumed", "rm_accuracy", "rm_accuracy_hard", "label_accuracy", "usd", "generated_tokens",
)
BENCH_TIMINGS_FILE = "bench_timings.json"  # run = run/resume wall (incl. pool import), dataset_eval = evaluate_run
CALLS_FILE = "bench_calls.json"  # one record per `bench` call: wall time, workers, runs ran and skipped
JUDGE_QUALITY_FILE = "judge_quality.csv"  # pools with verifiable instructions: the judge against the verifiers


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def write_results(rows: list[dict[str, Any]], path: Path) -> Path:
    """results.csv: RESULT_COLUMNS then EXTRA_COLUMNS; NaN/None as empty cells."""
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([*RESULT_COLUMNS, *EXTRA_COLUMNS])
        for row in rows:
            w.writerow([_fmt(row.get(c)) for c in (*RESULT_COLUMNS, *EXTRA_COLUMNS)])
    tmp.replace(path)
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    """results.csv back as dicts: method str, seed/iteration int, the rest float (NaN if empty)."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {"method": raw["method"], "seed": int(raw["seed"]), "iteration": int(raw["iteration"])}
            for k, v in raw.items():
                if k not in row:
                    row[k] = float(v) if v not in ("", None) else float("nan")
            out.append(row)
    return out


# -- bench_calls.json ----------------------------------------------------------------------
def record_call(out: Path, record: dict[str, Any]) -> None:
    """Append one call's record to ``out/bench_calls.json`` (atomic rewrite)."""
    path = Path(out) / CALLS_FILE
    calls = read_calls(out)
    calls.append(record)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(calls, indent=1), encoding="utf-8")
    tmp.replace(path)


def read_calls(out: Path) -> list[dict[str, Any]]:
    """The records of every `bench` call on ``out`` so far (oldest first); [] without any."""
    path = Path(out) / CALLS_FILE
    if not path.exists():
        return []
    try:
        calls = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def write_judge_quality(agreements: list[Any], path: Path) -> Path:
    """judge_quality.csv: kind (``overall`` or an instruction kind), agreement, pairs."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "agreement", "pairs"])
        for a in agreements:
            w.writerow([a.kind, _fmt(a.share), a.pairs])
    return path


def read_judge_quality(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{"kind": r["kind"], "agreement": float(r["agreement"]) if r["agreement"] else float("nan"), "pairs": int(r["pairs"])}
                for r in csv.DictReader(fh)]
