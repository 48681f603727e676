"""The APL report: ``results.csv`` (one row per acquisition, seed and round), ``summary.md``
(win rate vs theta0 by acquisition and labels, mean ± 95% t-interval over seeds) and
``winrate.png`` (win rate against labels acquired, one line per acquisition)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from activepref.apl.loop import RoundResult
from activepref.bench.metrics import mean_ci
from activepref.bench.report import plus_minus
from activepref.extras import MissingExtraError

COLUMNS = (
    "acquisition", "seed", "round", "labels", "label_ties", "label_failures",
    "win_rate", "wins", "losses", "ties", "failures", "n_eval",
)


def write_results_csv(results: list[RoundResult], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for r in results:
            row = {k: v for k, v in asdict(r).items() if k in COLUMNS}
            if row["win_rate"] is not None:
                row["win_rate"] = f"{row['win_rate']:.6f}"
            writer.writerow(row)
    return path


def _table(results: list[RoundResult]) -> dict[str, dict[int, list[RoundResult]]]:
    """acquisition -> round -> results over seeds (acquisitions in first-seen order)."""
    out: dict[str, dict[int, list[RoundResult]]] = {}
    for r in results:
        out.setdefault(r.acquisition, defaultdict(list))[r.round].append(r)
    return out


def _fmt(values: list[float]) -> str:
    return plus_minus(*mean_ci(values)) if values else "n/a"


def summary_markdown(results: list[RoundResult], title: str, notes: list[str]) -> str:
    table = _table(results)
    rounds = sorted({r.round for r in results})
    seeds = sorted({r.seed for r in results})
    lines = [f"# {title}", ""]
    lines += [
        "Win rate of the fine-tuned policy against the initial policy theta0 on held-out prompts "
        "(1 = every judged pair won, 0.5 = no change; a tie counts one half), after each round. "
        f"Mean over seeds {seeds} ± 95% t-interval; labels = judged pairs used for DPO so far "
        "(mean over seeds).",
        "",
        "| acquisition | " + " | ".join(f"round {t}" for t in rounds) + " |",
        "|---|" + "---|" * len(rounds),
    ]
    for acq, by_round in table.items():
        cells = []
        for t in rounds:
            rs = by_round.get(t, [])
            wins = [r.win_rate for r in rs if r.win_rate is not None]
            labels = np.mean([r.labels for r in rs]) if rs else float("nan")
            cells.append(f"{_fmt(wins)} ({labels:.0f} labels)" if rs else "n/a")
        lines.append(f"| {acq} | " + " | ".join(cells) + " |")
    lines += ["", "Per run (acquisition, seed): wins / losses / ties / judge failures on the held-out prompts, last round:", ""]
    for acq, by_round in table.items():
        last = by_round.get(rounds[-1], [])
        for r in sorted(last, key=lambda r: r.seed):
            lines.append(
                f"- {acq}, seed {r.seed}: {r.wins} / {r.losses} / {r.ties} / {r.failures} of {r.n_eval}; "
                f"label ties {r.label_ties}, label failures {r.label_failures}"
            )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def plot_winrate(results: list[RoundResult], path: Path, title: str = "") -> Path:
    from activepref.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    ticks: set[float] = set()
    for acq, by_round in _table(results).items():
        xs, ys, half = [], [], []
        for t in sorted(by_round):
            rs = by_round[t]
            wins = [r.win_rate for r in rs if r.win_rate is not None]
            if not wins:
                continue
            mean, h = mean_ci(wins)
            xs.append(float(np.mean([r.labels for r in rs])))
            ys.append(mean)
            half.append(0.0 if math.isnan(h) else h)
        if xs:
            ticks.update(xs)
            line = ax.plot(xs, ys, marker="o", label=acq)[0]
            lo = np.asarray(ys) - np.asarray(half)
            hi = np.asarray(ys) + np.asarray(half)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    if ticks and len(ticks) <= 12:
        ax.set_xticks(sorted(ticks))
    ax.set(xlabel="preference labels acquired", ylabel="win rate vs initial policy", ylim=(0, 1))
    ax.legend(fontsize=8)
    return _save(fig, path, title or "Active DPO: win rate vs labels")


def write_report(results: list[RoundResult], out: Path, title: str = "activepref apl", notes: list[str] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_results_csv(results, out / "results.csv")
    md_path = out / "summary.md"
    md_path.write_text(summary_markdown(results, title, notes or []), encoding="utf-8")
    written: dict[str, Any] = {"results": str(csv_path), "summary": str(md_path)}
    try:
        written["plot"] = str(plot_winrate(results, out / "winrate.png"))
    except MissingExtraError:  # matplotlib missing: the table still stands
        written["plot"] = None
    return written
