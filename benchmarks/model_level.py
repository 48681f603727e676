"""Model-level acquisition against generating from every model, on a pool of seed 001's
regime (30 models per prompt, prompt-only features, per-response token counts).

For each ``k`` it runs ``activepref bench`` on the same pool, seeds and budget with the
response-level method alone (every model generates for every prompt) and with each
model-level method choosing ``k`` models per prompt before that response-level method picks
the pair. It then writes, per (k, method, seed), the bench's downstream metrics at the last
iteration next to the generated tokens per exported pair:

    results.csv   k, method, model_level, response_method, seed, pairs, generated_tokens,
                  generated_tokens_per_pair, judge_calls, accuracy, rm_accuracy, rm_accuracy_hard,
                  label_accuracy
    summary.md    means with 95% t-intervals over seeds, token ratios against the baseline, and each
                  model-level method's rm_accuracy paired against model_random (same k and seed):
                  does its reward model over (prompt, model) beat choosing k models at random?
    tokens_vs_quality.png

and ends with one JSON line (per k and method: tokens ratio, metric deltas with intervals).

    python benchmarks/model_level.py --out benchmarks/results/model-level --prompts 4096 --ks 2 6 --seeds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BASE_CONFIG = "eval_fraction: 0.1\npreset: paper-rm\n"  # as the auf-4096 benches: the paper's reward model
METRICS = ("accuracy", "rm_accuracy", "rm_accuracy_hard", "label_accuracy")


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half width of the 95% t-interval); half width NaN for one value."""
    from scipy import stats

    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def last_rows(results: Path) -> dict[tuple[str, int], dict[str, str]]:
    """(method, seed) -> its last results.csv row that has dataset metrics (rm_accuracy)."""
    out: dict[tuple[str, int], dict[str, str]] = {}
    with open(results, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("rm_accuracy"):
                key = (row["method"], int(row["seed"]))
                if key not in out or int(row["iteration"]) > int(out[key]["iteration"]):
                    out[key] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pool", type=Path, help="an auf pool with prompt_features (made if missing)")
    ap.add_argument("--prompts", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--ladder-spread", type=float, default=1.0,
                    help="the pool's model effect, +spread (best model) to -spread (worst); larger: model choice matters more")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=None, help="pairs per run (default: 90%% of the prompts)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--response-method", default="drts")
    ap.add_argument("--model-methods", nargs="+", default=["model_dts", "model_deltaucb", "model_ucb", "model_random"])
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pool = args.pool or out / f"auf{args.prompts}-d{args.dim}.parquet"
    started = time.perf_counter()
    if not pool.exists():
        subprocess.run([sys.executable, "-m", "activepref", "make-pool", "--regime", "auf", "-o", str(pool), "--prompts",
                        str(args.prompts), "--dim", str(args.dim), "--noise", str(args.noise), "--ladder-spread", str(args.ladder_spread),
                        "--prompt-features"], check=True)
    budget = args.budget or int(0.9 * args.prompts)
    rows: list[dict[str, object]] = []
    baseline_done = False
    for k in args.ks:
        shared = out / f"k{k}.yaml"
        opts = {m: {"k": k, "epsilon": args.epsilon, "response_method": args.response_method} for m in args.model_methods}
        shared.write_text(BASE_CONFIG + "method_options: " + json.dumps(opts) + "\n")
        methods = list(args.model_methods)
        bench_dir = out / f"bench-k{k}"
        cmd = [sys.executable, "-m", "activepref", "bench", "--pool", str(pool), "--methods", ",".join(methods),
               "--seeds", str(args.seeds), "--budget", str(budget), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "-c", str(shared), "--out", str(bench_dir)]
        print(f"[model-level] k={k}: {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True)
        found = last_rows(bench_dir / "results.csv")
        for (method, seed), r in sorted(found.items()):
            rows.append(_row(k, method, True, args.response_method, seed, r))
        if not baseline_done:
            base_dir = out / "bench-all-models"
            base_cfg = out / "all-models.yaml"
            base_cfg.write_text(BASE_CONFIG)
            cmd = [sys.executable, "-m", "activepref", "bench", "--pool", str(pool), "--methods", args.response_method,
                   "--seeds", str(args.seeds), "--budget", str(budget), "--batch-size", str(args.batch_size),
                   "--workers", str(args.workers), "-c", str(base_cfg), "--out", str(base_dir)]
            print(f"[model-level] all 30 models: {' '.join(cmd[3:])}", flush=True)
            subprocess.run(cmd, check=True)
            base = last_rows(base_dir / "results.csv")
            baseline_done = True
    for (method, seed), r in sorted(base.items()):
        rows.append(_row(0, method, False, args.response_method, seed, r))
    fields = ["k", "method", "model_level", "response_method", "seed", "pairs", "generated_tokens", "generated_tokens_per_pair",
              "judge_calls", *METRICS]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    summary = _summarise(rows, args.response_method)
    _write_summary(out, summary, args, budget, pool, time.perf_counter() - started)
    _plot(out, rows)
    print(json.dumps({"bench": "model_level", "budget": budget, "seeds": args.seeds, "response_method": args.response_method,
                      "results": summary}))
    return 0


def _row(k: int, method: str, level: bool, response: str, seed: int, r: dict[str, str]) -> dict[str, object]:
    pairs = float(r["pairs"])
    tokens = float(r.get("generated_tokens") or "nan")
    return {
        "k": k, "method": method, "model_level": level, "response_method": response, "seed": seed, "pairs": int(pairs),
        "generated_tokens": int(tokens) if math.isfinite(tokens) else "", "generated_tokens_per_pair": tokens / pairs if pairs else "",
        "judge_calls": r.get("judge_calls"), **{m: r.get(m) for m in METRICS},
    }


def _summarise(rows: list[dict[str, object]], response: str) -> list[dict[str, object]]:
    base = {int(r["seed"]): r for r in rows if not r["model_level"]}
    base_tokens = float(np.mean([float(r["generated_tokens_per_pair"]) for r in base.values()]))
    groups: dict[tuple[int, str], list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault((int(r["k"]), str(r["method"])), []).append(r)
    out = []
    chance = {(int(r["k"]), int(r["seed"])): r for r in rows if r["method"] == "model_random"}
    for (k, method), rs in sorted(groups.items()):
        tokens = float(np.mean([float(r["generated_tokens_per_pair"]) for r in rs]))
        entry: dict[str, object] = {"k": k, "method": method if k else f"{response} (all models)",
                                    "generated_tokens_per_pair": round(tokens, 1), "token_ratio": round(base_tokens / tokens, 2)}
        for m in METRICS:
            mean, half = t_interval([float(r[m]) for r in rs if r[m] not in ("", None)])
            deltas = [float(r[m]) - float(base[int(r["seed"])][m]) for r in rs if int(r["seed"]) in base and r[m] not in ("", None)]
            dmean, dhalf = t_interval(deltas)
            entry[m] = [round(mean, 4), round(half, 4)]
            entry[f"delta_{m}"] = [round(dmean, 4), round(dhalf, 4)]
            if k and method != "model_random" and any((k, int(r["seed"])) in chance for r in rs):
                # does the model-level reward model beat choosing k models at random? (paired by seed)
                vs = [float(r[m]) - float(chance[(k, int(r["seed"]))][m]) for r in rs
                      if (k, int(r["seed"])) in chance and r[m] not in ("", None)]
                vmean, vhalf = t_interval(vs)
                entry[f"vs_random_{m}"] = [round(vmean, 4), round(vhalf, 4)]
        out.append(entry)
    return out


def _write_summary(out: Path, summary: list[dict[str, object]], args: argparse.Namespace, budget: int, pool: Path, wall: float) -> None:
    lines = [
        "# Model-level acquisition vs generating from all 30 models", "",
        f"- pool: {pool.name} (seed 001's regime: {args.prompts} prompts x 30 models, d {args.dim}, judge noise {args.noise}, "
        f"ladder spread {args.ladder_spread}, "
        "prompt-only features, token counts per response)",
        f"- budget {budget} pairs, batch {args.batch_size}, seeds {args.seeds}; response-level method {args.response_method}; "
        f"model-level methods choose k models per prompt (epsilon {args.epsilon}), then {args.response_method} picks the pair",
        f"- wall time {wall / 60:.1f} min ({args.workers} workers)", "",
        "Per method: the bench's last dataset checkpoint. ± is the 95% t-interval over seeds; Δ is the paired difference "
        f"to {args.response_method} on all models (same seed, same held-out split).", "",
        "| k | method | generated tokens per pair | fewer tokens | held-out accuracy | rm_accuracy | Δ rm_accuracy | label_accuracy "
        "| Δ label_accuracy | rm_accuracy vs model_random |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    def pm(e: dict[str, object], key: str) -> str:
        mean, half = e[key]  # type: ignore[misc]
        return f"{mean:.3f}" + ("" if not math.isfinite(half) else f" ± {half:.3f}")

    for e in summary:
        lines.append(
            f"| {e['k'] or 'all'} | {e['method']} | {e['generated_tokens_per_pair']:.0f} | {e['token_ratio']:.1f}x | {pm(e, 'accuracy')} | "
            f"{pm(e, 'rm_accuracy')} | {pm(e, 'delta_rm_accuracy')} | {pm(e, 'label_accuracy')} | {pm(e, 'delta_label_accuracy')} | "
            f"{pm(e, 'vs_random_rm_accuracy') if 'vs_random_rm_accuracy' in e else ''} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot(out: Path, rows: list[dict[str, object]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault(f"{r['method']} k={r['k']}" if r["model_level"] else f"{r['method']} (all models)", []).append(r)
    for name, rs in sorted(groups.items()):
        x = [float(r["generated_tokens_per_pair"]) for r in rs]
        for ax, m in zip(axes, ("rm_accuracy", "label_accuracy")):
            y = [float(r[m]) for r in rs if r[m] not in ("", None)]
            ax.scatter(x[: len(y)], y, label=name, s=18, marker="o" if rs[0]["model_level"] else "*")
    for ax, m in zip(axes, ("rm_accuracy", "label_accuracy")):
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens per exported pair (log)")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("Model-level acquisition: generation cost against dataset quality (one point per seed)")
    fig.tight_layout()
    fig.savefig(out / "tokens_vs_quality.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
