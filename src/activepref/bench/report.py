"""The bench report: summary.md, curves.png and table21.png from results.csv and the run stores."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from activepref.bench import metrics as M

REFERENCE_METHOD = "random"


def plus_minus(mean: float, spread: float = float("nan"), digits: int = 3) -> str:
    """``mean ± spread``; just the mean when the spread is NaN; ``n/a`` when the mean is NaN
    (e.g. no judge score for a method that annotates nothing)."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _by_method(rows: list[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """method -> seed -> rows sorted by iteration (method order as in results.csv)."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in rows:
        out.setdefault(r["method"], {}).setdefault(r["seed"], []).append(r)
    for seeds in out.values():
        for curve in seeds.values():
            curve.sort(key=lambda r: r["iteration"])
    return out


def efficiency(rows: list[dict[str, Any]], reference: str = REFERENCE_METHOD) -> dict[str, dict[str, Any]] | None:
    """Annotations each method needs to reach the reference method's final held-out accuracy.

    The target is the mean over the reference's seeds of its last-iteration accuracy; per
    seed, :func:`metrics.annotations_to_reach` on that seed's curve. Per method: target,
    mean annotations over the seeds that reach it (``None`` if none does), seeds reached
    of seeds run, and the ratio of that mean to the reference's mean final annotations.
    None when the reference method is not in the bench.
    """
    by = _by_method(rows)
    if reference not in by:
        return None
    target = float(np.nanmean([c[-1]["accuracy"] for c in by[reference].values()]))
    ref_budget = float(np.nanmean([c[-1]["annotations"] for c in by[reference].values()]))
    out = {}
    for method, seeds in by.items():
        reached = [M.annotations_to_reach([r["annotations"] for r in c], [r["accuracy"] for r in c], target) for c in seeds.values()]
        hit = [x for x in reached if x is not None]
        mean = float(np.mean(hit)) if hit else None
        out[method] = {
            "target": target, "mean": mean, "reached": len(hit), "seeds": len(reached),
            "ratio": mean / ref_budget if mean is not None and ref_budget > 0 else None, "reference_budget": ref_budget,
        }
    return out


DATASET_METRICS = ("rm_accuracy", "rm_accuracy_hard", "label_accuracy")
EFFICIENCY_METRICS = ("rm_accuracy", "rm_accuracy_hard", "accuracy")


def paired_efficiency(rows: list[dict[str, Any]], metric: str, reference: str = REFERENCE_METHOD) -> dict[str, dict[str, Any]] | None:
    """001-style efficiency of every method against ``reference`` on ``metric``, seed by seed.

    For each seed run by both: target = the reference's final value on that seed; the
    fraction of the reference's consumed prompts (and of its judge calls) the method needs to
    reach it (linear interpolation between the evaluated points); and the mean gap between the
    method's and the reference's curves along consumed prompts (area between the curves over
    their shared range, divided by its length: > 0 means above the reference on average).
    Per method: mean and 95% CI over seeds of each, and how many seeds reached the target
    (the prompt and call fractions average only those). None without the reference method.
    """
    by = _by_method(rows)
    if reference not in by:
        return None
    out = {}
    for method, seeds in by.items():
        f_prompts, f_calls, gaps, reached, paired = [], [], [], 0, 0
        for seed, curve in seeds.items():
            ref = by[reference].get(seed)
            if ref is None:
                continue
            pts = [r for r in ref if math.isfinite(r.get(metric, float("nan")))]
            if not pts:
                continue
            paired += 1
            target, ref_prompts, ref_calls = pts[-1][metric], pts[-1]["prompts_consumed"], pts[-1]["judge_calls"]
            xs_p = [r["prompts_consumed"] for r in curve]
            xs_c = [r["judge_calls"] for r in curve]
            ys = [r.get(metric, float("nan")) for r in curve]
            need_p, need_c = M.annotations_to_reach(xs_p, ys, target), M.annotations_to_reach(xs_c, ys, target)
            if need_p is not None and ref_prompts > 0:
                reached += 1
                f_prompts.append(need_p / ref_prompts)
                if need_c is not None and ref_calls > 0:
                    f_calls.append(need_c / ref_calls)
            gaps.append(M.mean_curve_gap(xs_p, ys, [r["prompts_consumed"] for r in ref], [r.get(metric, float("nan")) for r in ref]))
        out[method] = {
            "prompts": M.mean_ci(f_prompts), "calls": M.mean_ci(f_calls), "gap": M.mean_ci(gaps),
            "reached": reached, "seeds": paired,
        }
    return out


def dataset_stats(run_dirs: dict[tuple[str, int], Path]) -> dict[str, dict[str, M.ScoreStats]]:
    """Per method, Table-21 statistics of the acquired pairs pooled over seeds: ``judge``
    (the judge scores the pairs were built from) and ``oracle`` (the hidden reward)."""
    from activepref.core.store import RunStore

    pooled: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for (method, _seed), run_dir in run_dirs.items():
        store = RunStore.open_readonly(run_dir)
        try:
            prefs = store.preference_rows()
            oracle = store.oracle()
        finally:
            store.close()
        chosen = np.asarray([p.chosen_idx for p in prefs], dtype=np.int64)
        rejected = np.asarray([p.rejected_idx for p in prefs], dtype=np.int64)
        pooled[method]["judge_c"].append(np.asarray([np.nan if p.score_chosen is None else p.score_chosen for p in prefs], dtype=np.float64))
        pooled[method]["judge_r"].append(np.asarray([np.nan if p.score_rejected is None else p.score_rejected for p in prefs], dtype=np.float64))
        pooled[method]["oracle_c"].append(oracle[chosen] if len(chosen) else np.empty(0))
        pooled[method]["oracle_r"].append(oracle[rejected] if len(rejected) else np.empty(0))
    out = {}
    for method, parts in pooled.items():
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        out[method] = {
            "judge": M.score_stats(cat["judge_c"], cat["judge_r"]),
            "oracle": M.score_stats(cat["oracle_c"], cat["oracle_r"]),
        }
    return out


def pair_coverage(run_dirs: dict[tuple[str, int], Path]) -> dict[str, list[M.PairCoverage]]:
    """Per method, each seed's model-pair coverage of its exported (in-prompt) pairs."""
    from activepref.core.export import exported_preferences
    from activepref.core.store import RunStore

    out: dict[str, list[M.PairCoverage]] = defaultdict(list)
    for (method, _seed), run_dir in sorted(run_dirs.items()):
        store = RunStore.open_readonly(run_dir)
        try:
            prefs = store.preference_rows()
            responses, response_prompt = store.responses()
        finally:
            store.close()
        keep = exported_preferences(prefs, response_prompt)
        out[method].append(M.model_pair_coverage([responses[p.chosen_idx].model for p in keep], [responses[p.rejected_idx].model for p in keep]))
    return out


def curve_stats(curves: dict[int, list[dict[str, Any]]], key: str, x_key: str = "annotations") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per iteration over seeds: (mean ``x_key`` [T], mean of ``key`` [T], CI half-width [T])."""
    t = max(len(c) for c in curves.values())
    xs, ys, hs = [], [], []
    for i in range(t):
        pts = [c[i] for c in curves.values() if len(c) > i]
        xs.append(float(np.mean([p[x_key] for p in pts])))
        m, h = M.mean_ci([p[key] for p in pts])
        ys.append(m)
        hs.append(0.0 if math.isnan(h) else h)
    return np.asarray(xs), np.asarray(ys), np.asarray(hs)


# Stage -> column of the time split: the loop's timings.json and the bench's bench_timings.json.
TIME_COLUMNS = (
    ("ENN training", ("enn_fit",)),
    ("ENN prediction", ("enn_predict",)),
    ("acquisition", ("select",)),  # less the ENN prediction it contains
    ("judge", ("annotate",)),
    ("per-iteration eval", ("evaluate",)),
    ("dataset eval", ("dataset_eval",)),
    ("IO and setup", ("load", "checkpoint", "store")),
)


def time_split(run_dir: Path) -> dict[str, float] | None:
    """Seconds per column of TIME_COLUMNS plus ``other`` and ``total`` for one bench run, or
    None when the run has no timings (older benches). ``total`` = the bench's run wall +
    dataset evaluation; ``other`` = what no stage measured (pool import into the store, ...)."""
    from activepref.bench.files import BENCH_TIMINGS_FILE
    from activepref.core.timings import read_timings

    loop, bench = read_timings(run_dir), read_timings(run_dir, BENCH_TIMINGS_FILE)
    if not bench:
        return None
    both = {**loop, "dataset_eval": bench.get("dataset_eval", 0.0)}
    both["select"] = max(both.get("select", 0.0) - both.get("enn_predict", 0.0), 0.0)  # "select" times the prediction too
    out = {name: sum(both.get(k, 0.0) for k in keys) for name, keys in TIME_COLUMNS}
    out["total"] = bench.get("run", 0.0) + bench.get("dataset_eval", 0.0)
    out["other"] = max(out["total"] - sum(out[name] for name, _ in TIME_COLUMNS), 0.0)
    return out


def time_split_lines(run_dirs: dict[tuple[str, int], Path]) -> list[str]:
    """The report's wall-time table: per method, mean seconds per run in each stage."""
    per_method: dict[str, list[dict[str, float]]] = {}
    for (method, _), run_dir in run_dirs.items():
        split = time_split(run_dir)
        if split is not None:
            per_method.setdefault(method, []).append(split)
    if not per_method:
        return []
    names = [n for n, _ in TIME_COLUMNS] + ["other", "total"]
    lines = ["## Where the time goes (mean seconds per run; these runs only)", "",
             "| method | runs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    grand = dict.fromkeys(names, 0.0)
    for method, splits in per_method.items():
        cells = [f"{np.mean([sp[n] for sp in splits]):.1f}" for n in names]
        for n in names:
            grand[n] += sum(sp[n] for sp in splits)
        lines.append(f"| {method} | {len(splits)} | " + " | ".join(cells) + " |")
    total = grand["total"] or 1.0
    lines += ["", "Share of all runs' time: " + ", ".join(f"{n} {100 * grand[n] / total:.0f}%" for n in names[:-1])
              + f"; sum of run times {grand['total'] / 60:.1f} min (workers run side by side, so the bench's wall time is less).", ""]
    return lines


def wall_lines(out: Path) -> list[str]:
    """The wall time of each `bench` call on this directory that ran or resumed runs."""
    from activepref.bench.files import read_calls

    calls = [c for c in read_calls(out) if c.get("finished") or c.get("failed")]
    if not calls:
        return []
    lines = ["Wall time of the bench calls that ran or resumed runs (a finished run a later call finds is skipped):", ""]
    for c in calls:
        lines.append(
            f"- {c.get('started', '?')}: {float(c.get('wall_s', 0)) / 60:.1f} min wall, {c.get('workers', '?')} workers on "
            f"{c.get('cpus', '?')} CPUs; {c.get('finished', 0)} runs ran or resumed, {c.get('skipped', 0)} skipped, {c.get('failed', 0)} failed"
        )
    return [*lines, ""]


def _setup_lines(run_dirs: dict[tuple[str, int], Path], budget: int | None) -> list[str]:
    from activepref.core.runs import stored_config
    from activepref.core.store import RunStore

    first = next(iter(run_dirs.values()))
    store = RunStore.open_readonly(first)
    try:
        cfg = stored_config(store)
        n_eval = len(store.eval_prompts())
        n_prompts = store.count("prompts")
        n_resp = store.count("responses")
    finally:
        store.close()
    methods = list(dict.fromkeys(m for m, _ in run_dirs))
    seeds = sorted({s for _, s in run_dirs})
    return [
        f"- pool: `{cfg.pool}` ({n_prompts} prompts, {n_resp} candidate responses; {n_eval} prompts held out per run, never annotated; "
        f"the ENN's held-out metrics each iteration on {n_eval if cfg.eval_monitor_prompts is None else min(n_eval, cfg.eval_monitor_prompts)} of them, "
        "the exported dataset's on all)",
        f"- methods: {', '.join(methods)}; seeds: {', '.join(map(str, seeds))} (the seed also changes the held-out split)",
        f"- budget: {budget if budget is not None else '?'} preference pairs per run = {cfg.iterations} iterations of "
        f"{cfg.batch_size} prompts (per-prompt methods: one pair per prompt; batch designs: {cfg.batch_size} comparisons per iteration)",
        f"- judge: {cfg.judge.kind}; reward model: ENN with {cfg.enn.heads} heads x {cfg.enn.hidden} hidden, {cfg.enn.steps} steps per iteration",
    ]


GLOSSARY = """## What the numbers mean

- **annotations**: responses sent to the judge so far (judge calls). Methods that score
  every candidate of a prompt spend more annotations per preference pair than those that
  score two.
- **accuracy**: held-out pairwise accuracy — over all pairs of candidates of the held-out
  prompts that the hidden reference reward (oracle; the pool's judge score if it has no
  oracle) orders strictly, the share the learned reward model orders the same way. 0.5 is chance.
- **spearman loss**: per held-out prompt, 1 − Spearman's ρ between the learned reward and
  the reference over its candidates, averaged over prompts (0 = same ranking, 1 = unrelated, 2 = reversed).
- **best-of-N**: per held-out prompt, the reference reward of the candidate the learned
  reward ranks first, averaged over prompts (higher is better; `oracle best` in results.csv
  is the ceiling, `best_of_n_normalized` rescales it so 0 = a random pick and 1 = always the best).
- **mean ± CI**: mean over seeds ± half-width of the 95% Student-t interval over seeds
  (no interval with a single seed).
"""


def judge_quality_lines(agreements: list[Any]) -> list[str]:
    """The pool judge's agreement with the verifiers (``ifeval.judge_quality``) as a table."""
    lines = ["## Judge quality: the pool's judge against the verifiers", "",
             "Pairs of one prompt: overall, the share of pairs with different verifier scores that the judge orders the "
             "same way; per instruction kind, the share of pairs where exactly one response follows it and the judge "
             "scores that one higher (ties count half). Each method's `label_accuracy` (dataset table above) is the "
             "same agreement on the pairs it acquired.", "",
             "| instruction kind | judge agrees with the verifiers | pairs |", "|---|---|---|"]
    lines += [f"| {a.kind} | {a.share:.3f} | {a.pairs} |" for a in agreements]
    return [*lines, ""]


def cost_lines(by: dict[str, dict[int, list[dict[str, Any]]]]) -> list[str]:
    """The bill per method at the run's price table (mean over seeds of the last iteration):
    judge calls, generated tokens and USD, in total and per preference pair."""
    finals = {m: [c[-1] for c in seeds.values()] for m, seeds in by.items()}
    if not any("usd" in f for fs in finals.values() for f in fs):
        return []
    lines = [
        "## Cost (at the config's price table; cache hits counted as paid)", "",
        "| method | judge calls | generated tokens | USD | judge calls per pair | generated tokens per pair | USD per pair |",
        "|---|---|---|---|---|---|---|",
    ]
    def mean(fs: list[dict[str, Any]], key: str, per_pair: bool = False) -> float:
        vals = [float(f.get(key, float("nan"))) / (f["pairs"] if per_pair and f.get("pairs") else 1.0) for f in fs]
        return float(np.nanmean(vals)) if vals else float("nan")

    for method, fs in finals.items():
        lines.append(
            f"| {method} | {mean(fs, 'judge_calls'):.0f} | {mean(fs, 'generated_tokens'):.0f} | {mean(fs, 'usd'):.4f} | "
            f"{mean(fs, 'judge_calls', True):.2f} | {mean(fs, 'generated_tokens', True):.1f} | {mean(fs, 'usd', True):.5f} |"
        )
    return [*lines, ""]


def write_report(
    out: Path,
    run_dirs: dict[tuple[str, int], Path],
    budget: int | None = None,
    results_csv: Path | None = None,
    reference: str = REFERENCE_METHOD,
    judge_quality: list[Any] | None = None,
) -> Path:
    """Write summary.md, curves.png and table21.png into ``out`` from ``results.csv``
    (default ``out/results.csv``) and the run stores ``run_dirs[(method, seed)]``; returns out.
    The plots need matplotlib (the `plots` extra); without it only summary.md is written."""
    from activepref.bench.files import read_results

    out = Path(out)
    rows = read_results(results_csv or out / "results.csv")
    by = _by_method(rows)
    eff = efficiency(rows, reference)
    stats = dataset_stats(run_dirs)

    lines = ["# Preference-learning bench", "", *_setup_lines(run_dirs, budget), ""]
    lines += [
        "## Final results (last iteration)", "",
        "| method | seeds | pairs | annotations | held-out accuracy | spearman loss | best-of-N | "
        f"annotations to reach {reference}'s final accuracy | vs {reference}'s budget |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, seeds in by.items():
        finals = [c[-1] for c in seeds.values()]
        cells = [method, str(len(finals)), f"{np.nanmean([f['pairs'] for f in finals]):.0f}", f"{np.nanmean([f['annotations'] for f in finals]):.0f}"]
        for key in ("accuracy", "spearman_loss", "best_of_n"):
            cells.append(plus_minus(*M.mean_ci([f[key] for f in finals])))
        if eff is None:
            cells += ["n/a", "n/a"]
        else:
            e = eff[method]
            reach = "never" if e["mean"] is None else f"{e['mean']:.0f}"
            cells.append(f"{reach} ({e['reached']}/{e['seeds']} seeds)")
            cells.append("n/a" if e["ratio"] is None else f"{e['ratio']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += cost_lines(by)
    if eff is None:
        lines.append(f"(The efficiency columns need the `{reference}` method in the bench.)")
    else:
        any_e = next(iter(eff.values()))
        lines.append(
            f"Efficiency: {reference} reaches a held-out accuracy of {any_e['target']:.3f} with its full budget "
            f"({any_e['reference_budget']:.0f} annotations, mean over seeds). For each method, the annotations it needs "
            "to reach the same accuracy (linear interpolation between iterations, mean over the seeds that reach it) "
            f"and that number as a multiple of {reference}'s budget: below 1x means fewer judge calls for the same accuracy."
        )
        if any_e["target"] <= 0.5:
            lines += ["", f"**Caution:** {reference} ends at or below chance (0.5): the reward model did not learn "
                      "from this pool's labels within the budget, so reaching its final accuracy says nothing; "
                      "compare the accuracies instead."]
    lines += ["", "## Acquired preference pairs (as seed 001, Table 21)", "",
              "Scores of the chosen and rejected response of every acquired pair, pooled over seeds: "
              "the judge scores the pairs were built from, and the hidden oracle reward of the same responses. "
              "std is over pairs; diff = chosen − rejected per pair.", "",
              "| method | pairs | chosen (judge) | rejected (judge) | diff (judge) | mean score (judge) | diff (oracle) |",
              "|---|---|---|---|---|---|---|"]
    for method in by:
        j, o = stats[method]["judge"], stats[method]["oracle"]
        lines.append(
            f"| {method} | {j.n} | {plus_minus(j.chosen_mean, j.chosen_std)} | {plus_minus(j.rejected_mean, j.rejected_std)} | "
            f"{plus_minus(j.diff_mean, j.diff_std)} | {plus_minus(j.overall_mean)} | {plus_minus(o.diff_mean, o.diff_std)} |"
        )
    coverage = pair_coverage(run_dirs)
    if any(c.pairs for cs in coverage.values() for c in cs):
        lines += ["", "### Which models the pairs compare", "",
                  "The exported pairs grouped by the unordered pair of models that wrote the two responses, "
                  "per seed, mean over seeds: how many distinct model pairs occur, the entropy of their "
                  "distribution (uniform over all pairs of M models: log2(M(M-1)/2) bits) and the share "
                  "taken by the 10 most frequent. A method that keeps comparing the same few models "
                  "gives a reward model little to learn about the rest.", "",
                  "| method | distinct model pairs | entropy (bits) | share of the top-10 model pairs |", "|---|---|---|---|"]
        for method in by:
            cs = [c for c in coverage.get(method, []) if c.pairs]
            if not cs:
                lines.append(f"| {method} | 0 | n/a | n/a |")
                continue
            lines.append(f"| {method} | {np.mean([c.distinct for c in cs]):.0f} | {np.mean([c.entropy_bits for c in cs]):.2f} | "
                         f"{np.mean([c.top10_share for c in cs]):.2f} |")
    if any(math.isfinite(r.get("rm_accuracy", float("nan"))) for r in rows):
        lines += ["", "## The exported dataset: a fresh reward model trained on it (as seed 001, Table 22)", "",
                  "At the last evaluated point: a Bradley-Terry MLP trained on the dataset alone (not the ENN that "
                  "chose it), scored on the held-out prompts (`activepref evaluate`).", "",
                  "| method | rm_accuracy | rm_accuracy_hard | label_accuracy | prompts consumed |", "|---|---|---|---|---|"]
        for method, seeds in by.items():
            last = [next((r for r in reversed(c) if math.isfinite(r.get("rm_accuracy", float("nan")))), None) for c in seeds.values()]
            last = [r for r in last if r is not None]
            if not last:
                continue
            cells = [plus_minus(*M.mean_ci([r[k] for r in last])) for k in DATASET_METRICS]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {np.mean([r['prompts_consumed'] for r in last]):.0f} |")
        for metric in EFFICIENCY_METRICS:
            pe = paired_efficiency(rows, metric, reference)
            if pe is None:
                break
            lines += ["", f"### Efficiency on `{metric}` (paired seeds, as seed 001 reports it)", "",
                      f"Share of {reference}'s consumed prompts and of its judge calls a method needs to reach {reference}'s "
                      f"final `{metric}` on the same seed (mean ± 95% CI over the seeds that reach it), and the mean gap "
                      f"between its curve and {reference}'s along consumed prompts (area between the curves / range; "
                      "> 0: above on average; every seed counts).", "",
                      f"| method | seeds reaching {reference}'s final | share of {reference}'s prompts | share of its judge calls | mean curve gap |",
                      "|---|---|---|---|---|"]
            for method, e in pe.items():
                lines.append(f"| {method} | {e['reached']}/{e['seeds']} | {plus_minus(*e['prompts'], digits=2)} | "
                             f"{plus_minus(*e['calls'], digits=2)} | {plus_minus(*e['gap'])} |")
    costs = []
    for method, seeds in by.items():
        finals = [c[-1] for c in seeds.values()]
        costs.append(f"| {method} | {np.nanmean([f['judge_calls'] for f in finals]):.0f} | {np.nanmean([f['judge_tokens'] for f in finals]):.0f} |")
    lines += ["", "## Judge cost per run (mean over seeds)", "", "| method | judge calls | judge tokens |", "|---|---|---|", *costs,
              "", "(A replay judge reveals stored scores: one call per annotation, no tokens.)", ""]
    lines += time_split_lines(run_dirs)
    lines += wall_lines(out)
    from activepref.plots import plots_unavailable

    if judge_quality:
        lines += judge_quality_lines(judge_quality)
    no_plots = plots_unavailable()  # plots are optional (the `plots` extra)
    plot_lines = [
        "- `curves.png`: accuracy, Spearman loss and best-of-N against annotations (mean over seeds, band = 95% CI).",
        "- `table21.png`: the chosen/rejected statistics above as a chart.",
    ] if no_plots is None else [f"- no plots: {no_plots}"]
    lines += ["## Files", "",
              "- `results.csv`: one row per (method, seed, iteration) — method, seed, iteration, annotations, accuracy, "
              "spearman_loss, best_of_n, then extra columns.",
              *plot_lines,
              "- `runs/<method>-seed<k>/`: each run's directory (`activepref status` / `activepref export` work on it).", "",
              GLOSSARY]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")

    if no_plots is not None:
        return out
    plot_curves(by, out / "curves.png")
    plot_table21(stats, out / "table21.png")
    if any(math.isfinite(r.get("rm_accuracy", float("nan"))) for r in rows):
        plot_dataset_curves(by, out / "dataset_curves.png")
    return out


def _draw_curves(plt: Any, ax: Any, by: dict[str, dict[int, list[dict[str, Any]]]], key: str, x_key: str, drop_nan: bool = False) -> None:
    """One line per method of ``key`` against ``x_key`` (mean over seeds; with ``drop_nan``,
    iterations where the metric is NaN are left out instead of breaking the line), with 95%
    CI bands when few methods share the panel."""
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: every registered method gets its own
    styles = ("-", "--", ":", "-.")
    for n, (method, curves) in enumerate(by.items()):
        x, y, h = curve_stats(curves, key, x_key)
        if drop_nan:
            keep = np.isfinite(y)
            x, y, h = x[keep], y[keep], h[keep]
        if not len(x):
            continue
        color = colors[n % len(colors)]
        ax.plot(x, y, marker="o", ms=3, label=method, color=color, ls=styles[(n // len(colors)) % len(styles)])
        # Bands only when few methods share the panel; with many they hide each other.
        if len(by) <= 6:
            ax.fill_between(x, y - h, y + h, color=color, alpha=0.2, lw=0)


def plot_dataset_curves(by: dict[str, dict[int, list[dict[str, Any]]]], path: Path) -> Path:
    """rm_accuracy and rm_accuracy_hard of the dataset so far against consumed prompts (the
    style of 001 Fig. 7): mean over seeds, band = 95% CI."""
    from activepref.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for ax, key in zip(axes, DATASET_METRICS):
        _draw_curves(plt, ax, by, key, "prompts_consumed", drop_nan=True)  # evaluated at six points
        ax.set(xlabel="prompts consumed", ylabel=key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path, "The exported dataset: a fresh reward model trained on it (mean over seeds)")


def plot_curves(by: dict[str, dict[int, list[dict[str, Any]]]], path: Path) -> Path:
    from activepref.plots import _pyplot, _save

    plt = _pyplot()
    panels = (("accuracy", "held-out pairwise accuracy (higher is better)"),
              ("spearman_loss", "1 - Spearman per prompt (lower is better)"),
              ("best_of_n", "oracle reward of best-of-N pick (higher is better)"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for ax, (key, label) in zip(axes, panels):
        _draw_curves(plt, ax, by, key, "annotations")
        ax.set(xlabel="annotations (judge calls)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    title = "Sample efficiency: mean over seeds" + (", band = 95% CI" if len(by) <= 6 else " (CIs in summary.md)")
    return _save(fig, path, title)


def plot_table21(stats: dict[str, dict[str, M.ScoreStats]], path: Path) -> Path:
    from activepref.plots import _pyplot, _save

    plt = _pyplot()
    methods = list(stats)
    fig, (ax, ax_t) = plt.subplots(2, 1, figsize=(max(7, 1.3 * len(methods) + 3), 7), constrained_layout=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    x = np.arange(len(methods))
    js = [stats[m]["judge"] for m in methods]
    ax.bar(x - 0.2, [s.chosen_mean for s in js], 0.4, yerr=[s.chosen_std for s in js], capsize=3, label="chosen")
    ax.bar(x + 0.2, [s.rejected_mean for s in js], 0.4, yerr=[s.rejected_std for s in js], capsize=3, label="rejected")
    ax.set_xticks(x, methods)
    ax.set(ylabel="judge score (mean ± std over pairs)", title="Scores of acquired pairs (001 Table 21)")
    ax.legend(fontsize=8)
    ax_t.axis("off")
    cells = [[m, str(s.n), f"{s.chosen_mean:.3f} ± {s.chosen_std:.3f}", f"{s.rejected_mean:.3f} ± {s.rejected_std:.3f}",
              f"{s.diff_mean:.3f} ± {s.diff_std:.3f}", f"{s.overall_mean:.3f}"] for m, s in zip(methods, js)]
    table = ax_t.table(cellText=cells, colLabels=["method", "pairs", "chosen", "rejected", "diff", "mean score"], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.3)
    return _save(fig, path, "")
